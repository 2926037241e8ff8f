"""Benchmark: the loop against no loop, per site and teacher seed.

    .venv/bin/python bench/flywheel.py --site heldout --seeds 0 1 2     # runs gemma-edge demo
    .venv/bin/python bench/flywheel.py --summarize bench/results/flywheel/*/report.json

Each run is ``gemma-edge demo`` (head-only releases, labels standing in for the teacher)
on one site: ``demo`` is the bundled factory and ``tuning`` is
``bench/data/tuning_site/scenes.jsonl`` (a railway station): the defaults were chosen on
these two; ``hospital`` is ``bench/data/hospital_site/scenes.jsonl`` (an emergency
department whose safe scenes look hazardous, written after those defaults were fixed; it
screened levers in ``bench/replay.py`` with the other two and changed no default); ``heldout``
is ``bench/data/heldout_site/scenes.jsonl`` (a leisure centre written before the flywheel
defaults changed, held out through stop 36, screening levers since stop 37); ``farm`` is ``bench/data/farm_site/scenes.jsonl``
(a dairy and arable farm: a second held-out site, written at stop 36; it chose nothing);
``quay`` is ``bench/data/quay_site/scenes.jsonl`` (a fishing harbour and marina: a third
held-out site, written at stop 37 before any default changed; it chose nothing). Every
round's inputs are also answered by the starting release v0 through the same code (the demo does it), so the
loop's effect is the ratio of the two, round by round.

Prints a table (per run: calls per 100 by round against v0's, the last round's ratio,
the lowest recall, the last round's calls by reason, its audit-based recall estimate,
the builds the gate passed or refused, and the student's engine build), then per site how
many runs meet issue 21's target and whether they ran on one build, and writes bench/results/flywheel.json and
flywheel.png (calls per round, the loop solid, v0 dashed, one panel per site).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data"
SITES = {
    "demo": None,
    "tuning": DATA / "tuning_site" / "scenes.jsonl",
    "heldout": DATA / "heldout_site" / "scenes.jsonl",
    "hospital": DATA / "hospital_site" / "scenes.jsonl",
    "farm": DATA / "farm_site" / "scenes.jsonl",
    "quay": DATA / "quay_site" / "scenes.jsonl",
}
MIN_RECALL, MAX_LAST_CALLS = 0.95, 12.0  # issue 21's target, with "at most half of v0"
TARGET = (
    f"system recall >= {MIN_RECALL} in every round; last round <= {MAX_LAST_CALLS:g} teacher "
    "calls per 100 and <= half of v0's on the same inputs"
)


def run_demo(
    site: str, seed: int, rounds: int | None, backend: str = "llamacpp", answer: str = "when_needed"
) -> Path:
    tag = "" if backend == "llamacpp" else f"-{backend}"
    tag += "" if answer == "when_needed" else f"-{answer}"
    out = RESULTS / "flywheel" / f"{site}-seed{seed}{tag}"
    cmd = [sys.executable, "-m", "edge", "demo", "--seed", str(seed), "--out", str(out),
           "--backend", backend, "--answer", answer]  # fmt: skip
    if SITES[site] is not None:
        cmd += ["--scenes", str(SITES[site])]
    if rounds:
        cmd += ["--rounds", str(rounds)]
    print("$ gemma-edge " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out / "report.json"


def summary(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    rows = doc["rounds"]
    last = rows[-1]
    outcomes = [s["outcome"] for b in doc.get("builds", []) for s in b["steps"]]
    start = last.get("start_calls_per_100")
    return {
        "report": str(path),
        "command": doc.get("command", ""),
        "minutes": round(doc.get("seconds", 0) / 60, 1),
        "calls": [r["teacher_calls_per_100"] for r in rows],
        "start_calls": [r.get("start_calls_per_100") for r in rows],
        "recall": [r["system_recall"] for r in rows],
        "start_recall": [r.get("start_recall") for r in rows],
        "last_ratio": round(last["teacher_calls_per_100"] / start, 3) if start else None,
        "min_recall": min(r["system_recall"] for r in rows if r["system_recall"] is not None),
        "last_by_reason": last.get("calls_by_reason", {}),
        "last_audit": [last.get(k) for k in ("audit_recall", "audit_low", "audit_high")],
        "builds": {
            "passed": outcomes.count("built"),
            "refused": len(outcomes) - outcomes.count("built"),
        },
        "releases": [r["release"] for r in rows],
        "engine": doc.get("engine"),  # None: a report from before the demo recorded it
        "refusals": [
            line
            for b in doc.get("builds", [])
            for s in b["steps"]
            for line in s.get("said", [])
            if line.startswith("refused")
        ],
    }


def meets(run: dict) -> bool:
    """The issue's target for one run: recall at least 0.95 in every round, and the last
    round's calls per 100 at most 12 and at most half of v0's on the same inputs."""
    last, start = run["calls"][-1], run["start_calls"][-1]
    return (
        run["min_recall"] >= MIN_RECALL
        and last <= MAX_LAST_CALLS
        and start is not None
        and last <= start / 2
    )


def engine_label(engine: dict | None) -> str:
    if not engine:
        return "not recorded"
    if "llama_cpp" in engine:
        return f"llama.cpp {engine['llama_cpp']} library {engine['library']}"
    return " ".join(f"{k} {v}" for k, v in sorted(engine.items()))


def targets(runs: list[dict]) -> list[dict]:
    """Per site: its runs' last rounds against v0's, how many meet the target, and the
    student builds they ran on (a site whose runs mix builds is not one experiment)."""
    out = []
    for site in sorted({site_of(r) for r in runs}):
        mine = [r for r in runs if site_of(r) == site]
        builds = sorted({engine_label(r.get("engine")) for r in mine})
        out.append(
            {
                "site": site,
                "runs": [Path(r["report"]).parent.name for r in mine],
                "last": [round(r["calls"][-1], 1) for r in mine],
                "v0_last": [
                    None if r["start_calls"][-1] is None else round(r["start_calls"][-1], 1)
                    for r in mine
                ],
                "ratio": [r["last_ratio"] for r in mine],
                "min_recall": [round(r["min_recall"], 3) for r in mine],
                "meets": sum(meets(r) for r in mine),
                "builds": builds,
            }
        )
    return out


def fmt(values: list) -> str:
    return " / ".join("-" if v is None else f"{v}" for v in values)


def show_targets(rows: list[dict]) -> str:
    lines = [
        "| site | runs | last round calls/100 | v0, same inputs | ratio | lowest recall | meet the target | student build |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in rows:
        mixed = " **(mixed builds)**" if len(t["builds"]) > 1 else ""
        lines.append(
            f"| {t['site']} | {len(t['runs'])} | {fmt(t['last'])} | {fmt(t['v0_last'])} | "
            f"{fmt(t['ratio'])} | {fmt(t['min_recall'])} | {t['meets']} of {len(t['runs'])} | "
            f"{'; '.join(t['builds'])}{mixed} |"
        )
    total = sum(len(t["runs"]) for t in rows)
    met = sum(t["meets"] for t in rows)
    ratios = sorted(r for t in rows for r in t["ratio"] if r is not None)
    if ratios:
        median = statistics.median(ratios)
        lines.append(
            f"\n{met} of {total} runs meet the target; the loop's effect in the last round: "
            f"median {median:.2f}x, {ratios[0]:.2f}x to {ratios[-1]:.2f}x"
        )
    return "\n".join(lines)


def show(runs: list[dict]) -> str:
    lines = []
    for r in runs:
        calls = ", ".join(f"{c:.1f}" for c in r["calls"])
        start = ", ".join("-" if c is None else f"{c:.1f}" for c in r["start_calls"])
        audit = r["last_audit"]
        est = "-" if audit[0] is None else f"{audit[0]:.2f} [{audit[1]:.2f}-{audit[2]:.2f}]"
        reasons = " ".join(f"{k} {v:.1f}" for k, v in r["last_by_reason"].items() if v) or "-"
        lines += [
            f"{r['command']}  ({r['minutes']} min)",
            f"  calls/100 by round: {calls}",
            f"  v0 on the same inputs: {start}",
            f"  last round: {r['calls'][-1]:.1f} vs {r['start_calls'][-1] or 0:.1f} "
            f"(the loop's effect {r['last_ratio']}x); lowest recall {r['min_recall']:.3f}; "
            f"calls by reason {reasons}; audit-estimated recall {est}",
            f"  builds: {r['builds']['passed']} passed, {r['builds']['refused']} refused; "
            f"releases by round {r['releases']}",
            f"  student build: {engine_label(r.get('engine'))}",
        ]
    return "\n".join(lines)


def site_of(run: dict) -> str:
    """The site a run played: the one whose scene file its command names (from any checkout),
    else the demo's."""
    named = [
        site
        for site, scenes in SITES.items()
        if scenes and str(scenes.relative_to(ROOT)) in run["command"]
    ]
    return named[0] if named else "demo"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({site_of(r) for r in runs})
    fig, axes = plt.subplots(1, len(sites), figsize=(6 * len(sites), 4), squeeze=False)
    for ax, site in zip(axes[0], sites, strict=True):
        for r in runs:
            if site_of(r) != site:
                continue
            x = range(len(r["calls"]))
            (line,) = ax.plot(x, r["calls"], "o-", label=Path(r["report"]).parent.name)
            ax.plot(x, [c or 0 for c in r["start_calls"]], "--", color=line.get_color(), alpha=0.6)
        ax.axhline(12, color="#c62828", linestyle=":", linewidth=1)
        ax.set_title(f"{site} site: the loop (solid) vs v0 on the same inputs (dashed)")
        ax.set_xlabel("round")
        ax.set_ylabel("teacher calls per 100 inputs")
        ax.set_ylim(0, 50)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", choices=sorted(SITES), action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--rounds", type=int, help="rounds per run (default: the site's all)")
    ap.add_argument("--backend", choices=["llamacpp", "embedded"], default="llamacpp")
    ap.add_argument("--answer", choices=["when_needed", "always"], default="when_needed")
    ap.add_argument("--summarize", nargs="*", type=Path, default=[], help="report.json files")
    args = ap.parse_args()
    reports = list(args.summarize)
    for site in args.site:
        for seed in args.seeds:
            reports.append(run_demo(site, seed, args.rounds, args.backend, args.answer))
    if not reports:
        ap.error("give --site (to run demos) or --summarize report.json ...")
    runs = [summary(p) for p in reports]
    sites = targets(runs)
    print(show(runs))
    print("\n" + show_targets(sites))
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"target": TARGET, "sites": sites, "runs": runs}
    (RESULTS / "flywheel.json").write_text(json.dumps(doc, indent=1))
    plot(runs, RESULTS / "flywheel.png")
    print(f"\nwrote {RESULTS / 'flywheel.json'} and {RESULTS / 'flywheel.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
