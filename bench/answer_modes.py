"""Judge at prefill speed: ``model.answer: always`` against ``when_needed``, whole edge runs.

    .venv/bin/python bench/answer_modes.py              # ~10 min on a 2-core CPU
    .venv/bin/python bench/answer_modes.py --engines embedded --texts 40

Each run is a real ``gemma-edge run`` process with the bundled release v0 of its engine
(a safety head and calibrated thresholds; default policy, audits included), one after the
other on the same inputs:

- **text**: the first ``--texts`` scenes of the held-out site
  (``bench/data/heldout_site/scenes.jsonl``: never used to choose a default), labelled,
  so the system's recall (alerted or escalated) and teacher calls per 100 are counted
  from the events, both ways;
- **video**: a synthetic MJPG file written here (a room, people-sized shapes walking in
  and out, an orange flame-coloured patch for a while), through the frame gate and the
  scene sketcher as any video file.

Judgements per second are answered inputs over the time the model spent on them (the
events' ``latency_s``), and over the run's wall time (model load included); the ratio
``when_needed / always`` is from the same command. Under ``when_needed`` the inputs judged
from the prefill alone (no sentence) are also timed apart: what a quiet stream, where the
head rules out nearly everything, costs per input.

**The prefill's ceiling**, in this process, input by input in turn: the edge's
``Student.answer`` (v0 on llama.cpp, ``when_needed``, no input needing a sentence: a stream
the head rules out entirely) against raw llama.cpp (``llama_cpp.Llama``, 2 threads, the same
GGUF) evaluating the same prompt's own tokens after the cached shared prefix, logits for
the last token, on three sets of texts of different lengths: the bundled scenes, the 160
held-out scenes and the held-out site. A judgement cannot be faster than its prefill, so
raw llama.cpp's rate is the ceiling of judgements per second on that text.

Prints tables, writes bench/results/answer_modes.json and .png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SCENES = ROOT / "bench" / "data" / "heldout_site" / "scenes.jsonl"
MODES = ("always", "when_needed")
CEILING_SETS = {
    "bundled scenes": ROOT / "shared" / "data" / "scenes.jsonl",
    "held-out scenes (160)": ROOT / "bench" / "data" / "heldout_scenes.jsonl",
    "held-out site": SCENES,
}
THREADS = 2


def texts_of(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in path.open() if line.strip()]
    return [" ".join(r["input"].split()) for r in rows if "input" in r][:n]


def prefill_ceiling(n: int) -> list[dict]:
    """Judgements from the prefill alone against raw llama.cpp's prefill of the same tokens
    (module doc), per text set: inputs per second each way and the input's own tokens."""
    from llama_cpp import Llama

    from shared.config import LlamaCppModelConfig
    from shared.llamacpp_backend import LlamaCppBackend
    from shared.models import bundled_gguf
    from shared.release import default_release
    from shared.skill import INPUT_LABEL, render_input, render_prefix
    from shared.student import Student

    release = default_release("llamacpp")
    backend = LlamaCppBackend(LlamaCppModelConfig(threads=THREADS))
    student = Student(backend, release, answer="when_needed")
    raw = Llama(model_path=str(bundled_gguf().path), n_ctx=2048, n_batch=512, n_ubatch=512,
                n_threads=THREADS, n_threads_batch=THREADS, swa_full=True, verbose=False)  # fmt: skip
    prefix = render_prefix(release.skill.instructions, release.skill.demos)
    shared_ids = raw.tokenize((prefix + INPUT_LABEL).encode(), add_bos=True, special=False)
    raw.eval(shared_ids)
    out = []
    for name, path in CEILING_SETS.items():
        texts = texts_of(path, n)
        student.answer(texts[0], None, lambda answer: False)  # the context and prefix, warm
        edge_s = raw_s = 0.0
        tokens = []
        for text in texts:
            t0 = time.perf_counter()
            answered = student.answer(text, None, lambda answer: False)
            edge_s += time.perf_counter() - t0
            if answered.sentence:
                raise SystemExit("a prefill-only answer generated a sentence")
            t0 = time.perf_counter()
            ids = raw.tokenize((prefix + render_input(text)).encode(), add_bos=True, special=False)
            if ids[: len(shared_ids)] != shared_ids:
                raise SystemExit(f"the shared prefix is not a token-prefix of {text!r}")
            raw.n_tokens = len(shared_ids)  # eval cuts the cache back to here
            raw.eval(ids[len(shared_ids) :])
            raw_s += time.perf_counter() - t0
            tokens.append(len(ids) - len(shared_ids))
        tokens.sort()
        out.append({"texts": name, "source": str(path.relative_to(ROOT)), "inputs": len(texts),
                    "input_tokens_median": tokens[len(tokens) // 2],
                    "edge_per_s": round(len(texts) / edge_s, 2),
                    "raw_llamacpp_per_s": round(len(texts) / raw_s, 2),
                    "ratio": round(raw_s / edge_s, 3)})  # fmt: skip
    backend.close()
    return out


def write_video(path: Path, seconds: int = 30, fps: int = 10) -> Path:
    import cv2
    import numpy as np

    h, w = 240, 320
    y, x = np.mgrid[0:h, 0:w]
    room = np.zeros((h, w, 3), np.uint8)
    room[..., 0] = (60 + 80 * x / w).astype(np.uint8)
    room[..., 1] = (70 + 60 * y / h).astype(np.uint8)
    room[..., 2] = 90
    cv2.rectangle(room, (20, 150), (90, 230), (40, 40, 120), -1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(seconds * fps):
        frame = room.copy()
        phase = (i // (5 * fps)) % 3  # 5 s each: empty, one walker, walker + flame
        if phase:
            px = 10 + (i % (5 * fps)) * 5
            cv2.rectangle(frame, (px, 80), (px + 30, 200), (210, 210, 210), -1)
        if phase == 2:
            hsv = np.zeros((50, 70, 3), np.uint8)
            hsv[..., 0], hsv[..., 1], hsv[..., 2] = 12, 230, 250
            frame[120:170, 200:270] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        writer.write(frame)
    writer.release()
    return path


def run_edge(source: Path, engine: str, mode: str, events: Path) -> dict:
    cmd = [sys.executable, "-m", "edge", "run", "--source", str(source), "--backend", engine,
           "--answer", mode, "--events", str(events), "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    evs = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    answers = [e for e in evs if e.get("type") == "answer"]
    model_s = sum(e["latency_s"] for e in answers)
    # the run's first input pays the context and the skill prefix: prefill speed is warm
    quick = [e for e in answers[1:] if e.get("sentence") is False]
    quick_s = sum(e["latency_s"] for e in quick)
    return {
        "prefill_only": len(quick),
        "prefill_only_per_s": round(len(quick) / quick_s, 2) if quick_s else None,
        "answered": len(answers),
        "with_sentence": sum(bool(e.get("sentence", True)) for e in answers),
        "model_s": round(model_s, 2),
        "wall_s": round(wall, 2),
        "judgements_per_s": round(len(answers) / model_s, 3) if model_s else None,
        "wall_per_s": round(len(answers) / wall, 3),
        "answers": answers,
    }


def system(answers: list[dict], labels: list[bool]) -> dict:
    """Recall and calls against the labels, and the speed on the safe inputs alone (what a
    quiet camera mostly sees)."""
    safe = [e for e in answers if not labels[e["index"]]]
    safe_s = sum(e["latency_s"] for e in safe)
    caught = hazards = calls = 0
    for e in answers:
        unsafe = labels[e["index"]]
        escalated = bool(e["decision"]["escalate"])
        calls += escalated
        if unsafe:
            hazards += 1
            caught += bool(e["alert"] or escalated)
    n = len(answers)
    return {"system_recall": round(caught / hazards, 4) if hazards else None,
            "hazards": hazards, "teacher_calls_per_100": round(100 * calls / n, 2),
            "safe_inputs": len(safe),
            "safe_with_sentence": sum(bool(e.get("sentence", True)) for e in safe),
            "safe_judgements_per_s": round(len(safe) / safe_s, 3) if safe_s else None}  # fmt: skip


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{r['engine']}\n{r['source']}", r) for r in doc["rows"]]
    ceiling = doc.get("prefill_ceiling") or []
    fig, axes = plt.subplots(1, 2 if ceiling else 1, figsize=(13 if ceiling else 7, 3.8))
    ax = axes[0] if ceiling else axes
    width = 0.38
    for k, mode in enumerate(MODES):
        values = [r[mode]["judgements_per_s"] or 0 for _, r in rows]
        ax.bar([i + (k - 0.5) * width for i in range(len(rows))], values, width, label=mode)
    ax.set_xticks(range(len(rows)), [name for name, _ in rows])
    ax.set_ylabel("judgements / s of model time")
    ax.set_title("answer: always vs when_needed (whole gemma-edge run, same inputs)")
    ax.legend()
    if ceiling:
        ax = axes[1]
        names = [f"{c['texts']}\n({c['input_tokens_median']} tokens)" for c in ceiling]
        for k, (key, label) in enumerate((("edge_per_s", "edge, judged from the prefill"),
                                          ("raw_llamacpp_per_s", "raw llama.cpp prefill"))):  # fmt: skip
            ax.bar([i + (k - 0.5) * width for i in range(len(ceiling))],
                   [c[key] for c in ceiling], width, label=label)  # fmt: skip
        ax.axhline(25, color="grey", linestyle="--", linewidth=1, label="issue's goal: 25/s")
        ax.set_xticks(range(len(ceiling)), names)
        ax.set_ylabel("inputs / s")
        ax.set_title("the prefill's ceiling (one process, input by input in turn)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="llamacpp,embedded")
    parser.add_argument("--texts", type=int, default=80)
    parser.add_argument("--video-seconds", type=int, default=30)
    parser.add_argument("--ceiling-texts", type=int, default=80, help="texts per set (0: skip)")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    if "llamacpp" in engines and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: skipping the llamacpp engine")
        engines.remove("llamacpp")
    rows = [json.loads(line) for line in SCENES.open() if line.strip()][: args.texts]
    labels = [bool(r["safety"]) for r in rows]
    out = []
    with tempfile.TemporaryDirectory(prefix="answer-modes-") as tmp:
        tmp = Path(tmp)
        texts = tmp / "texts.txt"
        texts.write_text("".join(" ".join(r["input"].split()) + "\n" for r in rows))
        video = write_video(tmp / "room.avi", args.video_seconds)
        for engine in engines:
            for name, source in (("text", texts), ("video", video)):
                row = {"engine": engine, "source": name}
                for mode in MODES:
                    print(f"{engine} {name} {mode} ...", flush=True)
                    r = run_edge(source, engine, mode, tmp / f"{engine}-{name}-{mode}.jsonl")
                    answers = r.pop("answers")
                    if name == "text":
                        r.update(system(answers, labels))
                    row[mode] = r
                a, w = row["always"]["judgements_per_s"], row["when_needed"]["judgements_per_s"]
                row["speedup"] = round(w / a, 2) if a and w else None
                if name == "text":
                    a = row["always"]["safe_judgements_per_s"]
                    w = row["when_needed"]["safe_judgements_per_s"]
                    row["safe_speedup"] = round(w / a, 2) if a and w else None
                out.append(row)
    print("\n| engine | input | answered | with sentence (always / when_needed) | "
          "judgements/s always | when_needed | ratio | recall always / when_needed | "
          "calls/100 always / when_needed | judged from the prefill alone, per s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    safe_rows = []
    for row in out:
        if "safe_speedup" in row:
            a, w = row["always"], row["when_needed"]
            safe_rows.append(f"| {row['engine']} | text, safe inputs only | {a['safe_inputs']} | "
                             f"{a['safe_with_sentence']} / {w['safe_with_sentence']} | "
                             f"{a['safe_judgements_per_s']} | {w['safe_judgements_per_s']} | "
                             f"{row['safe_speedup']}x | | | |")  # fmt: skip
        a, w = row["always"], row["when_needed"]
        recall = f"{a['system_recall']} / {w['system_recall']}" if "system_recall" in a else ""
        calls = (f"{a['teacher_calls_per_100']} / {w['teacher_calls_per_100']}"
                 if "teacher_calls_per_100" in a else "")  # fmt: skip
        print(f"| {row['engine']} | {row['source']} | {a['answered']} | {a['with_sentence']} / "
              f"{w['with_sentence']} | {a['judgements_per_s']} | {w['judgements_per_s']} | "
              f"{row['speedup']}x | {recall} | {calls} | {w['prefill_only_per_s']} |")  # fmt: skip
    print("\n".join(safe_rows))
    ceiling = []
    if "llamacpp" in engines and args.ceiling_texts:
        print("\nthe prefill's ceiling ...", flush=True)
        ceiling = prefill_ceiling(args.ceiling_texts)
        print("\n| texts | inputs | input tokens (median) | edge, judged from the prefill, /s | "
              "raw llama.cpp prefill, /s | edge / raw |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for c in ceiling:
            print(
                f"| {c['texts']} | {c['inputs']} | {c['input_tokens_median']} | "
                f"{c['edge_per_s']} | {c['raw_llamacpp_per_s']} | {c['ratio']}x |"
            )
    doc = {"command": "bench/answer_modes.py " + " ".join(sys.argv[1:]), "texts": args.texts,
           "text_source": str(SCENES.relative_to(ROOT)), "rows": out,
           "prefill_ceiling": ceiling}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "answer_modes.json").write_text(json.dumps(doc, indent=1))
    plot(doc, RESULTS / "answer_modes.png")
    print(f"\nwrote {RESULTS / 'answer_modes.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
