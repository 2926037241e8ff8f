"""Replay: the head-and-threshold part of the loop on cached features, to screen a setting
in minutes (under a minute a site and seed) before a `gemma-edge demo` run measures it.

    .venv/bin/python bench/replay.py                      # the tuning and factory sites, 3 seeds
    .venv/bin/python bench/replay.py --site farm --site quay  # the held-out sites: measure only
    .venv/bin/python bench/replay.py --levers --site tuning --site demo --site hospital

Features come once from the bundled llama.cpp v0's own ``Student`` (its prompt, the head's
layers, ``teacher.release.feature_cache.features``) and are cached under
``~/.cache/gemma-edge/replay/``. Each round the running head and thresholds sort the round's
inputs into alert, band (escalated: the teacher reviews it) and pass; the band's cases join
the reviews with their true labels except a hashed share (``train.eval_fraction``, as
``teacher.data.dataset.site_members``) that joins the gate's frozen split instead; the
alerted and passed inputs join as self-labels (``release.self_labels: all``). The next head
and thresholds come from the project's own ``crossfit`` and ``calibrate`` on the bundled
scenes plus the reviews, as ``teacher.release.head_fit`` does with no LoRA. Gates compared:

- ``not_worse``: every candidate ships (today's gate refuses only a candidate worse beyond
  noise, which no replayed build was in the demo runs);
- ``must_gain``: the candidate ships only with fewer band calls than the running release on
  the frozen split (the bundled frozen share plus the site's) or on the site's share.

With ``--levers``: the not-worse gate with each of ``LEVERS`` (against false alerts that
come back as "unsafe" self-labels) instead, and no oracle.

And ``oracle`` (a bound, not a gate): one head fitted on every earlier round's scenes with
their true labels, the last round answered with it: what the features allow where every
input is labelled; and the same head with its thresholds certified on the site cases the
loop had reviewed by then (and the bundled ones): how much of the gap is the calibration's.

Left out (the demo has them): the keyword rule and its floor and memory (except under the
``kw_*`` levers, with v0's floor), audits, format breaks, the sentence, the keyword sample in
the calibration. So band calls only: a screen, not a measurement. Prints a table and writes bench/results/replay.json (replay-<sites>.json
with --site).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
CACHE = Path("~/.cache/gemma-edge/replay").expanduser()
SITES = {
    "demo": ROOT / "shared/data/demo/scenes.jsonl",
    "tuning": ROOT / "bench/data/tuning_site/scenes.jsonl",
    "heldout": ROOT / "bench/data/heldout_site/scenes.jsonl",
    "hospital": ROOT / "bench/data/hospital_site/scenes.jsonl",
    "farm": ROOT / "bench/data/farm_site/scenes.jsonl",
    "quay": ROOT / "bench/data/quay_site/scenes.jsonl",
}
GATES = ("not_worse", "must_gain")


def frozen_share(cases, fraction: float, seed: int) -> np.ndarray:
    """True for the cases in the gate's frozen share (``teacher.data.dataset.frozen_member``):
    never fitted or calibrated on."""
    from teacher.data.dataset import frozen_member

    return np.array([frozen_member(c.input, fraction, seed) for c in cases], dtype=bool)


def logit(p):
    """log(p / (1 - p)), clipped away from 0 and 1 (the fallback thresholds are 0 and 1)."""
    q = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(q / (1 - q))


def write_result(name: str, doc: dict) -> Path:
    """A benchmark's JSON under bench/results/, said on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return path


