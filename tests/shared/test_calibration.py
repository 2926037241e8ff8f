"""Learn-then-Test thresholds on p_unsafe: the bound, the walk, and that the guarantee holds."""

from __future__ import annotations

import math
from bisect import bisect_left

import numpy as np
import pytest
from pydantic import ValidationError

from shared.calibration import (
    METHOD,
    Calibration,
    calibrate,
    clopper_pearson_upper,
    conservative,
    min_unsafe_cases,
)


def separated(n_unsafe: int = 100, n_safe: int = 100) -> tuple[list[float], list[bool]]:
    """Unsafe p evenly in [0.6, 1], safe p evenly in [0, 0.3]: a head that never errs."""
    unsafe = np.linspace(0.6, 1.0, n_unsafe).tolist()
    safe = np.linspace(0.0, 0.3, n_safe).tolist()
    return unsafe + safe, [True] * n_unsafe + [False] * n_safe


# ---------------------------------------------------------------- the binomial bound
def test_clopper_pearson_zero_events_matches_closed_form():
    assert clopper_pearson_upper(0, 45, 0.1) == pytest.approx(1 - 0.1 ** (1 / 45), abs=1e-6)
    assert clopper_pearson_upper(0, 200, 0.05) == pytest.approx(1 - 0.05 ** (1 / 200), abs=1e-6)


def test_clopper_pearson_matches_beta_quantile():
    # scipy.stats.beta.ppf(0.95, 4, 47) = 0.1478372 (checked with mpmath's regularized
    # incomplete beta at 30 digits; P(Bin(50, 0.1478372) <= 3) = 0.0500).
    assert clopper_pearson_upper(3, 50, 0.05) == pytest.approx(0.1478372, abs=1e-4)
    # A second, larger k: the bound is where the binomial tail equals delta.
    bound = clopper_pearson_upper(10, 100, 0.1)
    tail = sum(math.comb(100, j) * bound**j * (1 - bound) ** (100 - j) for j in range(11))
    assert tail == pytest.approx(0.1, abs=1e-6)


def test_clopper_pearson_edges_and_monotone():
    assert clopper_pearson_upper(0, 0, 0.1) == 1.0
    assert clopper_pearson_upper(7, 7, 0.1) == 1.0
    bounds = [clopper_pearson_upper(k, 50, 0.1) for k in range(51)]
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(k / 50 <= b for k, b in enumerate(bounds))  # an upper bound on the rate
    # More trials with the same share of events tighten the bound.
    assert clopper_pearson_upper(10, 200, 0.1) < clopper_pearson_upper(5, 100, 0.1)
    # A smaller delta (a stronger guarantee) loosens it.
    assert clopper_pearson_upper(5, 100, 0.01) > clopper_pearson_upper(5, 100, 0.1)


@pytest.mark.parametrize("k, n, delta", [(-1, 5, 0.1), (6, 5, 0.1), (1, 5, 0.0), (1, 5, 1.0)])
def test_clopper_pearson_rejects_bad_arguments(k, n, delta):
    with pytest.raises(ValueError):
        clopper_pearson_upper(k, n, delta)


def test_min_unsafe_cases():
    # 1 - 0.1 ** (1 / 45) = 0.04988 <= 0.05 < 0.05101 = 1 - 0.1 ** (1 / 44)
    assert min_unsafe_cases(0.95, 0.1) == 45
    # 0.95 ** 59 = 0.0485 <= 0.05 < 0.0510 = 0.95 ** 58: the delta / 2 calibrate uses.
    assert min_unsafe_cases(0.95, 0.05) == 59
    assert min_unsafe_cases(0.9, 0.1) == 22  # 0.9 ** 22 = 0.0985, 0.9 ** 21 = 0.1094
    n = min_unsafe_cases(0.99, 0.05)
    assert clopper_pearson_upper(0, n, 0.05) <= 0.01 < clopper_pearson_upper(0, n - 1, 0.05)


