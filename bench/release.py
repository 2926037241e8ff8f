"""Benchmark: releases judged as the edge runs them, on scenes no release ever saw.

    .venv/bin/python bench/release.py [--engines llamacpp embedded] [--lora] [--limit N]

Per engine (``llamacpp``, the edges' default, and ``embedded``, torch; the same GGUF):

1. Builds releases with the real commands, each in a fresh teacher home whose
   ``student.backend`` is that engine, from the project's 300 bundled labelled scenes
   (``shared.evaluation.BUNDLED_LABELS``, which ``train`` adds itself: ``release.bundled_labels``):
   - head only: ``gemma-teacher train --no-store --home H --head-only``
   - head + LoRA (``--lora``): the same without ``--head-only`` (fp32 CPU; minutes)
   and times each command (model load included).
2. Scores, in one process with that engine's backend, through ``teacher.release.harness``
   (the edge's own Student + policy.decide) on ``bench/data/heldout_scenes.jsonl`` (160
   hand-written scenes, never used for training or calibration):
   - "today": the default skill as edges ran it before releases (no head; confidence,
     keyword, format and audit rules);
   - the engine's bundled release v0 (default skill + head + thresholds);
   - the head-only release, and the head + LoRA release.
3. Latency with the head against without it: the same release and inputs, hidden states
   asked for or not, alternated input by input in the same process.

Writes bench/results/release.json, release.md (the table) and release.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HELDOUT = ROOT / "bench" / "data" / "heldout_scenes.jsonl"


def train(home: Path, engine: str, head_only: bool, epochs: float) -> tuple[float, dict, int]:
    """Run ``gemma-teacher train`` like a person would; (seconds, its JSON report, exit)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "teacher.yaml"
    config.write_text(json.dumps({"home": str(home), "student": {"backend": engine}}))
    command = [sys.executable, "-m", "teacher", "train", "--no-store", "--config", str(config),
               "--no-progress", "--keep-refused"]  # fmt: skip
    command += ["--head-only"] if head_only else ["--epochs", str(epochs), "--batch-size", "8",
                                                  "--lr", "3e-4"]  # fmt: skip
    print("$", " ".join(command), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out = done.stdout
    print(out[-3000:], done.stderr[-2000:] if done.returncode not in (0, 1) else "", flush=True)
    start = out.find('{\n "version"')
    report = json.loads(out[start : out.index("\n}\n", start) + 2]) if start >= 0 else {}
    return seconds, report, done.returncode


def latency_with_and_without_head(student, cases, rounds: int = 1) -> dict:
    """p50 answer latency of one release, hidden states asked for or not (alternated)."""
    with_head, without = [], []
    for _ in range(rounds):
        for case in cases:
            request = student.request(case.input)
            for layers, sink in ((request.hidden_layers, with_head), ((), without)):
                t0 = time.perf_counter()
                gen = student.backend.generate(replace(request, hidden_layers=layers))
                if layers:
                    student.head.p_unsafe(student.head.features(gen))
                sink.append(time.perf_counter() - t0)
    p50w, p50o = statistics.median(with_head), statistics.median(without)
    return {"n": len(with_head), "p50_with_head_s": round(p50w, 4),
            "p50_without_head_s": round(p50o, 4), "ratio": round(p50w / p50o, 3)}  # fmt: skip


def plot(rows: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, key, title in zip(
        axes,
        ("system_recall", "teacher_calls_per_100", "false_alerts_per_100"),
        ("system safety recall", "teacher calls per 100 inputs", "false local alerts per 100"),
        strict=True,
    ):
        values = [doc[key] for _, doc in rows]
        palette = ["#999", "#4a90d9", "#2e7d32", "#8e24aa"]
        colours = [palette[i % len(palette)] for i in range(len(rows))]
        ax.bar(labels, values, color=colours)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if key == "system_recall" else f"{v:.0f}", ha="center",
                    va="bottom")  # fmt: skip
        if key == "system_recall":
            ax.axhline(0.95, color="red", linestyle="--", linewidth=1)
            ax.set_ylim(0, 1.05)
    fig.suptitle(f"{rows[0][1]['n']} held-out scenes, scored through the edge's own code")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["llamacpp", "embedded"],
                        choices=["llamacpp", "embedded"])  # fmt: skip
    parser.add_argument("--lora", action="store_true", help="also build a head + LoRA release")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--limit", type=int, help="score only the first N held-out scenes")
    parser.add_argument("--work", type=Path, default=RESULTS / "release-work")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from shared.backend_factory import make_backend
    from shared.evaluation import load_labeled
    from shared.release import default_release, load_release, model_engine, skill_release
    from shared.skill import default_skill
    from shared.student import Student
    from shared.teacher_config import TeacherConfig
    from teacher.release.build import evaluate
    from teacher.release.harness import table

    builds: dict[str, dict] = {}
    rows, reports, latency = [], {}, {}
    cases = load_labeled(HELDOUT)[: args.limit]
    for engine in args.engines:
        for name, head_only in (("head-only", True), ("head+LoRA", False)):
            if name == "head+LoRA" and not args.lora:
                continue
            key = f"{engine} {name}"
            home = args.work / engine / name
            done = home / "build.json"
            if done.is_file():
                print(f"{key}: reusing the release built in {home}")
                builds[key] = json.loads(done.read_text())
                continue
            seconds, report, code = train(home, engine, head_only, args.epochs)
            builds[key] = {"seconds": round(seconds, 1), "exit": code, "report": report}
            done.write_text(json.dumps(builds[key], indent=1))

        cfg = TeacherConfig.model_validate({"student": {"backend": engine}})
        backend = make_backend(cfg.student)
        v0 = default_release(model_engine(engine))
        releases = [(f"{engine}: today (default skill, no head)", skill_release(default_skill())),
                    (f"{engine}: default release v0", v0)]  # fmt: skip
        for key, build in builds.items():
            number = build["report"].get("version")
            if number and key.startswith(engine + " "):
                gate = "passed" if build["report"].get("passed") else "refused"
                name = key.split(" ", 1)[1]
                folder = args.work / engine / name / "releases" / f"v{number}"
                releases.append((f"{engine}: {name} v{number} ({gate})", load_release(folder)))
        for label, release in releases:
            report = evaluate(cfg, backend, release, cases)
            rows.append((label, report.summary()))
            calibration = release.calibration.model_dump() if release.calibration else None
            reports[label] = {**report.summary(), "calibration": calibration}
            print(table(rows[-1:]), flush=True)
        latency[engine] = latency_with_and_without_head(Student(backend, v0), cases[:40])
        backend.close()
    text = table(rows)
    today = rows[0][1]["teacher_calls_per_100"]
    v0_calls = {
        label.split(":")[0]: doc["teacher_calls_per_100"]
        for label, doc in rows
        if "default release v0" in label
    }
    lines = [
        f"# Releases on {len(cases)} held-out scenes (bench/data/heldout_scenes.jsonl)",
        "",
        "```",
        text,
        "```",
        "",
        f"today's default-skill edge: {today:.1f} teacher calls per 100 inputs",
        f"v0 per engine, same cases, one run: {json.dumps(v0_calls)} teacher calls per 100",
        f"latency with the head vs without (same release, same inputs, alternated): {latency}",
        "release builds (wall seconds, model load included): "
        + json.dumps({k: v["seconds"] for k, v in builds.items()}),
    ]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "release.md").write_text("\n".join(lines) + "\n")
    doc = {"heldout": str(HELDOUT.relative_to(ROOT)), "n": len(cases), "releases": reports,
           "latency_head": latency, "builds": builds}  # fmt: skip
    (args.out / "release.json").write_text(json.dumps(doc, indent=1))
    plot(rows, args.out / "release.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
