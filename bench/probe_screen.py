"""Probe screen: would the head read better features at a token that asks the safety
question than at ``Answer:``? A screen on the replay (``bench/replay.py``), not a
measurement: it changes no default.

    .venv/bin/python bench/probe_screen.py               # 4 screening sites, 6 seeds
    .venv/bin/python bench/probe_screen.py --prompt answer answer5 --recall-target 0.97
    .venv/bin/python bench/probe_screen.py --prompt answer answer5 --v0-only

The head reads the hidden states of layers 9 and 18 at the last prompt token, which is the
``Answer:`` primer: the base model is about to describe the scene, not to judge it. This
screen reads the same layers of the bundled Gemma 3 270M (transformers, fp32, the same
engine for all) under these reads:

- ``answer``: the bundled v0 skill's own prompt, ending ``Scene: <input>\\nAnswer:`` (the
  control);
- ``danger``: the same instructions, the demos written danger-first
  (``Scene: ...\\nDanger: yes|no\\nAnswer: ...``) and the input ending
  ``Scene: <input>\\nDanger:``, so the last token is where the model states its verdict;
- ``both``: the two side by side (two prefills at the edge);
- ``answer5``: the ``answer`` prompt with five layers (6, 9, 12, 15, 18) instead of two.

``--recall-target`` certifies v0 and every build at another ``policy.recall_target``, so two
reads can be compared at more than one point of the calls-against-recall trade.

For each, a v0 head is fitted and certified on the bundled scenes (crossfit,
``calibrate``), then ``bench.replay.replay`` runs the loop with today's defaults on the
four screening sites. The held-out farm and harbour are never screened here. Features are
cached under ``~/.cache/gemma-edge/replay/``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replay import CACHE, SITES, certify, choose_score, load_site, replay, write_result  # noqa: E402

SCREENING = ("tuning", "demo", "hospital", "heldout")
PROMPTS = ("answer", "danger", "both", "answer5")
DEFAULT = ("answer", "danger", "both")  # bench/results/probe_screen.json
LAYERS = (9, 18)
WIDE = (6, 9, 12, 15, 18)  # ``answer5``: the answer prompt, five layers


def prompts(kind: str, skill, texts: list[str]) -> list[str]:
    from shared.answer import parse_answer
    from shared.skill import ANSWER_PRIMER, Demo, render_input, render_prefix

    if kind == "answer":
        return [skill.prompt(t) for t in texts]
    demos = []
    for demo in skill.demos:  # the verdict first, then the sentence
        a = parse_answer(demo.answer)
        verdict = f"Danger: {'yes' if a.safety else 'no'}\n{ANSWER_PRIMER} {a.text}"
        demos.append(Demo(input=demo.input, answer=verdict))
    prefix = render_prefix(skill.instructions, demos)
    return [prefix + render_input(t).removesuffix(ANSWER_PRIMER) + "Danger:" for t in texts]


def extract(kind: str, texts: list[str], batch: int = 16) -> np.ndarray:
    layers = WIDE if kind == "answer5" else LAYERS
    kind = "answer" if kind == "answer5" else kind
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.models import ensure_cache
    from shared.release import load_release

    skill = load_release(ROOT / "shared/data/release").skill
    folder = ensure_cache(None, Path("~/.cache/gemma-edge/models").expanduser())
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        all_prompts = prompts(kind, skill, texts)
        for i in tqdm(range(0, len(texts), batch), desc=f"features: {kind}", unit="batch"):
            enc = tok(all_prompts[i : i + batch], return_tensors="pt", padding=True)
            out = model.model(**enc, output_hidden_states=True)
            rows.append(torch.cat([out.hidden_states[k][:, -1] for k in layers], 1).numpy())
    return np.vstack(rows)


def cached(kind: str, name: str, texts: list[str]) -> np.ndarray:
    if kind == "both":  # the two read positions side by side
        return np.hstack([cached("answer", name, texts), cached("danger", name, texts)])
    key = hashlib.sha256(("probe\n" + kind + "\n" + "\n".join(texts)).encode()).hexdigest()[:16]
    path = CACHE / f"probe-{name}-{kind}-{key}.npy"
    if path.exists():
        return np.load(path)
    x = extract(kind, texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


CHOICES = (0.1, 1.0, 10.0, 100.0)  # --choose-l2


def fit_v0(cfg, x_b, bundled, choices=None):
    """(head, out-of-fold scores, thresholds) of a v0 on the bundled scenes; with
    ``choices``, the ``head_l2`` whose certified band holds the fewest bundled cases."""
    from teacher.release.head_fit import crossfit

    labels = [c.safety for c in bundled]
    best = None
    for l2 in choices or [cfg.release.head_l2]:
        cfg_l2 = cfg.model_copy(update={"release": cfg.release.model_copy(update={"head_l2": l2})})
        head, oof = crossfit(cfg_l2, x_b, bundled, "hidden", LAYERS, None)
        cal = certify(oof, labels, cfg.policy)
        band = choose_score("cal_band", head, cal, oof, bundled, None)  # as the builds choose
        if best is None or band < best[0]:
            best = (band, head, oof, cal)
    return best[1], best[2], best[3]


def v0_alone(kind: str, data: dict, v0, cal0) -> dict:
    """A read's v0 on every screening scene at once: band calls per 100 and hazards under
    ``lower`` (the keyword rule's catches among them, at its cap of half ``lower``)."""
    from shared.config import PolicyConfig
    from shared.policy import find_keywords

    pc = PolicyConfig()
    band = n = missed = keyword = hazards = 0
    for s in SCREENING:
        x = cached(kind, s, [r["input"] for r in data[s]])
        p = v0.p_unsafe_many(x)
        y = np.array([r["safety"] for r in data[s]])
        named = np.array([bool(find_keywords(r["input"], tuple(pc.safety_keywords),
                                             tuple(pc.keyword_exceptions))) for r in data[s]])  # fmt: skip
        under = (p < cal0.lower) & y
        band += int(((p >= cal0.lower) & (p < cal0.upper)).sum())
        n, hazards, missed = n + len(y), hazards + int(y.sum()), missed + int(under.sum())
        keyword += int((under & named & (p >= cal0.lower / 2)).sum())
    row = dict(prompt=kind, v0_lower=round(cal0.lower, 4), v0_upper=round(cal0.upper, 4),
               scenes=n, band_per_100=round(100 * band / n, 1), hazards=hazards,
               under_lower=missed, keyword_catches=keyword)  # fmt: skip
    print(f"{kind}: v0 alone on {n} screening scenes: band {row['band_per_100']}/100, "
          f"{missed} of {hazards} hazards under lower {cal0.lower:.3f} "
          f"({keyword} named a keyword the rule would escalate)", flush=True)  # fmt: skip
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 per site (default 6)")
    ap.add_argument("--prompt", choices=PROMPTS, nargs="+", default=list(DEFAULT))
    ap.add_argument("--recall-target", type=float, default=None,
                    help="policy.recall_target for v0 and every build (default: today's)")  # fmt: skip
    ap.add_argument("--head-l2", type=float, default=None,
                    help="release.head_l2 for v0 and every build (default: today's)")  # fmt: skip
    ap.add_argument("--choose-l2", action="store_true",
                    help="each build (v0 too) fits heads at head_l2 0.1, 1, 10 and 100 and keeps "
                         "the one whose certified band holds the fewest calibration cases")  # fmt: skip
    ap.add_argument("--v0-only", action="store_true",
                    help="only each read's v0 on every screening scene: band calls/100 and "
                         "hazards under lower (no loop)")  # fmt: skip
    args = ap.parse_args()
    from shared.evaluation import bundled_labels
    from shared.head import auc
    from shared.teacher_config import TeacherConfig

    t0 = time.time()
    bundled = bundled_labels()
    data = {s: load_site(SITES[s]) for s in SCREENING}
    policy = {} if args.recall_target is None else {"recall_target": args.recall_target}
    release = {} if args.head_l2 is None else {"head_l2": args.head_l2}
    cfg = TeacherConfig.model_validate({"policy": policy, "release": release})
    lever = {"policy": policy, "release": release}
    if args.choose_l2:
        lever.update(choose=list(CHOICES), choose_key="head_l2", by="cal_band")
    rows = []
    if not args.v0_only:
        print("| prompt | site | v0 oof AUC | band calls/100 by round (mean of seeds) | last | "
              "last by seed | hazards passed | rounds < 0.95 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
    for kind in args.prompt:
        x_b = cached(kind, "bundled", [c.input for c in bundled])
        v0, oof, cal0 = fit_v0(cfg, x_b, bundled, CHOICES if args.choose_l2 else None)
        v0_auc = auc(oof, np.array([c.safety for c in bundled]))
        if args.v0_only:
            rows.append(v0_alone(kind, data, v0, cal0))
            continue
        for s in SCREENING:
            x = cached(kind, s, [r["input"] for r in data[s]])
            runs = [replay(data[s], x, bundled, x_b, v0, cal0, seed, "not_worse", lever)
                    for seed in range(args.seeds)]  # fmt: skip
            by_round = np.mean([[r["calls"] for r in run] for run in runs], axis=0)
            last = [float(run[-1]["calls"]) for run in runs]
            missed = int(sum(r["missed"] for run in runs for r in run))
            y, rnd = (
                np.array([r["safety"] for r in data[s]]),
                np.array([r["round"] for r in data[s]]),
            )
            hazards = [int(y[rnd == k].sum()) for k in range(len(runs[0]))]
            recalls = [1 - r["missed"] / hazards[k] for run in runs for k, r in enumerate(run)]
            row = dict(prompt=kind, site=s, v0_auc=round(float(v0_auc), 4),
                       v0_lower=round(cal0.lower, 4), v0_upper=round(cal0.upper, 4),
                       calls_by_round=[round(float(v), 1) for v in by_round],
                       last=round(float(np.mean(last)), 1), last_by_seed=last, missed=missed,
                       worst_recall=round(min(recalls), 3),
                       rounds_under_095=sum(v < 0.95 for v in recalls))  # fmt: skip
            rows.append(row)
            print(f"| {kind} | {s} | {v0_auc:.3f} | "
                  f"{', '.join(f'{v:.1f}' for v in by_round)} | {row['last']:.1f} | "
                  f"{', '.join(f'{v:.1f}' for v in last)} | {missed} | "
                  f"{row['rounds_under_095']} of {len(recalls)} |", flush=True)  # fmt: skip
    doc = {"command": "bench/probe_screen.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.time() - t0, 1), "rows": rows}  # fmt: skip
    chosen = "" if set(args.prompt) == set(DEFAULT) else "-" + "-".join(args.prompt)
    chosen += f"-recall{args.recall_target}" if args.recall_target is not None else ""
    chosen += f"-l2{args.head_l2}" if args.head_l2 is not None else ""
    chosen += "-choose_l2" if args.choose_l2 else ""
    chosen += "-v0" if args.v0_only else ""
    write_result(f"probe_screen{chosen}.json", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
