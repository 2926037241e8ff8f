"""The edge on llama.cpp against raw llama.cpp and against the torch backend, same CPU.

    .venv/bin/python bench/llamacpp_edge.py      # ~6 min on a 2-core CPU

1. **Engine speed**, one worker process after another (each its own peak RSS), 2 threads,
   the bundled Q4_K_M GGUF, the default skill's prompt, greedy, 32 new tokens:
   raw llama.cpp (``llama_cpp.Llama``: tokenize, ``generate``), this project's
   ``LlamaCppBackend`` (what ``model.backend: llamacpp`` runs) and the torch
   ``EmbeddedBackend``, each without and with a seeded random LoRA on every module kind.
   Time to first token cold (nothing cached) and with the skill prefix reused, decode
   tokens/s. The edge's ratio to raw llama.cpp is measured with both in one process,
   input by input in turn (>= 1: the edge is as fast), since the machine is shared.
2. **A whole edge process**: ``gemma-edge run`` over 60 text inputs with a release that
   has a safety head and that LoRA, on ``llamacpp`` (a head fit on llama.cpp's final-norm
   states of 80 bundled scenes) and on ``embedded`` (the bundled v0's head): peak RSS of
   the process (``wait4``), the median judgement latency, judgements per second of
   answering, and whether torch was imported.
3. **Adapter switch on a live backend**: load, switch on, switch off (milliseconds), the
   base weights loaded once.

Prints tables, writes bench/results/llamacpp_edge.json and .png.
"""

from __future__ import annotations

import argparse
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

from bench.llamacpp import (  # noqa: E402
    DECODE_TOKENS,
    INPUTS,
    THREADS,
    Embedded,
    LlamaCpp,
    _timing,
    random_lora,
    summarise,
)

RESULTS = ROOT / "bench" / "results"
EDGE_INPUTS = 60
HEAD_SCENES = 80


class Edge:
    """``LlamaCppBackend`` driven like ``bench.llamacpp.LlamaCpp``: the same prompts."""

    def __init__(self, adapter_dir: Path | None, skill, cache: Path):
        from shared.config import LlamaCppModelConfig
        from shared.llamacpp_backend import LlamaCppBackend

        self.backend = LlamaCppBackend(LlamaCppModelConfig(threads=THREADS, adapter_cache=cache))
        if adapter_dir is not None:
            self.backend.load_adapter("bench", adapter_dir)
            self.backend.set_adapter("bench")
        self.skill = skill

    def ids(self, prompt: str) -> list[int]:
        return self.backend._tokenize(prompt)

    def greedy(self, i: int, n: int, cold: bool) -> tuple[str, dict]:
        from shared.backend import GenerateRequest
        from shared.skill import ANSWER_PRIMER

        def request(text: str, tokens: int):
            return GenerateRequest(system=self.skill.instructions, input=text,
                                   demos=self.skill.demos, stop=(), max_new_tokens=tokens)  # fmt: skip

        self.backend._forget()
        if not cold:
            self.backend.generate(request(INPUTS[(i + 1) % len(INPUTS)], 0))
        gen = self.backend.generate(request(INPUTS[i], n))
        return gen.text[len(ANSWER_PRIMER) :], _timing(
            gen.prompt_tokens, gen.ttft_s, gen.total_s, gen.tokens
        )