def load_site(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def cached_features(name: str, texts: list[str], student, kind, layers) -> np.ndarray:
    """The head's features of ``texts`` from the v0 student, computed once per text set."""
    from shared.evaluation import LabeledCase
    from teacher.release.feature_cache import features

    key = hashlib.sha256("\n".join([student.backend.name, str(layers), *texts]).encode())
    stem = Path(name).parent.name or name  # a scene file's set is named by its folder
    path = CACHE / f"{stem}-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    cases = [LabeledCase(id=str(i), input=t, safety=False) for i, t in enumerate(texts)]
    x = features(student, cases, kind, layers, f"features: {name}")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x


# Levers (``--levers``), each with the not-worse gate. Against false alerts turning into
# "unsafe" self-labels: self-label an alert only when p(unsafe) is at least ``alert_min``;
# the teacher reviews a random ``audit_alerts`` share of alerts (each a call);
# ``release.self_labels: passed`` (alerts never self-label); a settled input weighs
# ``release.self_label_weight`` in the fit. To give the fit more of a site's labels early,
# the teacher reviews, in the first ``explore_rounds`` rounds, a random ``explore`` share of
# every input, or the ``aimed`` share nearest the band (each a call). The head's own
# settings: ``release.head_l2`` (0.1; 0.03 won this table on the three tuning sites at stop
# 36 but cost calls in the factory demo, so 0.1 stayed), ``release.folds``. ``true_self_labels`` is a diagnostic, not a lever:
# every settled input self-labels with its true label (what the edges' mistakes cost).
# Stop 37: ``train.eval_fraction`` (the frozen share of reviewed cases, never trained on);
# ``choose``: each build fits one head per self-label weight and keeps the one with the
# lowest ``by`` score (``choose_score``). Neither moved any site beyond noise.
# Stop 41 (6 seeds, last round's band calls/100, mean over seeds, against defaults 8.9 /
# 11.9 / 16.9 / 9.0 on tuning / hospital / leisure / factory; bench/results/replay-levers-
# tuning-hospital-heldout-demo-*.json): ``knn3_*`` drop (or flip) a self-label whose 3
# nearest reviewed site cases all carry the other label: 9.7 / 15.6 / 11.7 / 7.3, flips
# cost recall; ``traffic_gate``: a candidate ships only if it escalates no more of a hashed,
# never-trained share of the site's traffic than the running release: 10.6 / 11.4 / 15.5 /
# 9.0; ``repeats_3``: three crossfits with other fold draws, heads and out-of-fold scores
# averaged: 8.3 / 9.4 / 16.9 / 8.3 (steadier, within noise); ``memory*``: a case memory at
# the edge, a band input passes when its ``memory`` nearest reviewed site cases (cosine on
# standardised features) are all safe at similarity >= ``sim``: 3.6 / 0.5 / 9.8 / 9.2 at
# k 2, sim 0.6, the largest cut found, but rounds under recall 0.95 on the hospital (3 of
# 36) and the leisure centre (1); ``*_cert`` keeps the memory only where the thresholds
# certified with the leave-one-out cleared reviews counted as passed need fewer band
# calls: 6.4 / 6.4 / 11.1 / 9.0, still 3 hospital rounds under 0.95, because the mixed
# calibration (bundled and site cases) dilutes the memory's misses; ``*_blockers`` adds the
# settled alerts (as the edge labelled them) to the memory, so a band input next to an alert
# is not cleared: 8.9 / 11.7 / 17.5 / 9.1, the defaults' calls and misses. The memory's cut
# came from passing lookalikes that sit next to alerted inputs. Band calls only.
# Stop 42, the keyword rule (``keywords``: keyword inputs the head passes at or above v0's
# floor are calls too, and join the reviews; ``kw_calls`` per round): ``kw_jaccard`` (today's
# word memory) clears nothing on these sites, the same as ``kw_none``: last-round keyword
# calls 4.2 / 5.6 / 2.2 / 2.1; ``kw_feat*`` clear by the nearest reviewed cases of the keyword
# in standardised features (settled alerts as hazards): at k 1, cosine 0.6, 3.1 / 3.9 / 0.8 /
# 1.2 with no keyword hazard cleared (k 2-3 cut less). Built as ``release.keyword_sketches``,
# it cleared nothing in the railway station's demo (flywheel_screens/README.md): off.
# Stop 44, a diagnostic, not a lever to ship: ``recall_delta_*`` certifies ``lower`` with a
# looser recall guarantee (1 - delta; 0.1 by default): last-round band 6.7 / 12.8 / 19.4 / 7.5
# (railway station / hospital / leisure centre / factory, 3 seeds) falls to 2.2 / 5.6 / 11.7 /
# 4.6 at 0.3, but hazards passed rise from 17 to 34 and a round passes 2 on the railway
# station and the factory: the band is the price of the certificate, set by the few hardest
# calibration hazards.
# Stop 45: ``more_generic`` adds bench/data/generic_more/ (279 generic scenes, 141 hazards,
# written for this screen; no farm, harbour, swimming pool, hospital, railway or factory) to
# the bundled cases of every build after v0; ``more_generic_v0`` rebuilds v0 from them too.
# Twice the calibration hazards did not narrow the band for good: last round 6.7 / 13.9 / 11.7 /
# 10.8 against 6.7 / 12.8 / 19.4 / 7.5 (railway station / hospital / leisure centre / factory,
# 3 seeds), hazards passed 1 -> 8 and 13 -> 17 on the railway station and the factory; with
# v0 rebuilt, 4.5 / 8.9 / 9.5 / 9.6 but 6 / 7 / 0 / 17 passed against 1 / 2 / 1 / 13. v0's
# ``lower`` moved from 0.08-0.26 to 0.15-0.32 (seeds 0-2): the new hazards have a low tail of
# their own (2 % of all hazards under 0.15-0.27 out of fold), so ``lower`` is a real 2 %
# quantile of the hazards, not two outliers.
LEVERS = {
    "defaults": {},
    "alert_min_0.9": {"alert_min": 0.9},
    "alert_min_0.97": {"alert_min": 0.97},
    "audit_alerts_0.1": {"audit_alerts": 0.1},
    "self_labels_passed": {"alert_min": 2.0},
    "self_label_weight_0.3": {"release": {"self_label_weight": 0.3}},
    "self_label_weight_0.1": {"release": {"self_label_weight": 0.1}},
    "explore_0.2_rounds_0_1": {"explore": 0.2, "explore_rounds": 2},
    "explore_0.1_rounds_0_2": {"explore": 0.1, "explore_rounds": 3},
    "aimed_0.1_rounds_0_2": {"aimed": 0.1, "explore_rounds": 3},
    "true_self_labels": {"true_self_labels": True},
    "no_self_labels": {"no_self_labels": True},
    "audits": {"audits": True},
    "head_l2_0.003": {"release": {"head_l2": 0.003}},
    "head_l2_0.01": {"release": {"head_l2": 0.01}},
    "head_l2_0.03": {"release": {"head_l2": 0.03}},
    "head_l2_0.1": {"release": {"head_l2": 0.1}},
    "head_l2_0.3": {"release": {"head_l2": 0.3}},
    "head_l2_1": {"release": {"head_l2": 1.0}},
    "folds_10": {"release": {"folds": 10}},
    "head_l2_0.03_explore_0.1": {"release": {"head_l2": 0.03}, "explore": 0.1, "explore_rounds": 3},
    "head_l2_0.03_self_label_weight_0.3": {"release": {"head_l2": 0.03, "self_label_weight": 0.3}},
    "head_l2_0.03_folds_10": {"release": {"head_l2": 0.03, "folds": 10}},
    "eval_fraction_0.1": {"train": {"eval_fraction": 0.1}},
    "eval_fraction_0.3": {"train": {"eval_fraction": 0.3}},
    "choose_weight_site_loss": {"choose": [1.0, 0.3, 0.1], "by": "site_loss"},
    "choose_weight_traffic_band": {"choose": [1.0, 0.3, 0.1], "by": "traffic_band"},
    "knn3_drop": {"knn": 3},
    "knn3_flip": {"knn": 3, "flip": True},
    "knn3_both": {"knn": 3, "which": "both"},
    "traffic_gate": {"traffic_gate": True},
    "traffic_gate_recent": {"traffic_gate": True, "window": 24},
    "repeats_3": {"repeats": 3},
    "choose_l2_cal_band": {
        "choose": [0.1, 1.0, 10.0, 100.0],
        "choose_key": "head_l2",
        "by": "cal_band",
    },
    "memory2_0.6": {"memory": 2, "sim": 0.6},
    "memory2_0.7": {"memory": 2, "sim": 0.7},
    "memory3_0.6": {"memory": 3, "sim": 0.6},
    "memory3_0.65": {"memory": 3, "sim": 0.65},
    "memory5_0.6": {"memory": 5, "sim": 0.6},
    "memory2_0.6_low": {"memory": 2, "sim": 0.6, "low_half": True},
    "memory2_0.6_cert": {"memory": 2, "sim": 0.6, "certify_memory": True},
    "memory3_0.6_cert": {"memory": 3, "sim": 0.6, "certify_memory": True},
    "memory2_0.6_blockers": {"memory": 2, "sim": 0.6, "blockers": True},
    "memory3_0.6_blockers": {"memory": 3, "sim": 0.6, "blockers": True},
    "kw_jaccard": {"keywords": "jaccard"},
    "kw_none": {"keywords": "none"},
    "kw_feat2_0.5": {"keywords": "feat", "kw_k": 2, "kw_sim": 0.5},
    "kw_feat2_0.6": {"keywords": "feat", "kw_k": 2, "kw_sim": 0.6},
    "kw_feat3_0.5": {"keywords": "feat", "kw_k": 3, "kw_sim": 0.5},
    "kw_feat1_0.6": {"keywords": "feat", "kw_k": 1, "kw_sim": 0.6},
    "kw_margin_0.5": {"keywords": "none", "kw_margin": 0.5},
    "kw_margin_0.75": {"keywords": "none", "kw_margin": 0.75},
    "kw_margin_1": {"keywords": "none", "kw_margin": 1.0},
    "recall_target_0.97": {"policy": {"recall_target": 0.97}},
    "recall_delta_0.3": {"policy": {"recall_delta": 0.3}},
    "recall_delta_0.5": {"policy": {"recall_delta": 0.5}},
    "more_generic": {"labels": "bench/data/generic_more/scenes.jsonl"},
    "more_generic_v0": {"labels": "bench/data/generic_more/scenes.jsonl", "rebuild_v0": True},
}


def replay(site: list[dict], x: np.ndarray, bundled, x_bundled, v0, cal0, seed: int, gate: str,
           lever: dict | None = None, state: dict | None = None):  # fmt: skip
    """Per round: calls per 100 (the band's, plus audited alerts under a lever), hazards
    passed, false alerts per 100, hazards among the calls per 100, the thresholds, the
    release. ``state`` gets ``reviewed``: the site's
    reviewed cases (indices) before the last round."""
    from shared.evaluation import LabeledCase
    from shared.policy import audit_probability
    from shared.teacher_config import TeacherConfig
    from teacher.data.dataset import frozen_member
    from teacher.release.head_fit import crossfit

    lever = lever or {}
    cfg = TeacherConfig.model_validate({"train": {"seed": seed, **lever.get("train", {})},
                                        "release": lever.get("release", {}),
                                        "policy": lever.get("policy", {})})  # fmt: skip
    frac = cfg.train.eval_fraction
    y = np.array([r["safety"] for r in site])
    rounds = np.array([r["round"] for r in site])
    frozen_b = frozen_share(bundled, frac, seed)
    fit_b = [c for c, f in zip(bundled, frozen_b, strict=True) if not f]
    x_fit_b = x_bundled[~frozen_b]
    head, lower, upper, version = v0, cal0.lower, cal0.upper, 0
    reviewed, frozen_site, selfl, out, watch = [], [], [], [], []

    def band_rate(h, lo, up, xs):
        return band_share(h.p_unsafe_many(xs), lo, up)

    if lever.get("keywords"):
        from shared.policy import find_keywords

        kws, exc = tuple(cfg.policy.safety_keywords), tuple(cfg.policy.keyword_exceptions)
        matched = [find_keywords(r["input"], kws, exc) for r in site]
        kw_lower = cal0.keyword_lower  # v0's floor, kept: the replay does not certify one
    rng = np.random.default_rng(seed)
    mem_on = not lever.get("certify_memory")  # certified: off until a build certifies it
    for r in range(int(rounds.max()) + 1):
        if state is not None:
            state["reviewed"] = list(reviewed)
        idx = np.where(rounds == r)[0]
        p = head.p_unsafe_many(x[idx])
        band, alert, passed = (p >= lower) & (p < upper), p >= upper, p < lower
        if lever.get("memory") and reviewed and mem_on:  # band inputs near reviewed safe cases pass
            mem_i, mem_y = list(reviewed), list(y[reviewed])
            if lever.get("blockers"):  # the settled alerts, as the edge labelled them
                alerts = [i for i, lab in selfl if lab]
                mem_i, mem_y = mem_i + alerts, mem_y + [True] * len(alerts)
            near_safe = memory_clears(x[idx], x[mem_i], np.array(mem_y), x_bundled, lever)
            if lever.get("low_half"):  # only the band's lower half
                near_safe &= p < (lower + upper) / 2
            passed = passed | (band & near_safe)
            band = band & ~near_safe
        kw_call, kw_cleared, kw_under = np.zeros(len(idx), dtype=bool), [], []
        if lever.get("keywords"):  # the keyword rule on inputs the head passes
            floor = lower * lever["kw_margin"] if "kw_margin" in lever else kw_lower
            named = passed & np.array([bool(matched[i]) for i in idx]) & (p >= floor)
            clear = keyword_clears(idx, named, matched, reviewed, selfl, site, x, y, x_bundled,
                                   lever, kws)  # fmt: skip
            kw_call = named & ~clear
            kw_cleared = [site[i]["id"] for i in idx[clear & y[idx]]]  # hazards it let pass
            under = passed & np.array([bool(matched[i]) for i in idx]) & (p < floor) & y[idx]
            kw_under = [site[i]["id"] for i in idx[under]]  # keyword hazards under the floor
            passed = passed & ~kw_call
        band_only = band.copy()
        band = band | kw_call
        band |= alert & (rng.random(len(idx)) < lever.get("audit_alerts", 0.0))
        if lever.get("audits"):  # the edge's own audit draw on passed inputs (shared.policy)
            chance = [audit_probability(float(q), lower, cfg.policy.audit_every) for q in p]
            band |= passed & (rng.random(len(idx)) < np.array(chance))
        if r < lever.get("explore_rounds", 0):  # early rounds: a random share of all inputs
            band |= rng.random(len(idx)) < lever.get("explore", 0.0)
            if lever.get("aimed"):  # the share of inputs nearest the band, in log-odds
                z, lo, up = logit(p), logit(lower), logit(upper)
                gap = np.where(passed, lo - z, np.where(alert, z - up, 0.0))
                n_aimed = int(round(lever["aimed"] * len(idx)))
                band[[j for j in np.argsort(gap) if not band[j]][:n_aimed]] = True
        out.append(dict(calls=round(100 * band.mean(), 1), missed=int((passed & y[idx]).sum()),
                        false_alerts=round(100 * (alert & ~y[idx]).mean(), 1),
                        band_hazards=round(100 * (band & y[idx]).mean(), 1),
                        band_calls=round(100 * band_only.mean(), 1),
                        kw_calls=round(100 * kw_call.mean(), 1), kw_cleared_hazards=kw_cleared,
                        kw_under_floor=kw_under,
                        lower=round(float(lower), 4), upper=round(float(upper), 4),
                        release=version))  # fmt: skip
        for i, b, a, pi in zip(idx, band, alert, p, strict=True):
            if lever.get("traffic_gate") and frozen_member(site[i]["input"], frac, seed):
                watch.append(i)  # the gate's share of the site's traffic: never trained on
                if b:
                    frozen_site.append(i)
                continue
            if b:
                held = frozen_member(site[i]["input"], frac, seed)
                (frozen_site if held else reviewed).append(i)
            elif lever.get("no_self_labels"):
                continue  # the head refits on the bundled scenes and the reviews alone
            elif not a or pi >= lever.get("alert_min", 0.0):
                selfl.append(
                    (i, bool(y[i]) if lever.get("true_self_labels") else bool(a))
                )  # settled by the edge: alerted -> unsafe, passed -> safe
        fit_selfl = selfl
        if lever.get("knn") and reviewed and selfl:
            fit_selfl = knn_filter(selfl, reviewed, x, y, x_bundled, lever)
        cases = fit_b + [LabeledCase(id=site[i]["id"], input=site[i]["input"],
                                     safety=bool(y[i]), site="site") for i in reviewed]  # fmt: skip
        xs = np.vstack([x_fit_b, x[reviewed]]) if reviewed else x_fit_b
        extra = (x[[i for i, _ in fit_selfl]], [lab for _, lab in fit_selfl]) if fit_selfl else None
        key = lever.get("choose_key", "self_label_weight")
        weights = lever.get("choose") or [getattr(cfg.release, key)]  # one fit, or a pick
        best = None
        for w in weights:
            cfg_w = cfg.model_copy(update={"release": cfg.release.model_copy(
                update={key: w})})  # fmt: skip
            c_w, oof_w = crossfit(cfg_w, xs, cases, v0.kind, tuple(v0.layers), None, extra)
            if lever.get("repeats"):  # repeated crossfit: other fold draws, scores averaged
                from shared.head import average_heads

                hs, oofs = [c_w], [oof_w]
                for rep in range(1, int(lever["repeats"])):
                    cfg_r = cfg_w.model_copy(update={"train": cfg_w.train.model_copy(
                        update={"seed": seed + 1000 * rep})})  # fmt: skip
                    h_r, o_r = crossfit(cfg_r, xs, cases, v0.kind, tuple(v0.layers), None, extra)
                    hs.append(h_r)
                    oofs.append(o_r)
                c_w, oof_w = average_heads(hs, dict(c_w.info)), np.mean(oofs, axis=0)
            cal_w = certify(oof_w, [c.safety for c in cases], cfg.policy)
            score = (
                choose_score(lever["by"], c_w, cal_w, oof_w, cases, x[idx])
                if len(weights) > 1
                else 0.0
            )
            if best is None or score < best[0]:
                best = (score, c_w, cal_w, w, oof_w)
        _, cand, cal, chosen_w, oof = best
        if lever.get("certify_memory") and len(reviewed) > int(lever["memory"]):
            mem_on, cal = certify_memory(cal, oof, cases, reviewed, x, y, x_bundled, cfg.policy,
                                         lever)  # fmt: skip
            out[-1]["memory_next"] = mem_on
        if lever.get("choose"):  # the weight the site's data picked for the next round
            out[-1]["weight"] = chosen_w
        if lever.get("traffic_gate") and watch:
            xw = x[watch[-int(lever.get("window", 10**6)) :]]
            if band_rate(cand, cal.lower, cal.upper, xw) > band_rate(head, lower, upper, xw):
                continue
        if gate == "must_gain":
            frozen_x = np.vstack([x_bundled[frozen_b], x[frozen_site]])
            gains = band_rate(cand, cal.lower, cal.upper, frozen_x) < band_rate(
                head, lower, upper, frozen_x
            )
            if frozen_site:
                xs_site = x[frozen_site]
                gains |= band_rate(cand, cal.lower, cal.upper, xs_site) < band_rate(
                    head, lower, upper, xs_site
                )
            if not gains:
                continue
        head, lower, upper, version = cand, cal.lower, cal.upper, version + 1
    return out


def certify_memory(cal, oof, cases, reviewed, x, y, x_bundled, policy, lever):
    """(memory on, thresholds): the thresholds certified again with each reviewed site case
    that the memory of the *other* reviewed cases clears (leave-one-out) and the band holds
    counted as passed; the memory is kept only if that certifies and needs fewer band calls
    on the calibration cases."""
    scores = np.array(oof, dtype=float)
    labels = np.array([c.safety for c in cases])
    n_r = len(reviewed)
    z = unit_rows(x[reviewed], x_bundled)
    sims = z @ z.T
    np.fill_diagonal(sims, -np.inf)  # a case is never its own neighbour
    cleared = nearest_all_safe(sims, y[reviewed], lever)
    site_scores = scores[-n_r:]
    in_band = (site_scores >= cal.lower) & (site_scores < cal.upper)
    mod = scores.copy()
    mod[-n_r:][cleared & (site_scores < cal.upper)] = 0.0
    cal_m = certify(mod, labels, policy)
    if not cal_m.guaranteed:
        return False, cal
    fewer = band_share(mod, cal_m.lower, cal_m.upper) <= band_share(scores, cal.lower, cal.upper)
    if (cleared & in_band).any() and fewer:
        return True, cal_m
    return False, cal


def band_share(p, lower, upper) -> float:
    """The share of scores ``p`` in the band [lower, upper)."""
    p = np.asarray(p)
    return float(((p >= lower) & (p < upper)).mean())


def unit_rows(a, x_bundled):
    """Rows of ``a`` standardised by the bundled scenes' features, then of unit length, so
    that a dot product is a cosine similarity."""
    z = (a - x_bundled.mean(0)) / (x_bundled.std(0) + 1e-6)
    return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-9)