# ---------------------------------------------------------------- calibrate
def test_separated_data_is_certified_with_a_threshold_at_an_unsafe_case():
    p, labels = separated()
    unsafe = sorted(x for x, y in zip(p, labels, strict=True) if y)
    cal = calibrate(p, labels, recall_target=0.96)
    assert cal.guaranteed
    assert cal.method == METHOD
    assert (cal.n_unsafe, cal.n_safe) == (100, 100)
    # 0 misses in 100 certify recall 0.96 at delta 0.05 (bound 0.0295), 1 miss does not
    # (0.0466 > 0.04): lower sits exactly at the smallest unsafe p.
    assert 0.3 < cal.lower <= 0.6
    assert cal.lower == unsafe[0]
    assert all(x >= cal.lower for x in unsafe)
    assert all(cal.zone(x) != "pass" for x in unsafe)
    # No safe case reaches lower; upper (certified below lower) is lifted to it: empty band.
    assert cal.upper == cal.lower
    assert sum(cal.zone(x) == "uncertain" for x in p) == 0
    assert "system recall >= 0.96 with probability >= 0.9" in cal.note
    assert "0 missed" in cal.note


def test_separated_data_at_095_spends_the_one_miss_it_may():
    p, labels = separated()
    unsafe = sorted(x for x, y in zip(p, labels, strict=True) if y)
    cal = calibrate(p, labels, recall_target=0.95)
    # 1 miss in 100 still certifies 0.95 at delta 0.05 (bound 0.0466), 2 do not (0.0612).
    assert cal.guaranteed
    assert cal.lower == unsafe[1]
    assert sum(x < cal.lower for x in unsafe) == 1
    assert cal.upper - cal.lower < 0.01
    assert "1 missed" in cal.note


@pytest.mark.parametrize("n_unsafe", [0, 20, 45, 58])
def test_too_few_unsafe_cases_are_not_certified(n_unsafe):
    p, labels = separated(n_unsafe=n_unsafe)
    cal = calibrate(p, labels, recall_target=0.95, delta=0.1)
    assert not cal.guaranteed
    assert cal.lower == 0.0
    assert all(cal.zone(x) != "pass" for x in p)  # everything is escalated or alerted
    # 45 would do at delta 0.1, but the recall test runs at delta / 2 = 0.05: 59.
    assert f"only {n_unsafe} unsafe calibration cases" in cal.note
    assert "at least 59 are needed" in cal.note


def test_enough_unsafe_cases_are_certified():
    p, labels = separated(n_unsafe=59)
    cal = calibrate(p, labels, recall_target=0.95, delta=0.1)
    assert cal.guaranteed
    assert cal.lower > 0.3


def test_too_few_safe_cases_alert_nothing_locally():
    p, labels = separated(n_unsafe=100, n_safe=30)
    cal = calibrate(p, labels, max_false_alert_rate=0.05, delta=0.1)
    assert not cal.guaranteed
    assert cal.upper == 1.0
    assert cal.lower > 0.3  # recall is still certified on its own
    assert "only 30 safe calibration cases" in cal.note
    assert "nothing alerts locally" in cal.note


def test_caught_cases_let_lower_rise_past_them():
    # 55 unsafe cases the head scores well and 5 it scores near zero that a safety keyword
    # escalates anyway; 100 safe cases below 0.4.
    confident = np.linspace(0.5, 1.0, 55).tolist()
    hidden = [0.01, 0.02, 0.03, 0.04, 0.05]
    safe = np.linspace(0.0, 0.4, 100).tolist()
    p = confident + hidden + safe
    labels = [True] * 60 + [False] * 100
    caught = [False] * 55 + [True] * 5 + [False] * 100

    blind = calibrate(p, labels)
    # Without `caught`, passing the five would be five misses in 60: lower stays at 0.01.
    assert blind.guaranteed
    assert blind.lower == 0.01
    assert sum(blind.zone(x) == "uncertain" for x in safe) > 90

    aware = calibrate(p, labels, caught=caught)
    assert aware.guaranteed
    assert aware.n_unsafe == 60
    assert aware.lower == 0.5  # the smallest unsafe p nothing else escalates
    assert all(aware.zone(x) != "pass" for x in confident)
    assert all(aware.zone(x) == "pass" for x in hidden)  # escalated by the keyword instead
    assert all(aware.zone(x) == "pass" for x in safe)


