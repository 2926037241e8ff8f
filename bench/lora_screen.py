"""LoRA screen: does an adapter trained on generic scenes that the head never calibrates on
make a starting release (v0) whose head separates sites it never saw? A screen on the
replay (``bench/replay.py``), not a measurement: it changes no default and ships nothing.

    .venv/bin/python bench/lora_screen.py            # train (about 20 min on 2 cores), then screen
    .venv/bin/python bench/lora_screen.py --train-seed 1               # another adapter
    .venv/bin/python bench/lora_screen.py --train-seed 1 --patience 0  # no early stop
    .venv/bin/python bench/lora_screen.py --train-seed 2 --levers defaults no_self_labels

The adapter: ``teacher.train.lora.train_adapter`` with ``train.objective: answer+head`` (the
answer tokens plus a linear probe's loss on the states the head reads,
``teacher.train.probe``), today's other training settings, on the 279 generic scenes of
``bench/data/generic_more`` (none of them bundled, none from a site that plays here). The
bundled scenes, which fit and certify v0's head, are never trained on, so the head's
certificate rests on as many cases as without an adapter (a loop build's LoRA trains on part
of them and leaves the head fewer to certify on).

Both releases, the bundled v0 (``plain``) and v0's skill with the adapter (``lora``), are
read through the project's own feature path (``teacher.release.feature_cache.features``:
the embedded backend, the release's prompt and adapter, the head's layers). For each, a
v0 head is crossfitted and certified on the bundled scenes (once per ``--seeds`` seed):
its out-of-fold band on the bundled scenes and their AUC are what a teacher sees before any
site (``bundled (out of fold)`` in the table); then:

- ``v0``: that release alone on every input of each site: band calls per 100, hazards it
  passes, the worst round's band-only recall, false alerts per 100;
- ``loop``: ``bench.replay.replay`` with today's defaults (the adapter kept, the head refit
  every round): band calls per 100 in the last two rounds, hazards passed, rounds under
  recall 0.95.

The four screening sites only (the held-out farm and harbour choose nothing). The adapter
and features are cached under ``~/.cache/gemma-edge/replay/``. Prints a table and writes
bench/results/lora_screen.json (``lora_screen-train-seed<k>[-patience<n>].json`` for other
training settings, then ``-<lever>`` for each lever other than ``defaults`` and
``-must_gain`` for that gate).

Stop 46: the seed-0 adapter (256 steps, best eval loss 0.014) narrows v0's band 3-5x on all
four sites; the seed-1 adapter does not, neither stopped early at its best eval loss 0.58
(step 96 of 260) nor trained through all 260 steps (``--patience 0``, best 0.34 at step
192). Stop 47: the seed-2 adapter (stopped early, best eval loss 0.67 at step 93) narrows
it as seed 0's does, the seed-4 adapter by about 30 % and the seed-3 adapter (best eval loss
0.22) not at all, so the eval loss does not tell a good adapter from a bad one; the bundled
out-of-fold band does (mean of the 3 crossfit seeds: 2.6 and 3.0 per 100 for seeds 0 and 2,
6.7 for seed 4, 7.4-11.3 for seeds 3 and 1, 13.9 with no adapter). Read every training
seed's file. The loop on top of either good adapter passes more hazards than on the bundled
v0, with rounds under recall 0.95 on the factory, whatever the self-labels (``--levers
defaults no_self_labels self_label_weight_0.1 true_self_labels``) or the gate (``--gate
must_gain``). Stop 48: built and scored on llama.cpp (``bench/lora_v0.py``), the seed-0 and
seed-2 adapters' v0 pass 12 and 10 of the held-out harbour's 144 hazards: a narrow bundled
out-of-fold band does not make an adapter safe to ship.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from feature_screen import SCREENING, V0  # noqa: E402
from replay import (  # noqa: E402
    CACHE,
    LEVERS,
    SITES,
    band_share,
    certify,
    extra_labels,
    load_site,
    replay,
    write_result,
)

GENERIC = "bench/data/generic_more/scenes.jsonl"


def adapter_release(home: Path, seed: int, patience: int | None, data: str = GENERIC) -> Path:
    """v0's skill and head with an adapter trained on ``data`` (the generic scenes; cached)."""
    from shared.models import load_model
    from shared.release import build_files, load_release, write_release
    from shared.teacher_config import TeacherConfig
    from teacher.train.lora import fit_dataset, train_adapter

    folder = home / "release"
    if (folder / "adapter_model.safetensors").exists():
        return folder
    v0 = load_release(V0)
    cfg = TeacherConfig.model_validate(
        {
            "train": {
                "objective": "answer+head",
                "seed": seed,
                **({} if patience is None else {"early_stop_patience": patience}),
            },
            "home": str(home / "teacher"),
        }
    )
    dataset = fit_dataset(extra_labels(data), v0.skill, seed)
    print(f"training on {dataset.stats}", flush=True)
    model, tokenizer = load_model()
    trained = train_adapter(cfg, dataset, v0.skill, model, tokenizer, run_dir=home / "run")
    print(f"trained: {trained.report()}", flush=True)
    files = build_files(1, v0.skill, v0.head, v0.manifest.calibration, trained.adapter,
                        model=v0.manifest.model)  # fmt: skip
    write_release(folder, files)  # v0's head and thresholds ride along unused: only the
    return folder  # prompt and adapter make the features; the screen fits its own head