def nearest_all_safe(sims, y_ref, lever):
    """For each row of ``sims`` (query x reference), whether its ``memory`` nearest
    references are all safe and all at similarity >= ``sim``."""
    k = int(lever["memory"])
    if len(y_ref) < k:
        return np.zeros(len(sims), dtype=bool)
    top = np.argsort(-sims, axis=1)[:, :k]
    near = np.take_along_axis(sims, top, axis=1) >= lever.get("sim", 0.5)
    return (near & ~y_ref[top]).all(axis=1)


def memory_clears(xq, xr, yr, x_bundled, lever):
    """Which query inputs have their ``memory`` nearest reviewed site cases (cosine on
    standardised features) all safe and all at similarity >= ``sim``."""
    return nearest_all_safe(unit_rows(xq, x_bundled) @ unit_rows(xr, x_bundled).T, yr, lever)


def keyword_clears(idx, named, matched, reviewed, selfl, site, x, y, x_bundled, lever, kws):
    """Which of the round's keyword inputs (``named``) the keyword memory clears: ``jaccard``
    is today's rule (``shared.keyword_memory`` on the reviewed site cases); ``feat``: for
    every keyword it names, its ``kw_k`` nearest reviewed site cases naming that keyword
    (cosine on standardised features; the settled alerts naming it count as hazards) are all
    safe and all at similarity >= ``kw_sim``; ``none``: no memory."""
    out = np.zeros(len(idx), dtype=bool)
    mode = lever["keywords"]
    if mode == "none" or not named.any():
        return out
    if mode == "jaccard":
        from shared.keyword_memory import cleared, remember

        mem = remember([(site[i]["input"], bool(y[i]), matched[i]) for i in reviewed], kws)
        for j, i in enumerate(idx):
            out[j] = named[j] and cleared(mem, site[i]["input"], matched[i], kws)
        return out
    refs = [(i, bool(y[i])) for i in reviewed] + [(i, True) for i, lab in selfl if lab]
    for j, i in enumerate(idx):
        if not named[j]:
            continue
        ok = True
        for k in matched[i]:
            mine = [(r, lab) for r, lab in refs if k in matched[r]]
            if len(mine) < lever["kw_k"]:
                ok = False
                break
            sims = unit_rows(x[[i]], x_bundled) @ unit_rows(x[[r for r, _ in mine]], x_bundled).T
            top = np.argsort(-sims[0])[: lever["kw_k"]]
            if (sims[0][top] < lever["kw_sim"]).any() or any(mine[t][1] for t in top):
                ok = False
                break
        out[j] = ok
    return out


