"""Benchmark of the student runtime: EmbeddedBackend against naive ``model.generate``.

    /work/venv/bin/python bench/student.py            # ~10 min on a busy 2-core CPU
    /work/venv/bin/python bench/student.py --quick    # fewer repetitions

A ~300-token skill prefix (the bundled default skill plus demonstrations built from
the dev scenes) and ~25-token inputs. For each weight dtype (float32, bfloat16), in its
own subprocess so its peak RSS is its own, and in the same run:

- naive: ``model.generate(full prompt ids, greedy)``; a streamer timestamps each token, so
  time to first token (TTFT) and decode tokens/s come from one call;
- ours: ``EmbeddedBackend.generate`` with the prefix KV cache on, and with it off;
  and, to show where the decode speed comes from, ours without prompt-lookup drafting
  and ours with neither the int8 head nor drafting.

Every run generates the same 32 tokens (no stop sequences; greedy is identical), runs
are interleaved and the median over inputs x repetitions (2 for float32, 1 for bfloat16,
whose prefill is very slow here) is reported. The float32
process also times LoRA adapter load and switch (a randomly initialised PEFT LoRA on
q/k/v/o saved as safetensors) and checks that the base weights are not reloaded.

Prints a table, ends with ``ttft speed-up: N.Nx`` and ``decode speed-up: N.Nx`` (float32,
the default dtype, cache on, against naive float32) and writes bench/results/student.json
(and student.<dtype>.json per dtype, student.png). ``--dtypes bfloat16`` re-measures one
dtype and reports it with the others' last results (each carries ``measured_at``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
NEW_TOKENS = 32
INPUTS = [
    "A woman in a red coat is pushing a stroller across a busy street while a bus approaches.",
    "Two workers in yellow helmets are standing next to a forklift that carries wooden pallets.",
    "A small dog is sleeping on a grey sofa next to an open window with white curtains.",
]


def bench_skill():
    """The default skill plus dev-scene demonstrations until the prefix is ~300 tokens."""
    from shared.skill import Demo, Skill, default_skill

    base = default_skill()
    scenes = [json.loads(line) for line in (ROOT / "shared/data/dev_scenes.jsonl").open()]
    demos = list(base.demos)
    for scene in scenes[:4]:
        verdict = "yes" if scene["safety"] else "no"
        answer = f"Answer: {scene['input']}\nSAFETY: {verdict}\nCONFIDENCE: 0.85"
        demos.append(Demo(input=scene["input"], answer=answer))
    return Skill(instructions=base.instructions, demos=tuple(demos), name="bench")


def naive_run(model, tokenizer, prompt: str) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self.calls = 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first call carries the prompt
                self.times.append(time.perf_counter())

        def end(self):
            pass

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    clock = Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            streamer=clock,
        )
    ttft = clock.times[0] - t0
    decode = (len(clock.times) - 1) / (clock.times[-1] - clock.times[0])
    return {"ttft_s": ttft, "decode_tok_s": decode, "prompt_tokens": ids.shape[1]}


def ours_run(backend, skill, text: str) -> dict:
    from shared.backend import GenerateRequest

    req = GenerateRequest(
        system=skill.instructions,
        demos=skill.demos,
        input=text,
        stop=(),
        max_new_tokens=NEW_TOKENS,
    )
    gen = backend.generate(req)
    return {
        "ttft_s": gen.ttft_s,
        "decode_tok_s": gen.decode_tokens_per_s,
        "prompt_tokens": gen.prompt_tokens,
        "tokens": gen.tokens,
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def adapter_switch(backend, model) -> dict:
    import copy

    from peft import LoraConfig, get_peft_model

    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    lora = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(folder / "a")
    lora.save_pretrained(folder / "b")
    del lora
    pointer = model.get_input_embeddings().weight.data_ptr()
    t = time.perf_counter()
    backend.load_adapter("a", folder / "a")
    load_s = time.perf_counter() - t
    backend.load_adapter("b", folder / "b")
    switches = []
    for name in ["a", "b", None, "a", None, "b"]:
        t = time.perf_counter()
        backend.set_adapter(name)
        switches.append(time.perf_counter() - t)
    backend.set_adapter(None)
    return {
        "load_s": load_s,
        "switch_max_s": max(switches),
        "switch_median_s": statistics.median(switches),
        "base_weights_reloaded": model.get_input_embeddings().weight.data_ptr() != pointer,
        "safetensors": (folder / "a" / "adapter_model.safetensors").is_file(),
    }


def measure(dtype: str, reps: int) -> dict:
    """Everything for one dtype, in this process."""
    import torch

    from shared.config import EmbeddedModelConfig
    from shared.embedded import EmbeddedBackend
    from shared.models import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model(dtype=dtype, device="cpu")
    loaded_rss = rss_mb()
    skill = bench_skill()
    prefix_tokens = len(tokenizer(skill.prompt_prefix()).input_ids)
    input_tokens = [len(tokenizer(t).input_ids) - 1 for t in INPUTS]
    variants = {
        "ours": EmbeddedModelConfig(dtype=dtype),
        "ours, no prefix cache": EmbeddedModelConfig(dtype=dtype, prefix_cache=False),
        "ours, no drafting": EmbeddedModelConfig(dtype=dtype, speculative=False),
        "ours, exact head, no drafting": EmbeddedModelConfig(
            dtype=dtype, speculative=False, int8_head=False
        ),
    }
    backends = {
        k: EmbeddedBackend(c, model=model, tokenizer=tokenizer) for k, c in variants.items()
    }
    for b in backends.values():
        b.wait_ready()
    t = time.perf_counter()
    ours_run(backends["ours"], skill, INPUTS[0])  # builds the prefix cache once
    prefix_build_s = time.perf_counter() - t
    rows: dict[str, list[dict]] = {"naive generate": [], **{k: [] for k in backends}}
    for rep in range(reps):
        for text in INPUTS:
            print(f"  {dtype} rep {rep + 1}/{reps}: {text[:40]}...", file=sys.stderr, flush=True)
            rows["naive generate"].append(naive_run(model, tokenizer, skill.prompt(text)))
            for name, b in backends.items():
                rows[name].append(ours_run(b, skill, text))
    summary = {
        name: {
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "decode_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
            "prompt_tokens": statistics.median(r["prompt_tokens"] for r in runs),
            "runs": runs,
        }
        for name, runs in rows.items()
    }
    result = {
        "dtype": dtype,
        "prefix_tokens": prefix_tokens,
        "input_tokens": input_tokens,
        "new_tokens": NEW_TOKENS,
        "prefix_build_s": prefix_build_s,
        "rss_after_load_mb": loaded_rss,
        "variants": summary,
    }
    if dtype == "float32":
        result["adapters"] = adapter_switch(backends["ours"], model)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition per input")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one dtype
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: table, student.json and student.png from student.<dtype>.json",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="float32, 1 thread: CPU seconds (time.thread_time) instead of wall time, "
        "for a CPU shared with other work",
    )
    args = parser.parse_args()
    if args.cpu_time:
        cpu_time_check()
        return 0
    if args.child:
        # bfloat16 prefill is very slow on a CPU without AVX512-BF16: one repetition there.
        reps = 1 if args.quick or args.child == "bfloat16" else 2
        print(json.dumps(measure(args.child, reps)))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    for dtype in [] if args.report_only else args.dtypes.split(","):
        cmd = [sys.executable, __file__, "--child", dtype] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["load_average"] = os.getloadavg()
        (RESULTS / f"student.{dtype}.json").write_text(json.dumps(result, indent=1))
    # The table holds every dtype measured so far (--dtypes re-measures only those named).
    results = [
        json.loads((RESULTS / f"student.{d}.json").read_text())
        for d in ("float32", "bfloat16")
        if (RESULTS / f"student.{d}.json").is_file()
    ]
    report(results)
    return 0


def report(results: list[dict]) -> None:
    first = results[0]
    print(
        f"\nprefix {first['prefix_tokens']} tokens, inputs {first['input_tokens']} tokens, "
        f"{NEW_TOKENS} new tokens, medians; {os.cpu_count()} CPUs, torch threads 2\n"
    )
    header = f"{'dtype':9} {'variant':30} {'prompt tok':>10} {'TTFT s':>8} {'decode tok/s':>13}"
    header += f" {'TTFT x':>7} {'decode x':>9}"
    print(header)
    print("-" * len(header))
    for res in results:
        naive = res["variants"]["naive generate"]
        for name, v in res["variants"].items():
            v["ttft_speedup"] = naive["ttft_s"] / v["ttft_s"]
            v["decode_speedup"] = v["decode_tok_s"] / naive["decode_tok_s"]
            print(
                f"{res['dtype']:9} {name:30} {v['prompt_tokens']:>10.0f} {v['ttft_s']:>8.3f} "
                f"{v['decode_tok_s']:>13.1f} {v['ttft_speedup']:>6.1f}x {v['decode_speedup']:>8.1f}x"
            )
        print(
            f"{res['dtype']:9} peak RSS {res['peak_rss_mb']:.0f} MB (after load "
            f"{res['rss_after_load_mb']:.0f} MB); prefix cache built in {res['prefix_build_s']:.2f} s"
        )
    by_dtype = {r["dtype"]: r for r in results}
    if "float32" in by_dtype and "adapters" in by_dtype["float32"]:
        a = by_dtype["float32"]["adapters"]
        print(
            f"adapters: load {a['load_s']:.2f} s, switch max {a['switch_max_s'] * 1000:.1f} ms "
            f"(median {a['switch_median_s'] * 1000:.1f} ms), base weights reloaded: "
            f"{a['base_weights_reloaded']}"
        )
    if "float32" in by_dtype and "bfloat16" in by_dtype:
        ours_bf16 = by_dtype["bfloat16"]["variants"]["ours"]
        naive_fp32 = by_dtype["float32"]["variants"]["naive generate"]
        print(
            f"ours bfloat16 against naive float32: TTFT "
            f"{naive_fp32['ttft_s'] / ours_bf16['ttft_s']:.1f}x, decode "
            f"{ours_bf16['decode_tok_s'] / naive_fp32['decode_tok_s']:.1f}x"
        )
    head = by_dtype.get("float32", results[0])["variants"]["ours"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python bench/student.py",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "headline": {
            "dtype": by_dtype.get("float32", results[0])["dtype"],
            "ttft_speedup": head["ttft_speedup"],
            "decode_speedup": head["decode_speedup"],
        },
        "results": results,
    }
    (RESULTS / "student.json").write_text(json.dumps(doc, indent=1))
    plot(doc)
    loads = [r["load_average"] for r in results if "load_average" in r]
    if loads:
        print(f"load average at the end of the runs: {loads} (the 2 cores are shared)")
    print(f"ttft speed-up: {head['ttft_speedup']:.1f}x")
    print(f"decode speed-up: {head['decode_speedup']:.1f}x")


def cpu_time_check() -> None:
    """TTFT and decode measured in this thread's CPU seconds (1 torch thread, float32).

    On a CPU shared with other busy processes, wall time mostly measures waiting; the
    CPU time one thread spends is what the work costs. Same prompts and 32 tokens.
    """
    import torch

    from shared.backend import GenerateRequest
    from shared.config import EmbeddedModelConfig
    from shared.embedded import EmbeddedBackend
    from shared.models import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(dtype="float32", device="cpu")
    skill = bench_skill()
    ours = EmbeddedBackend(EmbeddedModelConfig(), model=model, tokenizer=tokenizer)
    ours.wait_ready()
    rows = []
    for text in INPUTS:
        req = GenerateRequest(
            system=skill.instructions, demos=skill.demos, input=text, stop=(), max_new_tokens=1
        )
        ids = tokenizer(skill.prompt(text), return_tensors="pt").input_ids
        ours.generate(req)  # the prefix cache exists before timing (built once per skill)
        row = {}
        with torch.inference_mode():
            for new in (1, NEW_TOKENS):
                t = time.thread_time()
                model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
                row[f"naive_{new}"] = time.thread_time() - t
                t = time.thread_time()
                gen = ours.generate(GenerateRequest(**{**req.__dict__, "max_new_tokens": new}))
                row[f"ours_{new}"] = time.thread_time() - t
                row[f"ours_tokens_{new}"] = gen.tokens
        rows.append(row)
        print(f"  {text[:40]}: {row}", file=sys.stderr, flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    naive_decode = (med[f"naive_{NEW_TOKENS}"] - med["naive_1"]) / (NEW_TOKENS - 1)
    ours_decode = (med[f"ours_{NEW_TOKENS}"] - med["ours_1"]) / (
        med[f"ours_tokens_{NEW_TOKENS}"] - 1
    )
    doc = {
        "command": "python bench/student.py --cpu-time",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch_threads": 1,
        "ttft_cpu_s": {"naive": med["naive_1"], "ours": med["ours_1"]},
        "decode_cpu_ms_per_token": {"naive": naive_decode * 1000, "ours": ours_decode * 1000},
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "student.cputime.json").write_text(json.dumps(doc, indent=1))
    print(f"float32, 1 thread, CPU seconds (median of {len(rows)} inputs):")
    print(f"  TTFT   naive {med['naive_1']:.3f} s   ours {med['ours_1']:.3f} s")
    print(
        f"  decode naive {naive_decode * 1000:.0f} ms/token   ours {ours_decode * 1000:.0f} ms/token"
    )
    print(f"ttft speed-up (cpu time): {med['naive_1'] / med['ours_1']:.1f}x")
    print(f"decode speed-up (cpu time): {naive_decode / ours_decode:.1f}x")


def plot(doc: dict) -> None:
    """bench/results/student.png: TTFT and decode speed per variant and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in doc["results"]:
        names = list(res["variants"])
        ys = range(len(names))
        offset = 0.2 if res["dtype"] == "bfloat16" else -0.2
        for ax, key in zip(axes, ("ttft_s", "decode_tok_s"), strict=True):
            values = [res["variants"][n][key] for n in names]
            ax.barh([y + offset for y in ys], values, height=0.4, label=res["dtype"])
            ax.set_yticks(list(ys), names)
    axes[0].set_xlabel("time to first token, s (lower is better)")
    axes[1].set_xlabel("decode tokens/s (higher is better)")
    axes[0].invert_yaxis()
    axes[1].invert_yaxis()
    axes[1].legend()
    head = doc["headline"]
    fig.suptitle(
        f"Gemma 3 270M on {doc['cpus']} CPU cores: TTFT {head['ttft_speedup']:.1f}x, "
        f"decode {head['decode_speedup']:.1f}x against naive generate ({head['dtype']})"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "student.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