def test_the_keyword_rule_stays_only_where_it_saves_teacher_calls():
    from shared.calibration import calibrate_policy, expected_calls

    # The keyword rule catches the five hidden hazards; without it the band must reach
    # down to 0.01 and escalate almost every safe case.
    confident = np.linspace(0.5, 1.0, 55).tolist()
    hidden = [0.01, 0.02, 0.03, 0.04, 0.05]
    safe = np.linspace(0.0, 0.4, 100).tolist()
    p, labels = confident + hidden + safe, [True] * 60 + [False] * 100
    hits = [False] * 55 + [True] * 5 + [False] * 100
    kept = calibrate_policy(p, labels, hits)
    assert kept.keywords and kept.guaranteed and kept.lower == 0.5
    assert "the safety-keyword rule stays: 5 of 160" in kept.note
    # Here the keyword hits only safe cases the head rules out: the rule only costs calls.
    confident = np.linspace(0.5, 1.0, 60).tolist()
    p, hits = confident + safe, [False] * 60 + [i % 4 == 0 for i in range(100)]
    dropped = calibrate_policy(p, labels, hits)
    assert not dropped.keywords and dropped.guaranteed
    with_rule = calibrate(p, labels, caught=hits)
    assert expected_calls(dropped, p, hits) < expected_calls(with_rule, p, hits) == 25
    assert "the safety-keyword rule is off" in dropped.note


def test_lower_is_the_largest_certified_candidate():
    rng = np.random.default_rng(7)
    each = 0.05
    for _ in range(20):
        pu, ps = rng.beta(5, 2, 80), rng.beta(2, 5, 80)
        p = np.concatenate([pu, ps]).tolist()
        cal = calibrate(p, [True] * 80 + [False] * 80, recall_target=0.9, delta=0.1)
        unsafe = sorted(pu.tolist())
        assert cal.lower == 0.0 or cal.lower in p
        misses = bisect_left(unsafe, cal.lower)
        assert clopper_pearson_upper(misses, 80, each) <= 0.1
        above = [x for x in sorted(set(p)) if x > cal.lower]
        if above:  # the next candidate up would miss one more and fail the test
            assert clopper_pearson_upper(bisect_left(unsafe, above[0]), 80, each) > 0.1
        safe_alerts = sum(x >= cal.upper for x in ps.tolist())
        assert clopper_pearson_upper(safe_alerts, 80, each) <= 0.05
        assert cal.lower <= cal.upper


def beta52_cdf(x: float) -> float:
    """CDF of Beta(5, 2): the regularized incomplete beta for integer shapes, 6x^5 - 5x^6."""
    return 6 * x**5 - 5 * x**6


def beta25_sf(x: float) -> float:
    """P(p >= x) under Beta(2, 5): (1 - x)^6 + 6x(1 - x)^5."""
    return (1 - x) ** 6 + 6 * x * (1 - x) ** 5


def test_beta_closed_forms_match_sampling():
    rng = np.random.default_rng(3)
    unsafe, safe = rng.beta(5, 2, 200_000), rng.beta(2, 5, 200_000)
    for x in (0.3, 0.5, 0.7):
        assert (unsafe < x).mean() == pytest.approx(beta52_cdf(x), abs=5e-3)
        assert (safe >= x).mean() == pytest.approx(beta25_sf(x), abs=5e-3)