def knn_filter(selfl, reviewed, x, y, x_bundled, lever):
    """Drop a settled alert's self-label (or, with ``flip``, call it safe) whose ``knn``
    nearest reviewed site cases (cosine on standardised features) are all safe; with
    ``which: both`` also drop a passed input's whose nearest are all unsafe."""
    yr = y[reviewed]
    sims = unit_rows(x[[i for i, _ in selfl]], x_bundled) @ unit_rows(x[reviewed], x_bundled).T
    top = np.argsort(-sims, axis=1)[:, : int(lever["knn"])]
    out = []
    for (i, lab), t in zip(selfl, top, strict=True):
        against = all(bool(v) != lab for v in yr[t])
        if against and (lab or lever.get("which") == "both"):
            if lab and lever.get("flip"):
                out.append((i, False))
            continue
        out.append((i, lab))
    return out


def choose_score(by: str, head, cal, oof, cases, x_round) -> float:
    """A candidate's score (lower is better): ``site_loss``, the out-of-fold log loss on the
    site's reviewed cases; ``traffic_band``, its band's share of the round's inputs."""
    if by == "traffic_band":
        return band_share(head.p_unsafe_many(x_round), cal.lower, cal.upper)
    if by == "cal_band":  # the certified band's share of the calibration cases (out of fold)
        return band_share(oof, cal.lower, cal.upper) if cal.guaranteed else float("inf")
    site = np.array([bool(c.site) for c in cases])
    if not site.any():
        return 0.0
    y = np.array([c.safety for c in cases])[site]
    q = np.clip(oof[site], 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(q) + (~y) * np.log(1 - q)))