def site_features(release_dir: Path, path: Path, sites) -> dict[str, np.ndarray]:
    """The head's features of the bundled scenes and every site input under a release."""
    if path.exists():
        return dict(np.load(path))
    from shared.config import EmbeddedModelConfig
    from shared.embedded import EmbeddedBackend
    from shared.evaluation import bundled_labels, load_labeled
    from shared.release import load_release
    from shared.student import Student
    from teacher.release.feature_cache import features

    release = load_release(release_dir)
    layers = tuple(release.head.layers)
    backend = EmbeddedBackend(EmbeddedModelConfig())
    try:
        student = Student(backend, release, 64)
        out = {"bundled": features(student, bundled_labels(), "hidden", layers, "bundled")}
        for name in sites:
            out[name] = features(student, load_labeled(SITES[name]), "hidden", layers, name)
    finally:
        backend.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def screen(name: str, feats: dict, sites: dict, seeds: int, levers=("defaults",),
           gate: str = "not_worse") -> list[dict]:  # fmt: skip
    from shared.evaluation import bundled_labels
    from shared.head import auc
    from shared.release import load_release
    from shared.teacher_config import TeacherConfig
    from teacher.release.head_fit import crossfit

    bundled = bundled_labels()
    yb = np.array([c.safety for c in bundled])
    layers = tuple(load_release(V0).head.layers)
    v0s = []  # (head, thresholds) per seed: the same for every site
    oof_band, oof_auc = [], []  # what a teacher sees before any site: the bundled crossfit
    for seed in range(seeds):
        cfg = TeacherConfig.model_validate({"train": {"seed": seed}})
        head, oof = crossfit(cfg, feats["bundled"], bundled, "hidden", layers, None)
        cal = certify(oof, yb, cfg.policy)
        v0s.append((head, cal))
        oof_band.append(100 * band_share(oof, cal.lower, cal.upper))
        oof_auc.append(auc(oof, yb))
    rows = [{"release": name, "site": "bundled (out of fold)", "inputs": len(yb),
             "hazards": int(yb.sum()), "band_by_seed": [round(v, 1) for v in oof_band],
             "band": round(float(np.mean(oof_band)), 1),
             "auc": round(float(np.mean(oof_auc)), 4)}]  # fmt: skip
    print(f"| {name} | bundled, out of fold | {rows[0]['band']:.1f} (AUC {rows[0]['auc']:.4f}) "
          "| | | | | | |", flush=True)  # fmt: skip
    for s, site in sites.items():
        y = np.array([r["safety"] for r in site])
        rounds = np.array([r["round"] for r in site])
        hazards = np.bincount(rounds, weights=y)  # per round
        row = {"release": name, "site": s, "hazards": int(y.sum()), "inputs": len(y)}
        v0 = {"band": [], "passed": [], "worst_recall": [], "false_alerts": [], "lower": []}
        loops = {lv: {"last2": [], "passed": 0, "rounds_under_95": 0} for lv in levers}
        for seed, (head, cal) in enumerate(v0s):
            p = head.p_unsafe_many(feats[s])
            passed = p < cal.lower
            v0["band"].append(100 * band_share(p, cal.lower, cal.upper))
            v0["passed"].append(int((passed & y).sum()))
            missed = np.bincount(rounds, weights=passed & y, minlength=len(hazards))
            v0["worst_recall"].append(float(np.min(1 - missed / np.maximum(hazards, 1))))
            v0["false_alerts"].append(100 * float(((p >= cal.upper) & ~y).mean()))
            v0["lower"].append(float(cal.lower))
            for lv, loop in loops.items():
                run = replay(site, feats[s], bundled, feats["bundled"], head, cal, seed, gate,
                             LEVERS[lv])  # fmt: skip
                loop["last2"].append((run[-1]["calls"] + run[-2]["calls"]) / 2)
                loop["passed"] += sum(r["missed"] for r in run)
                loop["rounds_under_95"] += sum(
                    r["missed"] > 0.05 * hazards[i] for i, r in enumerate(run)
                )
        row["v0"] = {
            "band": round(float(np.mean(v0["band"])), 1),
            "band_by_seed": [round(v, 1) for v in v0["band"]],
            "passed": v0["passed"],
            "worst_round_recall": round(min(v0["worst_recall"]), 3),
            "false_alerts": round(float(np.mean(v0["false_alerts"])), 1),
            "lower_by_seed": [round(v, 3) for v in v0["lower"]],
        }
        for lv, loop in loops.items():
            row["loop" if lv == levers[0] else f"loop {lv}"] = {
                "lever": lv,
                "last2": round(float(np.mean(loop["last2"])), 1),
                "last2_by_seed": [round(float(v), 1) for v in loop["last2"]],
                "passed": int(loop["passed"]),
                "rounds_under_95": int(loop["rounds_under_95"]),
            }
        rows.append(row)
        for lv, loop in loops.items():
            first = lv == levers[0]
            print(f"| {name} | {s} | {row['v0']['band']:.1f} | {sum(v0['passed'])} of "
                  f"{seeds * row['hazards']} | {row['v0']['worst_round_recall']:.3f} | "
                  f"{row['v0']['false_alerts']:.1f} | {'' if first else lv + ': '}"
                  f"{np.mean(loop['last2']):.1f} | {loop['passed']} | "
                  f"{loop['rounds_under_95']} |", flush=True)  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds 0..N-1 of the head's crossfit and the loop (default 3)",
    )
    ap.add_argument(
        "--train-seed",
        type=int,
        default=0,
        help="the adapter's training seed (default 0: lora_screen.json; else "
        "lora_screen-train-seed<k>.json)",
    )
    ap.add_argument(
        "--patience",
        type=int,
        default=None,
        help="train.early_stop_patience for the adapter (default: today's; 0: off)",
    )
    ap.add_argument(
        "--levers",
        nargs="+",
        default=["defaults"],
        choices=sorted(LEVERS),
        metavar="LEVER",
        help="replay the loop under each of these bench/replay.py levers (default: defaults; "
        "the first one is the table's loop column, each other one a row of its own)",
    )
    ap.add_argument(
        "--gate",
        choices=("not_worse", "must_gain"),
        default="not_worse",
        help="the replay's gate (default not_worse: every candidate ships)",
    )
    args = ap.parse_args()
    t0 = time.time()
    sites = {s: load_site(SITES[s]) for s in SCREENING}
    key = hashlib.sha256((ROOT / GENERIC).read_bytes()).hexdigest()[:16]
    base = CACHE / f"lora-generic-{key}"  # the plain features, and the seed-0 adapter
    tag = "" if args.train_seed == 0 else f"-train-seed{args.train_seed}"
    tag += "" if args.patience is None else f"-patience{args.patience}"
    home = base / tag.strip("-") if tag else base
    lora_dir = adapter_release(home, args.train_seed, args.patience)
    print("| release | site | v0 band calls/100 | v0 hazards passed | v0 worst round recall "
          "(band only) | v0 false alerts/100 | loop band calls/100, last 2 rounds | loop "
          "hazards passed | loop rounds under 0.95 |")  # fmt: skip
    print("|---" * 9 + "|")
    rows = []
    for name, folder in (("plain", V0), ("lora", lora_dir)):
        feats = site_features(folder, (base if name == "plain" else home) / f"features-{name}.npz",
                              sites)  # fmt: skip
        rows += screen(name, feats, sites, args.seeds, tuple(args.levers), args.gate)
    tag += "".join(f"-{lv}" for lv in args.levers if lv != "defaults")
    tag += "" if args.gate == "not_worse" else f"-{args.gate}"
    out = f"lora_screen{tag}.json"
    write_result(out, {
        "command": "bench/lora_screen.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.time() - t0, 1), "trained_on": GENERIC,
        "train_seed": args.train_seed, "patience": args.patience, "levers": args.levers,
        "gate": args.gate, "rows": rows,
    })  # fmt: skip
    print(json.dumps({"adapter": str(lora_dir)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
