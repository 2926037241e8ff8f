"""Benchmark: one real upskill run on the bundled Gemma 3 270M with the 40 dev scenes.

    /work/venv/bin/python bench/upskill.py [--candidates 4] [--rounds 2]

Runs the real command line, exactly as a person would, against a fresh teacher home:

    gemma-teacher upskill --config HOME/teacher.yaml \\
        --labels shared/data/dev_scenes.jsonl --no-store --report-dir bench/results

and writes bench/results/upskill.md (per-candidate table with every metric, the held-out
comparison against the hand-written default skill, the decision), upskill.json and
upskill.png (bar chart of candidate scores). The wall time (model load included) is
added to the JSON. Speed numbers are noisy on a shared CPU; the scores are not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads; on a CPU other jobs share, 1 is several times faster",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="upskill-bench-") as home:
        config = Path(home) / "teacher.yaml"
        config.write_text(
            f"home: {home}\n"
            "reviewer: {backend: embedded}\n"
            f"student: {{backend: embedded, embedded: {{threads: {args.threads}}}}}\n"
            f"upskill: {{candidates: {args.candidates}, rounds: {args.rounds}, "
            f"demos: {args.demos}}}\n"
        )
        command = [
            sys.executable,
            "-m",
            "teacher",
            "upskill",
            "-v",
            "--config",
            str(config),
            "--labels",
            "shared/data/dev_scenes.jsonl",
            "--no-store",
            "--report-dir",
            str(args.out),
        ]
        load_before = os.getloadavg()
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        if proc.returncode != 0:
            print(f"upskill failed with exit status {proc.returncode}", file=sys.stderr)
            return proc.returncode
        report = args.out / "upskill.json"
        doc = json.loads(report.read_text())
        doc["bench"] = {
            "command": "/work/venv/bin/python " + " ".join(sys.argv),
            "config": config.read_text(),
            "wall_s": round(wall, 1),
            "cpu_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in load_after],
        }
        report.write_text(json.dumps(doc, indent=2) + "\n")
        d = doc["decision"]
        print(
            f"\nwall time {wall / 60:.1f} min (model load included); held-out: winner "
            f"{d['winner_holdout']['score']:.3f} vs default {d['baseline_holdout']['score']:.3f}"
            f"; activated: {d['activated']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