@dataclass(frozen=True)
class OracleFit:
    """One head fitted (crossfit) on the bundled scenes outside the frozen share and every
    earlier round's inputs with their true labels, and what certifying it needs."""

    cfg: object  # the TeacherConfig of the seed
    head: object  # the shipped average of the fold heads
    oof: np.ndarray  # every case's out-of-fold p(unsafe): bundled first, then the site's
    labels: np.ndarray
    kept: np.ndarray  # the bundled scenes outside the frozen share (the first cases)
    earlier: np.ndarray  # the site indices after the bundled cases
    last: np.ndarray  # the last round's mask over the site

    @property
    def n_bundled(self) -> int:
        return int(self.kept.sum())


def oracle_fit(site: list[dict], x: np.ndarray, bundled, x_bundled, layers, seed: int) -> OracleFit:
    from shared.evaluation import LabeledCase
    from shared.teacher_config import TeacherConfig
    from teacher.release.head_fit import crossfit

    cfg = TeacherConfig.model_validate({"train": {"seed": seed}})
    y = np.array([r["safety"] for r in site])
    rounds = np.array([r["round"] for r in site])
    earlier, last = np.where(rounds < rounds.max())[0], rounds == rounds.max()
    keep = ~frozen_share(bundled, cfg.train.eval_fraction, seed)
    cases = [c for c, k in zip(bundled, keep, strict=True) if k] + [
        LabeledCase(id=site[i]["id"], input=site[i]["input"], safety=bool(y[i]), site="site")
        for i in earlier
    ]
    xs = np.vstack([x_bundled[keep], x[earlier]])
    head, oof = crossfit(cfg, xs, cases, "hidden", tuple(layers), None)
    labels = np.array([c.safety for c in cases])
    return OracleFit(cfg, head, oof, labels, keep, earlier, last)


