"""llama.cpp against the embedded student: the exported adapter's output, and the speed.

    .venv/bin/pip install llama-cpp-python==0.3.36   # builds llama.cpp with cmake (minutes)
    .venv/bin/python bench/llamacpp.py               # ~5 min on a 2-core CPU
    .venv/bin/python bench/llamacpp.py --release DIR # a trained release's LoRA instead

1. A release with a LoRA adapter goes into a teacher home, and the real
   ``gemma-teacher export`` writes its ``adapter.gguf``. Without ``--release`` the LoRA
   is a seeded random one on every module kind the export maps (q, k, v, o, gate, up,
   down of all 18 layers), strong enough to change the greedy output.
2. Four worker processes, one after the other (each its own peak RSS): llama.cpp
   (``llama_cpp.Llama`` on the bundled Q4_K_M GGUF, ``lora_path`` = the exported file)
   and this project's ``EmbeddedBackend`` (the same GGUF converted, fp32, the release's
   PEFT files), each without and with the adapter. Both get 2 threads and the same
   prompt: the release skill's prefix + a short scene, tokenised the same way (checked).
3. Agreement: greedy, no stop sequence, 20 new tokens per input; the number of leading
   llama.cpp tokens whose text the embedded backend also produced.
4. Speed, medians over inputs x repetitions: time to first token cold (nothing cached)
   and with the prefix reused (the previous input had the same skill prefix), prompt
   tokens/s (cold), decode tokens/s over 32 new tokens, and peak RSS.

Prints two tables, writes bench/results/llamacpp.json and llamacpp.png.
"""

from __future__ import annotations

import argparse
import functools
import json
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
AGREE_TOKENS = 20
DECODE_TOKENS = 32
THREADS = 2
INPUTS = [
    "A pan of oil is smoking on the stove and nobody is in the kitchen.",
    "A cat is sleeping on a grey sofa next to an open window.",
    "A worker on a ladder is reaching over an open vat of hot soup.",
    "Two people are reading at a quiet table in the library.",
    "A forklift is reversing towards a man who is looking at his phone.",
    "Fresh bread is cooling on racks by the bakery window.",
]
MODULES = {
    "q_proj": ("self_attn", "q"),
    "k_proj": ("self_attn", "kv"),
    "v_proj": ("self_attn", "kv"),
    "o_proj": ("self_attn", "o"),
    "gate_proj": ("mlp", "ff"),
    "up_proj": ("mlp", "ff"),
    "down_proj": ("mlp", "down"),
}


# ---------------------------------------------------------------- the release
def random_lora(folder: Path, rank: int = 8, scale: float = 0.08, seed: int = 0) -> None:
    """A seeded PEFT LoRA on every module kind, for the bundled model's shapes."""
    import numpy as np
    from safetensors.numpy import save_file

    from shared.config import EmbeddedModelConfig
    from shared.models import ensure_cache

    cfg = json.loads(
        (ensure_cache(None, EmbeddedModelConfig().cache_dir) / "config.json").read_text()
    )
    cfg = cfg.get("text_config", cfg)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q, kv = (
        cfg["num_attention_heads"] * cfg["head_dim"],
        cfg["num_key_value_heads"] * cfg["head_dim"],
    )
    shapes = {"q": (hidden, q), "kv": (hidden, kv), "o": (q, hidden), "ff": (hidden, inter),
              "down": (inter, hidden)}  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (block, kind) in MODULES.items():
            n_in, n_out = shapes[kind]
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            a = rng.normal(0, 1 / np.sqrt(n_in), size=(rank, n_in))
            tensors[f"{key}.lora_A.weight"] = a.astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, scale, size=(n_out, rank)).astype(
                np.float32
            )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
        "lora_dropout": 0.0, "target_modules": sorted(MODULES), "bias": "none",
        "inference_mode": True, "base_model_name_or_path": None,
    }))  # fmt: skip


def make_home(work: Path, release_dir: Path | None, scale: float) -> Path:
    """A teacher home whose active release v1 carries the LoRA to export."""
    from shared.release import ADAPTER_FILES, build_files, load_release
    from shared.skill import default_skill
    from teacher.release.registry import ReleaseRegistry

    if release_dir is not None:
        source = load_release(release_dir)
        if source.adapter_dir is None:
            raise SystemExit(f"{release_dir} has no LoRA adapter")
        skill, lora = source.skill, source.adapter_dir
    else:
        skill, lora = default_skill(), work / "random-lora"
        random_lora(lora, scale=scale)
    adapter = {name: (lora / name).read_bytes() for name in ADAPTER_FILES}
    home = work / "teacher"
    registry = ReleaseRegistry(home)
    registry.add(build_files(1, skill, None, None, adapter, note="bench/llamacpp.py"), {})
    registry.activate(1)
    return home