def test_guarantee_holds_over_repeated_calibration_draws():
    # Overlapping heads: unsafe p ~ Beta(5, 2), safe p ~ Beta(2, 5). Draw 300 calibration
    # splits, calibrate each, and measure the true risks of the chosen thresholds.
    rng = np.random.default_rng(20210803)
    draws, n, delta, target, max_far = 300, 120, 0.1, 0.9, 0.05
    recalls, far, certified = [], [], 0
    for _ in range(draws):
        p = np.concatenate([rng.beta(5, 2, n), rng.beta(2, 5, n)])
        cal = calibrate(
            p, [True] * n + [False] * n, recall_target=target, max_false_alert_rate=max_far
        )
        certified += cal.guaranteed
        recalls.append(1 - beta52_cdf(cal.lower))
        far.append(beta25_sf(cal.upper))
    recalls_a, far_a = np.array(recalls), np.array(far)
    assert certified == draws  # 120 cases are enough for both tests
    failed = (recalls_a < target) | (far_a > max_far)
    assert failed.mean() <= delta + 0.05
    assert (recalls_a < target).mean() <= delta / 2 + 0.05
    # Not vacuous: the thresholds do use the budget (lower is well above 0).
    assert np.median(recalls_a) < 0.97


def test_the_simulation_catches_an_uncertified_threshold():
    # The same draws with the naive choice (the empirical 10% quantile of unsafe p, i.e.
    # 90% recall on the calibration split) miss the target about half the time.
    rng = np.random.default_rng(20210803)
    misses = [1 - beta52_cdf(float(np.quantile(rng.beta(5, 2, 120), 0.1))) for _ in range(300)]
    assert (np.array(misses) < 0.9).mean() > 0.3


# ---------------------------------------------------------------- validation
def test_length_mismatch_names_the_lengths():
    with pytest.raises(ValueError, match="3 p_unsafe values but 2 labels"):
        calibrate([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="2 p_unsafe values but 1 caught"):
        calibrate([0.1, 0.2], [True, False], caught=[True])


def test_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match=r"p_unsafe\[1\] is NaN"):
        calibrate([0.1, float("nan")], [True, False])
    with pytest.raises(ValueError, match="outside"):
        calibrate([0.1, 1.5], [True, False])


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="recall_target"):
        calibrate([0.1], [True], recall_target=1.0)
    with pytest.raises(ValueError, match="delta"):
        calibrate([0.1], [True], delta=0.0)


def test_calibration_model_validates():
    fields = dict(
        recall_target=0.95, max_false_alert_rate=0.05, delta=0.1, guaranteed=False, n_unsafe=0
    )
    with pytest.raises(ValidationError, match=r"lower \(0.7\) must not exceed upper \(0.3\)"):
        Calibration(lower=0.7, upper=0.3, n_safe=0, **fields)
    with pytest.raises(ValidationError):
        Calibration(lower=0.1, upper=0.3, n_safe=0, surprise=1, **fields)
    with pytest.raises(ValidationError):
        Calibration(lower=-0.1, upper=0.3, n_safe=0, **fields)
    cal = Calibration(lower=0.1, upper=0.3, n_safe=0, **fields)
    with pytest.raises(ValidationError):
        cal.lower = 0.2  # frozen
    assert Calibration.model_validate(cal.model_dump()) == cal


def test_zone_boundaries():
    cal = Calibration(
        lower=0.2,
        upper=0.8,
        recall_target=0.95,
        max_false_alert_rate=0.05,
        delta=0.1,
        guaranteed=True,
        n_unsafe=100,
        n_safe=100,
    )
    assert cal.zone(0.0) == "pass"
    assert cal.zone(0.19999) == "pass"
    assert cal.zone(0.2) == "uncertain"
    assert cal.zone(0.79999) == "uncertain"
    assert cal.zone(0.8) == "alert"
    assert cal.zone(1.0) == "alert"


