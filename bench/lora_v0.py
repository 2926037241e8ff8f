"""A v0 that carries a LoRA, built and scored on the edges' engine: does the adapter that
``bench/lora_screen.py`` found narrow v0's band on llama.cpp (the adapter converted to
GGUF), on scenes and a site that chose nothing?

    .venv/bin/python bench/lora_v0.py                   # training seed 2 (about 10 min), then
    .venv/bin/python bench/lora_v0.py --train-seed 0    # build and score (about 15 min)
    .venv/bin/python bench/lora_v0.py --trained-on sites --sets farm harbour

1. The adapter (``--trained-on generic``, the default): ``bench/lora_screen.py``'s
   (``train.objective: answer+head`` on the 279 generic scenes of
   ``bench/data/generic_more``; cached under ``~/.cache/gemma-edge/replay``, trained if
   missing). Seed 2 by default: by the rule stop 47 found (keep the training seed
   whose v0 has the narrowest bundled out-of-fold band) seeds 0 and 2 tie (2.6 and 3.0 per
   100, against 6.7-11.3 for seeds 1, 3 and 4), and seed 2 stops early, in half the time.
2. v0 on it, as a person would build it: ``gemma-teacher releases build-default --adapter
   <adapter> --out <dir>`` with ``student.backend: llamacpp`` (the head fitted and its
   thresholds certified on the bundled scenes through llama.cpp with the GGUF adapter).
3. Both v0s scored through the edges' own path: ``gemma-teacher eval --release <dir>
   --against 0 --labels <scenes> --json <file>`` (``teacher.release.harness``: the Student,
   the policy, keywords, audits and format rules), on the 160 held-out scenes
   (``bench/data/heldout_scenes.jsonl``) and on every input of the held-out farm and
   harbour sites (``bench/data/{farm,quay}_site``), which neither the adapter's choice nor
   any default was screened on.

Per scene set and release: teacher calls per 100 (and by reason), system recall, the worst
round's system recall (sites), false alerts per 100. Prints a table and writes
bench/results/lora_v0.json (``lora_v0-train-seed<k>.json`` for another seed, then
``-recall<t>`` for another target).

Stop 48 (seed 2): certified at today's target (0.95) v0's band closes on llama.cpp (lower
= upper = 0.371: one of the 116 bundled hazards under it, out of fold). It asks the
teacher 1.9 / 4.7 / 5.3 times per 100 inputs (held-out scenes / farm / harbour) where the
bundled v0 asks 17.5 / 29.7 / 27.5, but its system recall is 0.988 / 0.986 / 0.931: on
the harbour it passes 10 of 144 hazards, 3 of 24 in its worst round. At target 0.97 the
certificate allows no bundled miss and ``lower`` falls to 0.015 (read the
``-recall0.97`` file: farm / harbour 38.1 / 42.5 calls per 100, recall 1.000). The seed-0
adapter (``--train-seed 0``) is unsafe on both: farm / harbour 6.7 / 6.7 calls per 100,
recall 0.972 / 0.917, worst round 0.917 / 0.833. The bundled scenes are too easy for the
adapted model to certify it for a site: the out-of-fold band that picked the adapter is the
band that vanished. An adapter trained the same way on 300 long scenes of the four screening
sites instead (``--trained-on sites``: 75 each, 272 steps, 16.5 min) widens v0's band on the
bundled scenes (0.028/0.636) and costs more than the bundled v0 on both held-out sites
(farm / harbour 35.6 / 34.7 calls per 100), with 4 harbour hazards passed (recall 0.972).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from lora_screen import GENERIC, adapter_release  # noqa: E402
from replay import CACHE, write_result  # noqa: E402

from shared.rounds import calls_by_reason  # noqa: E402
from shared.scoring import Outcome, score  # noqa: E402

SETS = {
    "held-out scenes": ROOT / "bench/data/heldout_scenes.jsonl",
    "farm": ROOT / "bench/data/farm_site/scenes.jsonl",
    "harbour": ROOT / "bench/data/quay_site/scenes.jsonl",
}


def teacher(home: Path, *args: str, recall_target: float = 0.95) -> str:
    """``gemma-teacher`` as a person runs it, in a teacher home on llama.cpp; its stdout."""
    config = home / "teacher.yaml"
    if not config.exists():
        home.mkdir(parents=True, exist_ok=True)
        doc = {"home": str(home), "student": {"backend": "llamacpp"},
               "policy": {"recall_target": recall_target}}  # fmt: skip
        config.write_text(json.dumps(doc))
    command = [sys.executable, "-m", "teacher", *args, "--config", str(config)]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def outcome(case: dict) -> Outcome:
    """One ``gemma-teacher eval --json`` case as the system saw it."""
    d = case["decision"]
    return Outcome(case["label"], d["alert"], d["escalate"], None, case["format_ok"],
                   case["latency_s"], 0, case["id"], tuple(d["reasons"]))  # fmt: skip


def summarize(cases: list[dict], rounds: dict[str, int]) -> dict:
    """One release on one scene set (``shared.scoring.score``, ``shared.rounds``): calls,
    recall, worst round, false alerts."""
    outcomes = [outcome(c) for c in cases]
    rates = score(outcomes)
    row = {
        "inputs": rates.inputs,
        "hazards": rates.hazards,
        "calls": round(rates.teacher_calls_per_100, 1),
        "by_reason": {k: round(v, 1) for k, v in calls_by_reason(outcomes).items()},
        "recall": round(rates.system_recall, 3),
        "missed": list(rates.missed),
        "false_alerts": round(rates.false_alerts_per_100, 1),
    }
    if rounds:
        per_round = [
            score([o for o in outcomes if rounds[o.id] == r]) for r in sorted(set(rounds.values()))
        ]
        recalls = [r.system_recall for r in per_round if r.system_recall is not None]
        row["worst_round_recall"] = round(min(recalls), 3)
        row["calls_by_round"] = [round(r.teacher_calls_per_100, 1) for r in per_round]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-seed", type=int, default=2, help="the adapter's training seed")
    ap.add_argument("--trained-on", choices=("generic", "sites"), default="generic",
                    help="the adapter's training scenes: generic (bench/data/generic_more, "
                    "short) or sites (75 long scenes from each screening site)")  # fmt: skip
    ap.add_argument("--recall-target", type=float, default=0.95,
                    help="policy.recall_target v0's thresholds are certified at (default 0.95, "
                    "today's)")  # fmt: skip
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS),
                    help="scene sets to score (default: all three)")  # fmt: skip
    args = ap.parse_args()
    t0 = time.time()
    data = GENERIC if args.trained_on == "generic" else str(site_sample())
    key = hashlib.sha256((ROOT / data).read_bytes()).hexdigest()[:16]
    base = CACHE / f"lora-{args.trained_on}-{key}"
    home = base / f"train-seed{args.train_seed}" if args.train_seed else base
    adapter = adapter_release(home, args.train_seed, None, data)
    target = args.recall_target
    work = home / ("lora-v0" if target == 0.95 else f"lora-v0-recall{target}")
    v0 = work / "v0-llamacpp"
    timing = {}
    if not (v0 / "manifest.json").exists():
        t = time.time()
        out = teacher(work, "releases", "build-default", "--adapter", str(adapter),
                      "--out", str(v0), recall_target=target)  # fmt: skip
        timing["build_s"] = round(time.time() - t, 1)
        print(out[-1500:], flush=True)
    manifest = json.loads((v0 / "manifest.json").read_text())
    rows = []
    print("| scene set | release | calls/100 | band | keyword | audit | format | system recall "
          "| worst round recall | false alerts/100 |")  # fmt: skip
    print("|---" * 10 + "|")
    for name in args.sets:
        path = SETS[name]
        scenes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rounds = {s["id"]: s["round"] for s in scenes if "round" in s}
        out = work / f"eval-{path.parent.name}-{path.stem}.json"
        if not out.exists():
            t = time.time()
            teacher(work, "eval", "--release", str(v0), "--against", "0", "--labels", str(path),
                    "--json", str(out), "--no-progress")  # fmt: skip
            timing[f"eval_{name}_s"] = round(time.time() - t, 1)
        reports = json.loads(out.read_text())["reports"]
        for label, report in zip(("v0 + LoRA", "bundled v0"), reports, strict=True):
            row = {"set": name, "release": label, **summarize(report["cases"], rounds)}
            rows.append(row)
            r = row["by_reason"]
            print(f"| {name} | {label} | {row['calls']:.1f} | {r['band']:.1f} | "
                  f"{r['keyword']:.1f} | {r['audit']:.1f} | {r['format']:.1f} | "
                  f"{row['recall']:.3f} | {row.get('worst_round_recall', '')} | "
                  f"{row['false_alerts']:.1f} |", flush=True)  # fmt: skip
    tag = "" if args.trained_on == "generic" else "-sites"
    tag += "" if args.train_seed == 2 else f"-train-seed{args.train_seed}"
    tag += "" if target == 0.95 else f"-recall{target}"
    write_result(f"lora_v0{tag}.json", {
        "command": "bench/lora_v0.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - t0, 1), "timing": timing, "train_seed": args.train_seed,
        "trained_on": data, "recall_target": target, "v0_note": manifest.get("note"),
        "thresholds": _thresholds(v0), "rows": rows,
    })  # fmt: skip
    return 0


def site_sample(per_site: int = 75) -> Path:
    """``per_site`` scenes drawn (seed 0) from each screening site's file: long, site-style
    scenes to train an adapter on; the held-out farm and harbour are never drawn."""
    import numpy as np
    from feature_screen import SCREENING
    from replay import SITES

    rows = []
    for name in SCREENING:
        lines = [line for line in SITES[name].read_text().splitlines() if line.strip()]
        picked = np.random.default_rng(0).choice(len(lines), per_site, replace=False)
        rows += [lines[i] for i in sorted(picked)]
    path = CACHE / f"site-sample-{per_site}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def _thresholds(folder: Path) -> dict:
    from shared.release import load_release

    cal = load_release(folder).calibration
    return {"lower": round(cal.lower, 4), "upper": round(cal.upper, 4)} if cal else {}


if __name__ == "__main__":
    raise SystemExit(main())