def extra_labels(path: str) -> list:
    """A lever's extra generic scenes (``labels``, relative to the repository)."""
    from shared.evaluation import load_labeled

    return load_labeled(ROOT / path)


def rebuilt_v0(bundled, x_bundled, kind, layers, seed: int):
    """v0 as a build from ``bundled`` would make it: the crossfit head on the cases outside
    the frozen share and its certified thresholds (no keyword floor: the replay has none)."""
    from shared.teacher_config import TeacherConfig
    from teacher.release.head_fit import crossfit

    cfg = TeacherConfig.model_validate({"train": {"seed": seed}})
    keep = ~frozen_share(bundled, cfg.train.eval_fraction, seed)
    cases = [c for c, k in zip(bundled, keep, strict=True) if k]
    head, oof = crossfit(cfg, x_bundled[keep], cases, kind, tuple(layers), None)
    return head, certify(oof, [c.safety for c in cases], cfg.policy)


def v0_band(site: list[dict], x: np.ndarray, head, cal) -> list[float]:
    """Band calls per 100 of each round's inputs under the release a run starts from."""
    rounds = np.array([r["round"] for r in site])
    return [round(100 * band_share(head.p_unsafe_many(x[rounds == r]), cal.lower, cal.upper), 1)
            for r in range(int(rounds.max()) + 1)]  # fmt: skip