def engine_worker(engine: str, lora: str, out: Path) -> None:
    from shared.skill import default_skill, render_input

    skill = default_skill()
    adapter = Path(lora) if lora != "-" else None
    prompts = [skill.prompt_prefix() + render_input(t) for t in INPUTS]
    if engine == "raw":
        gguf = None
        if adapter is not None:
            from shared.gguf_adapter import write_gguf_adapter

            gguf = out.with_suffix(".gguf")
            write_gguf_adapter(adapter, gguf, "bench")
        run = LlamaCpp(gguf, prompts)
    elif engine == "edge":
        run = Edge(adapter, skill, out.parent / "adapters")
    else:
        run = Embedded(adapter, skill)
    rows = []
    for rep in range(2):
        for i in range(len(INPUTS)):
            rows.append({"rep": rep, "input": i,
                         "cold": run.greedy(i, DECODE_TOKENS, cold=True)[1],
                         "warm": run.greedy(i, DECODE_TOKENS, cold=False)[1]})  # fmt: skip
    doc = {
        "timings": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    doc["torch_imported"] = "torch" in sys.modules
    out.write_text(json.dumps(doc))


def pair_worker(lora: str, out: Path) -> None:
    """Raw llama.cpp and the edge's backend in one process, input by input in turn (the
    fair speed ratio on a shared machine): per pair, the edge's decode tok/s and TTFT over
    raw's."""
    from shared.skill import default_skill, render_input

    skill = default_skill()
    adapter = Path(lora) if lora != "-" else None
    prompts = [skill.prompt_prefix() + render_input(t) for t in INPUTS]
    gguf = None
    if adapter is not None:
        from shared.gguf_adapter import write_gguf_adapter

        gguf = out.with_suffix(".gguf")
        write_gguf_adapter(adapter, gguf, "bench")
    raw, edge = LlamaCpp(gguf, prompts), Edge(adapter, skill, out.parent / "adapters")
    pairs = []
    for rep in range(3):
        for i in range(len(INPUTS)):
            for cold in (True, False):
                order = (raw, edge) if (rep + i) % 2 == 0 else (edge, raw)
                got = {id(r): r.greedy(i, DECODE_TOKENS, cold=cold)[1] for r in order}
                a, b = got[id(raw)], got[id(edge)]
                pairs.append({"cold": cold, "decode": b["decode_tok_s"] / a["decode_tok_s"],
                              "ttft": a["ttft_s"] / b["ttft_s"]})  # fmt: skip
    med = statistics.median
    doc = {"decode_ratio": med(p["decode"] for p in pairs),
           "ttft_cold_ratio": med(p["ttft"] for p in pairs if p["cold"]),
           "ttft_reused_ratio": med(p["ttft"] for p in pairs if not p["cold"]),
           "pairs": len(pairs)}  # fmt: skip
    out.write_text(json.dumps(doc))


def switch_worker(lora: str, out: Path) -> None:
    from shared.backend import GenerateRequest
    from shared.config import LlamaCppModelConfig
    from shared.llamacpp_backend import LlamaCppBackend
    from shared.skill import default_skill

    skill = default_skill()
    b = LlamaCppBackend(LlamaCppModelConfig(threads=THREADS, adapter_cache=out.parent / "sw"))
    request = GenerateRequest(system=skill.instructions, demos=skill.demos, input=INPUTS[0],
                              max_new_tokens=8, stop=())  # fmt: skip
    base = b.generate(request).text
    t = time.perf_counter()
    b.load_adapter("r1", Path(lora))
    first_load = time.perf_counter() - t
    t = time.perf_counter()
    b.load_adapter("r2", Path(lora))  # converted already: llama.cpp's load only
    load = time.perf_counter() - t
    ons, offs, firsts = [], [], []
    for _ in range(5):
        t = time.perf_counter()
        b.set_adapter("r1")
        ons.append(time.perf_counter() - t)
        firsts.append(b.generate(request).ttft_s)  # the prefix recomputed under the adapter
        adapted = b.generate(request).text
        t = time.perf_counter()
        b.set_adapter(None)
        offs.append(time.perf_counter() - t)
    doc = {"convert_and_load_s": first_load, "load_s": load,
           "switch_on_ms": 1000 * statistics.median(ons),
           "switch_off_ms": 1000 * statistics.median(offs),
           "ttft_after_switch_s": statistics.median(firsts),
           "adapter_changed_output": adapted != base, "base_loads": b.loads}  # fmt: skip
    out.write_text(json.dumps(doc))


# ---------------------------------------------------------------- whole edge processes
def llamacpp_release(folder: Path, lora: Path) -> None:
    """A release for the llamacpp engine: the default skill, a head fit on llama.cpp's
    final-norm states of bundled scenes, v0's thresholds, and the LoRA."""
    from shared.backend import GenerateRequest
    from shared.config import LlamaCppModelConfig
    from shared.head import fit_head
    from shared.llamacpp_backend import LlamaCppBackend
    from shared.release import ADAPTER_FILES, build_files, default_release, write_release
    from shared.skill import default_skill

    skill = default_skill()
    scenes = [json.loads(line) for line in (ROOT / "shared/data/scenes.jsonl").open()]
    scenes = scenes[:HEAD_SCENES]
    backend = LlamaCppBackend(LlamaCppModelConfig(threads=THREADS, adapter_cache=folder.parent))
    backend.load_adapter("r", lora)
    backend.set_adapter("r")
    layers = backend.hidden.readable
    x = [backend.generate(GenerateRequest(system=skill.instructions, demos=skill.demos,
                                          input=s["input"], max_new_tokens=0,
                                          hidden_layers=layers)).hidden for s in scenes]  # fmt: skip
    import numpy as np

    head = fit_head(np.array(x), [bool(s["safety"]) for s in scenes], layers=layers)
    head = type(head)(head.kind, head.layers, head.mean, head.std, head.weight, head.bias,
                      {**head.info, "engine": backend.hidden.engine})  # fmt: skip
    backend.close()
    adapter = {name: (lora / name).read_bytes() for name in ADAPTER_FILES}
    v0 = default_release()
    write_release(folder, build_files(1, skill, head, v0.calibration, adapter, note="bench"))


def torch_release(folder: Path, lora: Path) -> None:
    from shared.release import ADAPTER_FILES, build_files, default_release, write_release

    v0 = default_release("torch")  # its head reads torch's hidden states
    adapter = {name: (lora / name).read_bytes() for name in ADAPTER_FILES}
    write_release(folder, build_files(1, v0.skill, v0.head, v0.calibration, adapter, note="bench"))


def edge_process(backend: str, release: Path, work: Path) -> dict:
    """One ``gemma-edge run`` over the held-out scenes' texts: peak RSS, latency, torch."""
    scenes = [
        json.loads(line)["input"] for line in (ROOT / "bench/data/heldout_scenes.jsonl").open()
    ]
    source = work / "inputs.txt"
    source.write_text("\n".join(scenes[:EDGE_INPUTS]) + "\n")
    events = work / f"events-{backend}.jsonl"
    code = (
        "import sys\nfrom edge.cli import main\n"
        f"argv = ['run', '--source', {str(source)!r}, '--backend', {backend!r}, '--release', "
        f"{str(release)!r}, '--events', {str(events)!r}, '--no-progress']\n"
        "try:\n    rc = main(argv)\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('TORCH', 'torch' in sys.modules, flush=True)\nsys.exit(rc)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        raise SystemExit(f"gemma-edge run --backend {backend} failed: {stderr[-2000:]}")
    answers = [
        e for e in map(json.loads, events.read_text().splitlines()) if e.get("type") == "answer"
    ]
    latencies = [e["latency_s"] for e in answers]
    heads = sum(e["p_unsafe"] is not None for e in answers)
    return {"backend": backend, "inputs": len(answers), "wall_s": wall,
            "median_latency_s": statistics.median(latencies),
            "judgements_per_s": len(latencies) / sum(latencies),
            "head_scored": heads, "peak_rss_children_mb": rss,
            "torch_imported": "TORCH True" in stdout}  # fmt: skip


def _isolated_rss(backend: str, release: Path, work: Path) -> dict:
    """``edge_process`` in a fresh parent, so RUSAGE_CHILDREN is this one edge's peak."""
    out = work / f"edge-{backend}.json"
    subprocess.run([sys.executable, __file__, "--edge-worker", backend, str(release), str(work),
                    str(out)], check=True, cwd=ROOT)  # fmt: skip
    return json.loads(out.read_text())


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eng = doc["engines"]
    labels = list(eng)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (key, title) in zip(axes[:3], [("ttft_cold_s", "TTFT cold (s)"),
                                           ("ttft_reused_s", "TTFT, prefix reused (s)"),
                                           ("decode_tok_s", "decode tokens/s")], strict=True):  # fmt: skip
        ax.bar(range(len(labels)), [eng[k][key] for k in labels],
               color=["#888" if k.startswith("raw") else "#4C72B0" if k.startswith("edge")
                      else "#DD8452" for k in labels])  # fmt: skip
        ax.set_xticks(range(len(labels)), [k.replace(" + ", "\n+ ") for k in labels], fontsize=7)
        ax.set_title(title, fontsize=9)
    procs = doc["edge_processes"]
    axes[3].bar(range(len(procs)), [p["peak_rss_children_mb"] for p in procs],
                color=["#4C72B0" if p["backend"] == "llamacpp" else "#DD8452" for p in procs])  # fmt: skip
    axes[3].axhline(600, color="red", lw=0.8, ls="--")
    axes[3].set_xticks(range(len(procs)), [p["backend"] for p in procs], fontsize=8)
    axes[3].set_title("peak RSS of gemma-edge run, head + LoRA (MB)", fontsize=9)
    fig.suptitle(
        "the edge on llama.cpp vs raw llama.cpp vs torch (2 threads, same GGUF)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "llamacpp_edge.json")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--switch-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--pair-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--edge-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine_worker(args.worker[0], args.worker[1], Path(args.worker[2]))
        return 0
    if args.pair_worker:
        pair_worker(args.pair_worker[0], Path(args.pair_worker[1]))
        return 0
    if args.switch_worker:
        switch_worker(args.switch_worker[0], Path(args.switch_worker[1]))
        return 0
    if args.edge_worker:
        backend, release, work, out = args.edge_worker
        Path(out).write_text(json.dumps(edge_process(backend, Path(release), Path(work))))
        return 0
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-edge-") as tmp:
        work = Path(tmp)
        lora = work / "lora"
        random_lora(lora, scale=0.02)
        docs = {}
        for engine in ("raw", "edge", "torch"):
            for adapter in (False, True):
                label = engine + (" + LoRA" if adapter else "")
                out = work / f"{engine}-{adapter}.json"
                print(f"running {label} ...", flush=True)
                subprocess.run([sys.executable, __file__, "--worker", engine,
                                str(lora) if adapter else "-", str(out)], check=True, cwd=ROOT)  # fmt: skip
                docs[label] = json.loads(out.read_text())
        engines = {label: {**summarise(d), "torch_imported": d["torch_imported"]}
                   for label, d in docs.items()}  # fmt: skip
        paired = {}
        for adapter in (False, True):
            key = "adapter" if adapter else "base"
            print(f"raw and edge in turn, one process ({key}) ...", flush=True)
            out = work / f"pair-{key}.json"
            subprocess.run([sys.executable, __file__, "--pair-worker",
                            str(lora) if adapter else "-", str(out)], check=True, cwd=ROOT)  # fmt: skip
            paired[key] = json.loads(out.read_text())
        print("adapter switch ...", flush=True)
        subprocess.run([sys.executable, __file__, "--switch-worker", str(lora),
                        str(work / "switch.json")], check=True, cwd=ROOT)  # fmt: skip
        switch = json.loads((work / "switch.json").read_text())
        print("release for llama.cpp (head on final-norm states) ...", flush=True)
        llamacpp_release(work / "rel-llamacpp", lora)
        torch_release(work / "rel-torch", lora)
        procs = []
        for backend, folder in (("llamacpp", "rel-llamacpp"), ("embedded", "rel-torch")):
            print(f"gemma-edge run --backend {backend} ...", flush=True)
            procs.append(_isolated_rss(backend, work / folder, work))
    ratios = {}
    for suffix in ("", " + LoRA"):
        raw, edge, torch_ = (engines[e + suffix] for e in ("raw", "edge", "torch"))
        ratios["adapter" if suffix else "base"] = {
            "edge_vs_raw_decode": edge["decode_tok_s"] / raw["decode_tok_s"],
            "edge_vs_raw_ttft_reused": raw["ttft_reused_s"] / edge["ttft_reused_s"],
            "edge_vs_raw_ttft_cold": raw["ttft_cold_s"] / edge["ttft_cold_s"],
            "edge_vs_torch_decode": edge["decode_tok_s"] / torch_["decode_tok_s"],
            "torch_rss_over_edge": torch_["peak_rss_mb"] / edge["peak_rss_mb"],
        }
    keys = ["ttft_cold_s", "ttft_reused_s", "decode_tok_s", "peak_rss_mb"]
    print("\n| engine | TTFT cold s | TTFT prefix reused s | decode tok/s | peak RSS MB | torch |")
    print("|---|---|---|---|---|---|")
    for label, r in engines.items():
        cells = [f"{r[k]:.3f}" if k.startswith("ttft") else f"{r[k]:.0f}" for k in keys]
        print(f"| {label} | " + " | ".join(cells) + f" | {r['torch_imported']} |")
    print("(ratios across those separate worker processes:)")
    for key, r in ratios.items():
        print(f"{key}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print("\nthe edge's backend over raw llama.cpp, in turn in one process (median of pairs):")
    for key, r in paired.items():
        print(
            f"{key}: decode {r['decode_ratio']:.2f}x, TTFT cold {r['ttft_cold_ratio']:.2f}x, "
            f"TTFT prefix reused {r['ttft_reused_ratio']:.2f}x ({r['pairs']} pairs)"
        )
    print("\n| gemma-edge run (head + LoRA) | inputs | head scored | median latency s | "
          "judgements/s | peak RSS MB | torch imported |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for p in procs:
        print(f"| {p['backend']} | {p['inputs']} | {p['head_scored']} | "
              f"{p['median_latency_s']:.3f} | {p['judgements_per_s']:.2f} | "
              f"{p['peak_rss_children_mb']:.0f} | {p['torch_imported']} |")  # fmt: skip
    print("\nadapter switch on a live llama.cpp context: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in switch.items()))  # fmt: skip
    doc = {"command": "bench/llamacpp_edge.py", "seconds": round(time.time() - t_start, 1),
           "threads": THREADS, "adapter": "seeded random LoRA (q,k,v,o,gate,up,down; r=8; B std 0.02)",
           "engines": engines, "ratios": ratios, "paired": paired, "switch": switch, "edge_processes": procs,
           "note": "edge = shared.llamacpp_backend.LlamaCppBackend; raw = llama_cpp.Llama; "
                   "torch = shared.embedded.EmbeddedBackend"}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    plot(doc, args.out.with_suffix(".png"))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
