"""``bench/replay.py``'s stop-45 screen: the extra generic scenes are new and generic, a
rebuilt v0 is fitted outside the gate's frozen share, and the v0 band is counted per round."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.data import check_site
from bench.replay import LEVERS, extra_labels, rebuilt_v0, v0_band
from shared.evaluation import LabeledCase
from teacher.data.dataset import frozen_member

ROOT = Path(__file__).resolve().parents[1]


def test_the_extra_generic_scenes_repeat_no_scene_and_no_site():
    more = extra_labels(LEVERS["more_generic"]["labels"])
    assert (len(more), sum(c.safety for c in more)) == (279, 141)
    scenes = ROOT / LEVERS["more_generic"]["labels"]
    against = [str(ROOT / "shared/data"), str(ROOT / "bench/data")]
    assert check_site.main([str(scenes), "--against", *against]) == 0  # format, no repeats
    sites = re.compile(  # the demo's and the measuring sites' settings
        r"\b(farms?|harbour|boats?|marina|swimming|gym|leisure|hospital|ward|railway|trains?"
        r"|factory)\b"
    )
    assert not [c.id for c in more if sites.search(c.input.lower())]


def test_a_rebuilt_v0_is_fitted_outside_the_frozen_share_and_separates():
    rng = np.random.default_rng(0)
    cases = [
        LabeledCase(id=f"c{i}", input=f"scene number {i}", safety=i % 2 == 0) for i in range(240)
    ]
    y = np.array([c.safety for c in cases])
    x = rng.normal(size=(240, 8)) + np.where(y, 1.5, -1.5)[:, None]
    head, cal = rebuilt_v0(cases, x, "hidden", (3,), seed=0)
    frozen = sum(frozen_member(c.input, 0.2, 0) for c in cases)
    assert 0 < frozen < 240
    assert cal.n_unsafe + cal.n_safe == 240 - frozen  # the frozen share never calibrates
    p = head.p_unsafe_many(x)
    assert p[y].mean() > 0.9 > 0.1 > p[~y].mean()
    assert 0.0 <= cal.lower <= cal.upper <= 1.0


def test_the_v0_band_is_counted_per_round():
    site = [{"round": r} for r in (0, 0, 0, 0, 1, 1)]
    x = np.array([[0.1], [0.5], [0.6], [0.9], [0.4], [0.95]])
    head = SimpleNamespace(p_unsafe_many=lambda xs: xs[:, 0])
    cal = SimpleNamespace(lower=0.3, upper=0.8)
    assert v0_band(site, x, head, cal) == [50.0, 50.0]


def test_the_feature_screen_centres_a_site_on_the_bundled_mean_and_joins_minilm():
    from bench.feature_screen import pick

    rng = np.random.default_rng(1)
    feats = {
        "bundled_last": rng.normal(size=(30, 4)),
        "site_last": rng.normal(loc=3.0, size=(20, 4)),
        "site_minilm": rng.normal(size=(20, 2)),
    }
    assert np.array_equal(pick(feats, "bundled", "centred"), feats["bundled_last"])
    centred = pick(feats, "site", "centred")
    assert np.allclose(centred.mean(0), feats["bundled_last"].mean(0))
    assert np.allclose(centred - feats["site_last"], centred[0] - feats["site_last"][0])  # a shift
    assert pick(feats, "site", "last+minilm").shape == (20, 6)


def test_the_lora_screen_reports_the_bundled_crossfit_and_each_levers_loop():
    from bench.lora_screen import screen
    from shared.evaluation import bundled_labels

    rng = np.random.default_rng(2)
    yb = np.array([c.safety for c in bundled_labels()])
    site = [{"id": f"s{i}", "input": f"site scene {i}", "safety": i % 3 == 0, "round": i // 30}
            for i in range(60)]  # fmt: skip
    ys = np.array([r["safety"] for r in site])
    feats = {  # hazards apart from safe scenes, the site a little nearer the boundary
        "bundled": rng.normal(size=(len(yb), 6)) + np.where(yb, 2.0, -2.0)[:, None],
        "site": rng.normal(size=(60, 6)) + np.where(ys, 1.5, -1.5)[:, None],
    }
    rows = screen("test", feats, {"site": site}, 1, ("defaults", "no_self_labels"))
    bundled, row = rows
    assert bundled["site"] == "bundled (out of fold)" and bundled["inputs"] == len(yb) == 300
    assert bundled["auc"] > 0.95 and 0 <= bundled["band"] < 50
    assert row["hazards"] == 20 and row["loop"]["lever"] == "defaults"
    assert row["loop no_self_labels"]["lever"] == "no_self_labels"
    assert len(row["loop"]["last2_by_seed"]) == len(row["v0"]["band_by_seed"]) == 1


def test_lora_v0_counts_calls_by_reason_and_the_worst_round_from_evals_cases():
    from bench.lora_v0 import summarize

    def case(i, label, escalate=False, alert=False, reasons=()):
        decision = {"escalate": escalate, "alert": alert, "reasons": list(reasons)}
        return {"id": f"c{i}", "label": label, "decision": decision, "format_ok": True,
                "latency_s": 0.1}  # fmt: skip

    cases = [
        case(0, True, alert=True),
        case(1, True, escalate=True, reasons=["safety_keyword", "audit"]),
        case(2, True),  # passed: round 0 catches 2 of 3
        case(3, True, escalate=True, reasons=["uncertain_safety"]),
        case(4, False, alert=True),  # a false alert
        case(5, False, escalate=True, reasons=["audit"]),
    ]
    row = summarize(cases, {"c0": 0, "c1": 0, "c2": 0, "c3": 1, "c4": 1, "c5": 1})
    assert row["by_reason"] == {"band": 16.7, "keyword": 16.7, "format": 0.0, "audit": 16.7,
                                "other": 0.0}  # fmt: skip
    assert (row["calls"], row["recall"], row["missed"]) == (50.0, 0.75, ["c2"])
    assert row["worst_round_recall"] == 0.667 and row["calls_by_round"] == [33.3, 66.7]
    assert row["false_alerts"] == 16.7 and "worst_round_recall" not in summarize(cases, {})