def certify(scores, labels, policy):
    """Thresholds certified on ``scores`` (out-of-fold p(unsafe)) and their labels under the
    policy's recall target, delta and false-alert rate (``shared.calibration.calibrate``)."""
    from shared.calibration import calibrate

    return calibrate([float(p) for p in scores], [bool(y) for y in labels],
                     recall_target=policy.recall_target, delta=policy.recall_delta,
                     max_false_alert_rate=policy.max_false_alert_rate)  # fmt: skip


def oracle(site: list[dict], x: np.ndarray, bundled, x_bundled, layers, seed: int,
           calibrate_on: list[int] | None = None) -> dict:  # fmt: skip
    """The last round under a head fitted on every earlier round, all labels known; its
    thresholds certified on all of them, or with ``calibrate_on`` on those site cases only
    (and the bundled ones): the loop's reviews, to tell the fit's share from the
    calibration's."""
    fit = oracle_fit(site, x, bundled, x_bundled, layers, seed)
    use = np.ones(len(fit.labels), dtype=bool)
    if calibrate_on is not None:
        use[fit.n_bundled :] = np.isin(fit.earlier, calibrate_on)
    cal = certify(fit.oof[use], fit.labels[use], fit.cfg.policy)
    y = np.array([r["safety"] for r in site])[fit.last]
    p = fit.head.p_unsafe_many(x[fit.last])
    band, alert, passed = (p >= cal.lower) & (p < cal.upper), p >= cal.upper, p < cal.lower
    return dict(calls=round(100 * band.mean(), 1), missed=int((passed & y).sum()),
                false_alerts=round(100 * (alert & ~y).mean(), 1))  # fmt: skip


@dataclass(frozen=True)
class V0Features:
    """The bundled llama.cpp v0, its head's kind and layers, the bundled scenes and the
    features of every text set asked for (``x``, by name), all from v0's own student."""

    release: object
    kind: str
    layers: tuple
    bundled: list
    x_bundled: np.ndarray
    x: dict