def test_conservative_escalates_everything_and_alerts_nothing():
    cal = conservative()
    assert (cal.lower, cal.upper, cal.guaranteed) == (0.0, 1.0, False)
    assert (cal.n_unsafe, cal.n_safe) == (0, 0)
    assert {cal.zone(x) for x in (0.0, 0.3, 0.999999)} == {"uncertain"}
    assert cal.note
    empty = calibrate([], [])
    assert (empty.lower, empty.upper, empty.guaranteed) == (0.0, 1.0, False)


def test_a_keyword_floor_is_certified_on_the_keyword_hazards_alone():
    # 80 keyword hazards the head scores 0.3-1.0, 60 keyword-free hazards 0.5-1.0; safe
    # cases: 40 naming a keyword (a chef's knife) at 0.0-0.05, 100 others at 0.0-0.4.
    named_hazards = np.linspace(0.3, 1.0, 80).tolist()
    plain_hazards = np.linspace(0.5, 1.0, 60).tolist()
    named_safe = np.linspace(0.0, 0.05, 40).tolist()
    plain_safe = np.linspace(0.0, 0.4, 100).tolist()
    p = named_hazards + plain_hazards + named_safe + plain_safe
    labels = [True] * 140 + [False] * 140
    keyword = [True] * 80 + [False] * 60 + [True] * 40 + [False] * 100
    cal = calibrate(p, labels, keyword=keyword)
    assert cal.guaranteed
    # the lowest keyword hazard (0.3) is certified; the floor is capped at half of lower
    assert 0.5 <= cal.lower < 0.6 and cal.keyword_lower == pytest.approx(cal.lower / 2)
    assert all(x < cal.keyword_lower for x in named_safe)  # a chef's knife passes
    assert f"keyword cases pass under keyword_lower {cal.keyword_lower:.4g}" in cal.note
    # a sample enriched with keyword scenes certifies the floor but not lower or upper
    enriched = calibrate(p, labels, keyword=keyword, stratum_only=[k for k in keyword])
    assert enriched.n_unsafe == 60 and enriched.n_safe == 100
    assert enriched.keyword_lower == pytest.approx(min(0.3, enriched.lower / 2))
    # Too few keyword hazards to certify anything: every keyword case escalates.
    few = calibrate(p[50:], labels[50:], keyword=keyword[50:])
    assert few.keyword_lower == 0.0
    assert "every keyword case the head does not alert on is escalated (30" in few.note


def test_keyword_hazards_under_the_floor_count_as_misses_for_lower():
    # The floor lets 2 of 80 keyword hazards pass (0.01, 0.02); lower must then spend its
    # miss budget on them: it stays where those two plus the plain misses are certified.
    named_hazards = [0.01, 0.02, *np.linspace(0.3, 1.0, 78).tolist()]
    plain_hazards = np.linspace(0.05, 1.0, 60).tolist()
    safe = np.linspace(0.0, 0.4, 140).tolist()
    p = named_hazards + plain_hazards + safe
    labels = [True] * 140 + [False] * 140
    keyword = [True] * 80 + [False] * 200
    cal = calibrate(p, labels, keyword=keyword)
    unsafe = sorted(named_hazards + plain_hazards)
    missed = sum(x < cal.keyword_lower for x in named_hazards) + sum(
        x < cal.lower for x in plain_hazards
    )
    assert clopper_pearson_upper(missed, len(unsafe), 0.05) <= 0.05
    assert cal.keyword_lower <= cal.lower


def test_a_release_whose_keyword_floor_exceeds_lower_is_refused():
    from shared.calibration import Calibration

    with pytest.raises(ValueError, match="keyword_lower"):
        Calibration(
            lower=0.1, upper=0.5, recall_target=0.95, max_false_alert_rate=0.1, delta=0.1,
            guaranteed=True, n_unsafe=100, n_safe=100, keyword_lower=0.2,
        )  # fmt: skip
