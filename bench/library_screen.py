"""Library screen: would a larger bundled library of long, site-style scenes from other
domains help the loop on a site it has never seen? A screen on the replay
(``bench/replay.py``), leave one site out; it changes no default.

    .venv/bin/python bench/library_screen.py                 # 4 screening sites, 3 seeds
    .venv/bin/python bench/library_screen.py --targets 0.95 0.98 --seeds 0

The bundled scenes (``shared/data/scenes.jsonl`` and ``dev_scenes.jsonl``, 300) are short,
about 14 words, one domain a line. The sites' scenes are about 26 words, a whole site per
file. Here the library is the three screening sites written as sites (the railway station
``tuning``, the hospital, the leisure centre ``heldout``; 360 scenes each), minus the site
being replayed; the factory (``demo``, the demo's own site) is replayed, never in a
library. For each site and recall target:

- a v0 head is fitted on the bundled scenes plus the library and certified on its
  out-of-fold scores (crossfit, ``calibrate`` at that ``policy.recall_target``);
- the last round as that v0 answers it with no loop (the starting release's band calls);
- ``bench.replay.replay`` runs the loop (the not-worse gate, today's defaults) from it,
  every build fitted and certified on the bundled scenes plus the library plus the site's
  reviews.

``today`` is the shipped v0 and the loop as it runs (the bundled scenes only, target
0.95). Reported per site: the starting release's band calls in the last round, the loop's,
its false alerts (all per 100), the hazards the band passed in all rounds and the worst
round's band recall (the demo's keyword rule and audits catch some of what the band
passes). And the 160 held-out scenes of ``bench/release.py`` (short, hand-written, never
trained on) under v0 heads fitted on the bundled scenes alone and with all three library
sites.

Stop 40 shipped such a library (all three sites, target 0.98) for runs of `gemma-edge demo`
and took it back: on the harbour, a held-out site, the library v0 missed 2 of round 0's 24
hazards (recall 0.917; ``bench/results/flywheel_screens/quay-library-seed0/``).

The held-out sites (farm, harbour) are never screened here: they choose nothing. Features
come from the bundled llama.cpp v0's student and are cached as the replay's. Prints a table
and writes bench/results/library_screen.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from replay import RESULTS, ROOT, SITES, certify, load_site, replay, v0_features

LIBRARY = ("tuning", "hospital", "heldout")  # the sites that may join a library
SCREEN = ("tuning", "demo", "hospital", "heldout")
HELDOUT_160 = ROOT / "bench/data/heldout_scenes.jsonl"


def fit_v0(cases, x, kind, layers, target: float):
    """A v0 head on ``cases`` (crossfit) and its thresholds at ``target`` recall."""
    from shared.teacher_config import TeacherConfig
    from teacher.release.head_fit import crossfit

    cfg = TeacherConfig.model_validate({"train": {"seed": 0}, "policy": {"recall_target": target}})
    head, oof = crossfit(cfg, x, cases, kind, tuple(layers), None)
    return head, certify(oof, [c.safety for c in cases], cfg.policy)


def answer(head, cal, x, y) -> dict:
    """Band calls and false alerts per 100, hazards passed, of ``x`` under (head, cal)."""
    p = head.p_unsafe_many(x)
    band, alert, passed = (p >= cal.lower) & (p < cal.upper), p >= cal.upper, p < cal.lower
    return dict(calls=round(100 * band.mean(), 1), false_alerts=round(100 * (alert & ~y).mean(), 1),
                missed=int((passed & y).sum()), lower=round(float(cal.lower), 4),
                upper=round(float(cal.upper), 4))  # fmt: skip


def library_cases(data: dict, names) -> list:
    from shared.evaluation import LabeledCase

    return [
        LabeledCase(id=r["id"], input=r["input"], safety=bool(r["safety"]))
        for name in names
        for r in data[name]
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.97, 0.98])
    args = ap.parse_args()
    from shared.evaluation import load_labeled

    t0 = time.time()
    data = {s: load_site(SITES[s]) for s in SCREEN}
    held = load_labeled(HELDOUT_160)
    sets = {s: [r["input"] for r in data[s]] for s in SCREEN}
    v0 = v0_features({**sets, "heldout160": [c.input for c in held]})
    release, kind, layers, bundled, x_bundled = (v0.release, v0.kind, v0.layers, v0.bundled,
                                                 v0.x_bundled)  # fmt: skip
    feats, x_held = v0.x, v0.x["heldout160"]
    cal0 = release.manifest.calibration

    rows, runs = [], []
    print("| site | variant | v0, last round | loop, last round (seeds) | false alerts | "
          "hazards passed | worst round's band recall |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for s in SCREEN:
        y = np.array([r["safety"] for r in data[s]])
        rounds = np.array([r["round"] for r in data[s]])
        last = rounds == rounds.max()
        hazards = [int(y[rounds == r].sum()) for r in range(int(rounds.max()) + 1)]
        lib = [t for t in LIBRARY if t != s]
        variants = [("today", None)] + [(f"library, target {t:g}", t) for t in args.targets]
        for name, target in variants:
            if target is None:
                head, cal, cases, x_cases = release.head, cal0, bundled, x_bundled
            else:
                cases = bundled + library_cases(data, lib)
                x_cases = np.vstack([x_bundled, *(feats[t] for t in lib)])
                head, cal = fit_v0(cases, x_cases, kind, layers, target)
            start = answer(head, cal, feats[s][last], y[last])
            lever = {} if target is None else {"policy": {"recall_target": target}}
            loops = [replay(data[s], feats[s], cases, x_cases, head, cal, seed, "not_worse", lever)
                     for seed in args.seeds]  # fmt: skip
            worst = min(
                1 - r["missed"] / h for rr in loops for r, h in zip(rr, hazards, strict=True)
            )
            row = dict(site=s, variant=name, library=lib if target else [], target=target or 0.95,
                       start_last=start, loop_last=[rr[-1]["calls"] for rr in loops],
                       false_alerts_last=float(np.mean([rr[-1]["false_alerts"] for rr in loops])),
                       passed=sum(r["missed"] for rr in loops for r in rr),
                       worst_band_recall=round(worst, 3))  # fmt: skip
            rows.append(row)
            runs += [dict(site=s, variant=name, seed=seed, rounds=rr)
                     for seed, rr in zip(args.seeds, loops, strict=True)]  # fmt: skip
            print(f"| {s} | {name} | {start['calls']:.1f} | {np.mean(row['loop_last']):.1f} "
                  f"({', '.join(map(str, row['loop_last']))}) | {row['false_alerts_last']:.1f} | "
                  f"{row['passed']} | {worst:.3f} |", flush=True)  # fmt: skip

    print("\nthe 160 held-out scenes (bench/release.py's), band only, no loop:")
    print("| v0 fitted on | target | band calls | false alerts | hazards passed (of 80) |")
    print("|---|---|---|---|---|")
    y_held = np.array([c.safety for c in held])
    lib_all = library_cases(data, LIBRARY)
    x_lib = np.vstack([feats[t] for t in LIBRARY])
    held_rows = [dict(fit="shipped v0", target=0.95, **answer(release.head, cal0, x_held, y_held))]
    for target in args.targets:
        for fit, cases, x_cases in (("bundled", bundled, x_bundled),
                                    ("bundled + library", bundled + lib_all,
                                     np.vstack([x_bundled, x_lib]))):  # fmt: skip
            head, cal = fit_v0(cases, x_cases, kind, layers, target)
            held_rows.append(dict(fit=fit, target=target, **answer(head, cal, x_held, y_held)))
    for r in held_rows:
        print(f"| {r['fit']} | {r['target']:g} | {r['calls']:.1f} | {r['false_alerts']:.1f} | "
              f"{r['missed']} |")  # fmt: skip
    doc = {"command": "bench/library_screen.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.time() - t0, 1), "sites": rows, "heldout_160": held_rows,
           "runs": runs}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "library_screen.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {RESULTS / 'library_screen.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