def v0_features(sets: dict[str, list[str]]) -> V0Features:
    """Features of the bundled scenes and of ``sets`` (name -> texts) from the bundled
    llama.cpp v0's student, cached under CACHE; the model is closed afterwards."""
    from shared.config import LlamaCppModelConfig
    from shared.evaluation import bundled_labels
    from shared.llamacpp_backend import LlamaCppBackend
    from shared.release import load_release
    from shared.student import Student
    from teacher.release.head_fit import head_kind

    release = load_release(ROOT / "shared/data/release-llamacpp")
    backend = LlamaCppBackend(LlamaCppModelConfig(threads=2))
    try:
        student = Student(backend, release, 64)
        kind, layers = head_kind(backend)
        bundled = bundled_labels()
        x_bundled = cached_features("bundled", [c.input for c in bundled], student, kind, layers)
        x = {name: cached_features(name, texts, student, kind, layers)
             for name, texts in sets.items()}  # fmt: skip
    finally:
        backend.close()
    return V0Features(release, kind, tuple(layers), bundled, x_bundled, x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--site", choices=sorted(SITES), action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--levers", action="store_true",
                    help="compare the levers against false-alert self-labels (LEVERS) instead "
                         "of the gates")  # fmt: skip
    ap.add_argument("--lever", choices=sorted(LEVERS), action="append", default=[],
                    help="with --levers: only these (default: all)")  # fmt: skip
    args = ap.parse_args()
    sites = args.site or ["tuning", "demo"]
    t0 = time.time()
    data = {s: load_site(SITES[s]) for s in sites}
    sets = {s: [r["input"] for r in data[s]] for s in sites}
    if args.levers:  # the levers' extra generic scenes (``labels``), featurised with the rest
        for name in args.lever or LEVERS:
            if "labels" in LEVERS[name]:
                path = LEVERS[name]["labels"]
                sets[path] = [c.input for c in extra_labels(path)]
    v0 = v0_features(sets)
    release, layers, bundled, x_bundled, feats = (
        v0.release,
        v0.layers,
        v0.bundled,
        v0.x_bundled,
        v0.x,
    )
    if args.levers:
        return levers(args, sites, data, feats, bundled, x_bundled, release, t0)
    cal0 = release.manifest.calibration
    runs = []
    print(
        "| site | seed | gate | band calls/100 by round | last | hazards passed | builds shipped |"
    )
    print("|---|---|---|---|---|---|---|")
    reviewed = {}  # (site, seed): the not-worse loop's reviews before the last round
    for s in sites:
        for seed in args.seeds:
            for gate in GATES:
                state: dict = {}
                rows = replay(data[s], feats[s], bundled, x_bundled, release.head, cal0, seed, gate,
                              state=state)  # fmt: skip
                if gate == "not_worse":
                    reviewed[s, seed] = state["reviewed"]
                runs.append(dict(site=s, seed=seed, gate=gate, rounds=rows))
                calls = ", ".join(f"{r['calls']:.1f}" for r in rows)
                print(f"| {s} | {seed} | {gate} | {calls} | {rows[-1]['calls']:.1f} | "
                      f"{sum(r['missed'] for r in rows)} | {rows[-1]['release']} |")  # fmt: skip
    print("\noracle (every earlier round labelled), last round; and the same fit with its "
          "thresholds certified on the loop's reviews only (not_worse):")  # fmt: skip
    oracles = {}
    for s in sites:
        for seed in args.seeds:
            o = oracle(data[s], feats[s], bundled, x_bundled, layers, seed)
            o["loop_calibration"] = oracle(data[s], feats[s], bundled, x_bundled, layers, seed,
                                           reviewed[s, seed])  # fmt: skip
            oracles[f"{s}-seed{seed}"] = o
            print(f"  {s:8s} seed {seed}: band {o['calls']:.1f}/100, hazards passed {o['missed']}, "
                  f"false alerts {o['false_alerts']:.1f}/100; certified on the loop's reviews: "
                  f"band {o['loop_calibration']['calls']:.1f}/100, hazards passed "
                  f"{o['loop_calibration']['missed']}")  # fmt: skip
    print("\nmean band calls/100 in the last round:")
    for s in sites:
        for gate in GATES:
            last = [r["rounds"][-1]["calls"] for r in runs if r["site"] == s and r["gate"] == gate]
            print(f"  {s:8s} {gate:10s} {np.mean(last):5.1f}  ({', '.join(map(str, last))})")
    doc = {"command": "bench/replay.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.time() - t0, 1), "runs": runs, "oracle": oracles}  # fmt: skip
    write_result("replay.json" if not args.site else f"replay-{'-'.join(sites)}.json", doc)
    return 0


def levers(args, sites, data, feats, bundled, x_bundled, release, t0) -> int:
    """The LEVERS table: calls per 100 by round, hazards passed and false alerts per 100 in
    the last round, per site, seed and lever (not-worse gate); writes replay-levers-*.json."""
    cal0 = release.manifest.calibration
    chosen = {k: v for k, v in LEVERS.items() if not args.lever or k in args.lever}
    runs = []
    print(
        "| site | seed | lever | calls/100 by round | last | hazards passed | false alerts, last |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in sites:
        for seed in args.seeds:
            for name, lever in chosen.items():
                b, xb, head0, c0 = bundled, x_bundled, release.head, cal0
                if "labels" in lever:  # more generic scenes in every build's bundled cases
                    b = bundled + extra_labels(lever["labels"])
                    xb = np.vstack([x_bundled, feats[lever["labels"]]])
                    if lever.get("rebuild_v0"):  # and v0 rebuilt from them
                        head0, c0 = rebuilt_v0(b, xb, release.head.kind, release.head.layers, seed)
                rows = replay(data[s], feats[s], b, xb, head0, c0, seed, "not_worse", lever)
                v0_calls = v0_band(data[s], feats[s], head0, c0)
                runs.append(dict(site=s, seed=seed, lever=name, rounds=rows, v0_calls=v0_calls))
                calls = ", ".join(f"{r['calls']:.1f}" for r in rows)
                print(f"| {s} | {seed} | {name} | {calls} | {rows[-1]['calls']:.1f} | "
                      f"{sum(r['missed'] for r in rows)} | {rows[-1]['false_alerts']:.1f} |")  # fmt: skip
    print("\nmean calls/100 in the last round (hazards passed in all rounds, all seeds):")
    for s in sites:
        for name in chosen:
            mine = [r["rounds"] for r in runs if r["site"] == s and r["lever"] == name]
            last = [rows[-1]["calls"] for rows in mine]
            missed = sum(r["missed"] for rows in mine for r in rows)
            v0_last = [r["v0_calls"][-1] for r in runs if r["site"] == s and r["lever"] == name]
            print(f"  {s:8s} {name:20s} {np.mean(last):5.1f}  ({', '.join(map(str, last))}); "
                  f"passed {missed}; v0 {np.mean(v0_last):.1f}")  # fmt: skip
    doc = {"command": "bench/replay.py " + " ".join(sys.argv[1:]),
           "seconds": round(time.time() - t0, 1), "levers": chosen, "runs": runs}  # fmt: skip
    tail = "-".join(args.lever) if args.lever else ""
    write_result(f"replay-levers-{'-'.join(sites)}{'-' + tail if tail else ''}.json", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