# ---------------------------------------------------------------- workers
def worker(engine: str, release_dir: Path, gguf: Path | None, out: Path) -> None:
    """One engine, with or without the adapter: greedy texts, timings, peak RSS -> out."""
    from shared.release import load_release
    from shared.skill import render_input

    release = load_release(release_dir)
    skill = release.skill
    prefix = skill.prompt_prefix()
    prompts = [prefix + render_input(text) for text in INPUTS]
    if engine == "llamacpp":
        run = LlamaCpp(gguf, prompts)
    else:
        run = Embedded(release.adapter_dir if gguf is not None else None, skill)
    doc = {"engine": engine, "adapter": gguf is not None, "prompt_ids": run.ids(prompts[0])}
    doc["agree_texts"] = [run.greedy(i, AGREE_TOKENS, cold=True)[0] for i in range(len(INPUTS))]
    doc["agree_tops"] = getattr(run, "tops", [])  # embedded: top-5 log-probs at each step
    rows = []
    for rep in range(2):
        for i in range(len(INPUTS)):
            cold = run.greedy(i, DECODE_TOKENS, cold=True)
            warm = run.greedy(i, DECODE_TOKENS, cold=False)
            rows.append({"rep": rep, "input": i, "cold": cold[1], "warm": warm[1]})
    doc["timings"] = rows
    doc["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(doc))


class LlamaCpp:
    def __init__(self, lora: Path | None, prompts: list[str]):
        from llama_cpp import Llama

        from shared.models import bundled_gguf

        kwargs = {"lora_path": str(lora)} if lora is not None else {}
        self.llm = Llama(model_path=str(bundled_gguf().path), n_ctx=2048, n_threads=THREADS,
                         n_threads_batch=THREADS, verbose=False, seed=0, **kwargs)  # fmt: skip
        self.prompts = prompts

    def ids(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode(), add_bos=True, special=False)

    def greedy(self, i: int, n: int, cold: bool) -> tuple[str, dict]:
        """Input ``i``, ``n`` greedy tokens; cold, or after input i+1 (same prefix) was run.
        Timed from the text, as the backends are: tokenizing the prompt counts."""
        t_tok = time.perf_counter()
        ids = self.ids(self.prompts[i])
        t_tok = time.perf_counter() - t_tok
        self.llm.reset()
        reused = 0
        if not cold:  # the previous input (same skill prefix) is what the KV cache holds
            other = self.ids(self.prompts[(i + 1) % len(self.prompts)])
            self.llm.eval(other)
            pairs = enumerate(zip(other, ids, strict=False))
            reused = next((k for k, (a, b) in pairs if a != b), len(ids))
        t0 = time.perf_counter() - t_tok
        out, ttft = [], 0.0
        gen = self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        for tok in gen:
            if not out:
                ttft = time.perf_counter() - t0
            out.append(tok)
            if len(out) == n:
                break
        total = time.perf_counter() - t0
        text = self.llm.detokenize(out).decode("utf-8", errors="replace")
        return text, _timing(len(ids) - reused, ttft, total, len(out))


class Embedded:
    def __init__(self, adapter_dir: Path | None, skill):
        from shared.config import EmbeddedModelConfig
        from shared.embedded import EmbeddedBackend

        self.backend = EmbeddedBackend(EmbeddedModelConfig(threads=THREADS))
        self.backend.wait_ready()
        if adapter_dir is not None:
            self.backend.load_adapter("bench", adapter_dir)
            self.backend.set_adapter("bench")
        self.skill = skill
        self.tops: list[list[dict[str, float]]] = []

    def ids(self, prompt: str) -> list[int]:
        return list(self.backend.tokenizer(prompt).input_ids)

    def greedy(self, i: int, n: int, cold: bool) -> tuple[str, dict]:
        """As ``LlamaCpp.greedy``, through ``EmbeddedBackend.generate``."""
        from shared.skill import ANSWER_PRIMER

        if cold:
            self.backend._prefixes.clear()
        else:  # the same prefix was cached by the previous input
            self.backend._prefixes.clear()
            self.backend.generate(self._request(INPUTS[(i + 1) % len(INPUTS)], 0))  # prefill
        gen = self.backend.generate(self._request(INPUTS[i], n))
        text = gen.text[len(ANSWER_PRIMER) :]
        if n == AGREE_TOKENS:
            self.tops.append([lp.top for lp in gen.logprobs or ()])
        # cold: the prefix was processed too
        processed = len(self.ids(self.skill.prompt(INPUTS[i]))) if cold else gen.prompt_tokens
        return text, _timing(processed, gen.ttft_s, gen.total_s, gen.tokens)

    def _request(self, text: str, n: int):
        from shared.backend import GenerateRequest

        return GenerateRequest(system=self.skill.instructions, input=text, demos=self.skill.demos,
                               stop=(), max_new_tokens=n)  # fmt: skip


def _timing(prompt_tokens: int, ttft: float, total: float, tokens: int) -> dict:
    decode = (tokens - 1) / (total - ttft) if tokens > 1 and total > ttft else 0.0
    return {"prompt_tokens": prompt_tokens, "ttft_s": ttft, "total_s": total, "tokens": tokens,
            "decode_tok_s": decode}  # fmt: skip


# ---------------------------------------------------------------- the parent
def agreement(llama_tokens: list[str], embedded_tokens: list[str]) -> int:
    """Leading tokens the two greedy outputs share (both split by the bundled tokenizer)."""
    agree = 0
    for a, b in zip(llama_tokens, embedded_tokens, strict=False):
        if a != b:
            break
        agree += 1
    return agree


@functools.lru_cache(maxsize=1)
def _vocab():
    from llama_cpp import Llama

    from shared.models import bundled_gguf

    return Llama(model_path=str(bundled_gguf().path), vocab_only=True, verbose=False)


def pieces(text: str) -> list[str]:
    """A greedy text split back into its tokens by the bundled tokenizer (llama.cpp's)."""
    vocab = _vocab()
    ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
    return [vocab.detokenize([t]).decode("utf-8", errors="replace") for t in ids]


def median(rows: list[dict], phase: str, key: str) -> float:
    return statistics.median(r[phase][key] for r in rows)


def summarise(doc: dict) -> dict:
    rows = doc["timings"]
    return {
        "ttft_cold_s": median(rows, "cold", "ttft_s"),
        "ttft_reused_s": median(rows, "warm", "ttft_s"),
        "prompt_tokens_cold": median(rows, "cold", "prompt_tokens"),
        "prompt_tokens_reused": median(rows, "warm", "prompt_tokens"),
        "prompt_tok_s": statistics.median(
            r["cold"]["prompt_tokens"] / r["cold"]["ttft_s"] for r in rows
        ),
        "decode_tok_s": statistics.median(
            r[p]["decode_tok_s"] for r in rows for p in ("cold", "warm")
        ),
        "peak_rss_mb": doc["peak_rss_mb"],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("ttft_cold_s", "TTFT cold (s)"), ("ttft_reused_s", "TTFT, prefix reused (s)"),
               ("decode_tok_s", "decode tokens/s"), ("peak_rss_mb", "peak RSS (MB)")]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    labels = list(results)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        values = [results[k][key] for k in labels]
        colors = ["#4C72B0" if k.startswith("llamacpp") else "#DD8452" for k in labels]
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_xticks(range(len(labels)), [k.replace(" + ", "\n+ ") for k in labels], fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle("llama.cpp vs the embedded student, same CPU (2 threads), same GGUF, same prompt",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--release", type=Path, help="a release folder with a trained LoRA")
    parser.add_argument("--out", type=Path, default=RESULTS / "llamacpp.json")
    parser.add_argument("--scale", type=float, default=0.02,
                        help="std of the random LoRA's B matrices (default 0.02)")  # fmt: skip
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, release_dir, gguf, out = args.worker
        worker(engine, Path(release_dir), Path(gguf) if gguf != "-" else None, Path(out))
        return 0
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        work = Path(tmp)
        home = make_home(work, args.release, args.scale)
        export = work / "export"
        done = subprocess.run(
            [sys.executable, "-m", "teacher", "export", "--home", str(home), "--out", str(export)],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"gemma-teacher export failed: {done.stderr}")
        print("exported:", done.stdout.strip())
        release_dir = home / "releases" / "v1"
        docs = {}
        for engine, adapter in (("llamacpp", False), ("embedded", False),
                                ("llamacpp", True), ("embedded", True)):  # fmt: skip
            label = engine + (" + LoRA" if adapter else "")
            out = work / f"{engine}-{adapter}.json"
            gguf = str(export / "adapter.gguf") if adapter else "-"
            print(f"running {label} ...", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", engine, str(release_dir), gguf,
                            str(out)], check=True, cwd=ROOT)  # fmt: skip
            docs[label] = json.loads(out.read_text())
    same_ids = docs["llamacpp"]["prompt_ids"] == docs["embedded"]["prompt_ids"]
    agree = {}
    for suffix in ("", " + LoRA"):
        lt, et = docs["llamacpp" + suffix]["agree_texts"], docs["embedded" + suffix]["agree_texts"]
        tops = docs["embedded" + suffix]["agree_tops"]
        rows = []
        for i, (a, b) in enumerate(zip(lt, et, strict=True)):
            toks = pieces(a)
            k = agreement(toks, pieces(b))
            row = {"input": INPUTS[i], "llamacpp": a, "embedded": b, "agree": k}
            if k < AGREE_TOKENS and k < len(tops[i]) and k < len(toks):
                # how far apart the two choices were for the embedded model at that step
                top = tops[i][k]
                chosen = max(top.values())
                row["diverged_at"] = k
                row["embedded_gap"] = (
                    round(chosen - top[toks[k]], 4) if toks[k] in top else None
                )  # None: llama.cpp's token is not in the embedded top 5
            rows.append(row)
        agree["adapter" if suffix else "base"] = rows
    changed = sum(
        a["llamacpp"] != b["llamacpp"] for a, b in zip(agree["base"], agree["adapter"], strict=True)
    )
    results = {label: summarise(doc) for label, doc in docs.items()}
    print(f"\nprompt tokenised identically by both: {same_ids} "
          f"({len(docs['llamacpp']['prompt_ids'])} tokens)")  # fmt: skip
    print(f"\nfirst-{AGREE_TOKENS}-token greedy agreement (llama.cpp vs embedded):")
    print("| input | base | with the exported LoRA |\n|---|---|---|")
    for b, a in zip(agree["base"], agree["adapter"], strict=True):
        print(f"| {b['input'][:48]} | {b['agree']}/{AGREE_TOKENS} | {a['agree']}/{AGREE_TOKENS} |")
    print(f"the LoRA changed llama.cpp's greedy output on {changed}/{len(INPUTS)} inputs")
    gaps = [r.get("embedded_gap") for key in agree for r in agree[key] if "diverged_at" in r]
    if gaps:
        print("where they diverge, the embedded model's log-prob gap between its token and "
              f"llama.cpp's: {gaps} (a near tie)")  # fmt: skip
    keys = ["ttft_cold_s", "ttft_reused_s", "prompt_tok_s", "decode_tok_s", "peak_rss_mb"]
    print("\n| engine | TTFT cold s | TTFT prefix reused s | prompt tok/s | decode tok/s | "
          "peak RSS MB |\n|---|---|---|---|---|---|")  # fmt: skip
    for label, r in results.items():
        print(f"| {label} | " + " | ".join(f"{r[k]:.3f}" if k.startswith("ttft") else f"{r[k]:.0f}"
                                         for k in keys) + " |")  # fmt: skip
    ratios = {}
    for suffix in ("", " + LoRA"):
        lc, em = results["llamacpp" + suffix], results["embedded" + suffix]
        ratios["adapter" if suffix else "base"] = {
            "ttft_cold": em["ttft_cold_s"] / lc["ttft_cold_s"],
            "ttft_reused": em["ttft_reused_s"] / lc["ttft_reused_s"],
            "prompt_tok_s": lc["prompt_tok_s"] / em["prompt_tok_s"],
            "decode_tok_s": lc["decode_tok_s"] / em["decode_tok_s"],
            "peak_rss": em["peak_rss_mb"] / lc["peak_rss_mb"],
        }
        print(f"llama.cpp{suffix} vs embedded{suffix}: " + ", ".join(
            f"{k} {v:.1f}x" for k, v in ratios["adapter" if suffix else "base"].items()))  # fmt: skip
    doc = {
        "command": "bench/llamacpp.py"
        + (f" --release {args.release}" if args.release else f" --scale {args.scale}"),
        "seconds": round(time.time() - t_start, 1),
        "threads": THREADS,
        "adapter": str(args.release)
        if args.release
        else f"seeded random LoRA (q,k,v,o,gate,up,down; r=8; B std {args.scale})",
        "prompt_ids_identical": same_ids,
        "prompt_tokens": len(docs["llamacpp"]["prompt_ids"]),
        "agreement": agree,
        "lora_changed_outputs": changed,
        "results": results,
        "ratios": ratios,
        "note": "ratios are llama.cpp's advantage: >1 means llama.cpp is faster or smaller",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
