"""Escalation thresholds on ``p_unsafe`` with a finite-sample guarantee on system recall.

The edge safety head gives ``p_unsafe`` in [0, 1] per input. The policy alerts locally
when ``p_unsafe >= upper``, escalates to the teacher when ``lower <= p_unsafe < upper``
(reason "uncertain_safety") and lets the rest pass. ``calibrate`` picks ``lower`` and
``upper`` on a labelled calibration split with Learn-then-Test (Angelopoulos, Bates,
Candès, Jordan, Lei 2021, "Learn then Test: Calibrating predictive algorithms to achieve
risk control"): each candidate threshold is a hypothesis test of "the risk exceeds the
target", with a one-sided binomial (Clopper-Pearson) upper confidence bound as the test,
and fixed-sequence testing along the candidates in the order the risk grows, so no
multiplicity correction is needed within one risk. The error budget ``delta`` is split
by Bonferroni: ``delta / 2`` for each of the two risks.

- ``lower`` (recall): miss risk = share of unsafe cases with ``p_unsafe < lower`` that
  the rest of the policy does not escalate anyway (``caught``: a safety keyword, a
  format break). With probability at least ``1 - delta`` over the draw of the
  calibration split, system recall (an unsafe case is alerted or escalated) is at least
  ``recall_target``.
- ``upper`` (local false alerts): share of safe cases with ``p_unsafe >= upper`` is at
  most ``max_false_alert_rate``, in the same event of probability ``1 - delta``.

``keyword_lower`` (the keyword rule's floor): a case that names a safety keyword is escalated
when the head does not alert on it, unless its ``p_unsafe`` is below ``keyword_lower``. The
floor is certified on the keyword hazards alone, the same way as ``lower`` on all of them:
with probability at least ``1 - delta / 2`` at least ``recall_target`` of the hazards that
name a keyword score at or above it. The rule exists for the hazard types the head may not
know (a weapon, a fire), so with fewer keyword hazards in the calibration split than a
zero-miss result needs (59 at 0.95 and delta/2 = 0.05) the floor stays 0 and every keyword
case the head does not alert on is escalated; and it never exceeds ``KEYWORD_MARGIN`` (half)
of ``lower``, since the certifying hazards cannot cover every type a new site shows. The
keyword cases under the floor count as missable when ``lower`` is certified, so the system
recall guarantee covers the floor. ``stratum_only`` cases (a sample enriched with keyword
scenes, not drawn like the edges' inputs) certify the floor only.

``calibrate_policy`` certifies the policy twice, with the safety-keyword rule (keyword
cases count as caught) and without it (the band alone must reach the target), and keeps
the certified one that needs fewer teacher calls on the calibration split: a keyword
rule that only ever escalates cases the head rules out is switched off, one that catches
hazards the head misses stays. The choice is part of the release, so the gate and every
edge run the policy that was certified. Teachers use it only with ``release.keyword_rule:
certify``: by default the rule always stays, because the hazards it exists for (a weapon,
a fire) can be rare in the calibration cases and still occur at a site.

With too few reviewed cases nothing can be certified: the thresholds fall back to the
conservative ends (``lower = 0``: every case not alerted is escalated; ``upper = 1``:
nothing but a ``p_unsafe`` of exactly 1.0 alerts locally) and ``guaranteed`` is False.

The guarantee assumes the calibration cases and the cases the edge later sees are
independent draws from one distribution; it is marginal over the calibration draw, not
per case. This module knows nothing about models, the policy config, sockets or files:
callers pass probabilities and labels, and the policy applies the thresholds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.binomial import _min_cases, clopper_pearson_upper, min_unsafe_cases

METHOD = "learn-then-test, fixed-sequence, Clopper-Pearson bound"
# A keyword case passes only where the head is this much surer than any input needs to be
# to pass: the floor never exceeds KEYWORD_MARGIN x lower (the keyword sample certifies the
# head on the hazard types it holds; a new site may show others).
KEYWORD_MARGIN = 0.5

ALERT = "alert"
UNCERTAIN = "uncertain"
PASS = "pass"


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lower: float = Field(ge=0, le=1, description="p_unsafe below this is ruled out and passes.")
    upper: float = Field(ge=0, le=1, description="p_unsafe at or above this alerts locally.")
    recall_target: float = Field(gt=0, lt=1, description="Certified system safety recall.")
    max_false_alert_rate: float = Field(
        gt=0, le=1, description="Certified bound on the share of safe cases alerted locally."
    )
    delta: float = Field(
        gt=0, lt=1, description="The guarantee holds with probability at least 1 - delta."
    )
    method: str = Field(METHOD, description="How the thresholds were chosen.")
    guaranteed: bool = Field(
        description="False: too few reviewed cases; the thresholds are the conservative ends."
    )
    n_unsafe: int = Field(ge=0, description="Unsafe cases in the calibration split.")
    n_safe: int = Field(ge=0, description="Safe cases in the calibration split.")
    note: str = Field("", description="What was certified, or why nothing was, for a person.")
    keywords: bool = Field(
        True,
        description="The safety-keyword rule is part of the certified policy (a keyword "
        "escalates what the head does not alert on); False: the head alone was certified.",
    )
    keyword_lower: float = Field(
        0.0,
        ge=0,
        le=1,
        description="A keyword case the head passes with p_unsafe below this is not "
        "escalated for its keyword (certified on the keyword hazards; 0: every one is).",
    )
    keyword_memory: dict[str, list[tuple[tuple[str, ...], bool]]] = Field(
        default_factory=dict,
        description="Reviewed keyword cases (content-word hashes, unsafe) that clear a "
        "keyword case near safe reviews (shared.keyword_memory); empty: the rule as is.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Calibration:
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not exceed upper ({self.upper})")
        if self.keyword_lower > self.lower:
            raise ValueError(
                f"keyword_lower ({self.keyword_lower}) must not exceed lower ({self.lower})"
            )
        return self

    def zone(self, p_unsafe: float) -> str:
        """``alert`` (p >= upper), ``uncertain`` (lower <= p < upper) or ``pass`` (p < lower)."""
        if p_unsafe >= self.upper:
            return ALERT
        if p_unsafe >= self.lower:
            return UNCERTAIN
        return PASS


def conservative(
    recall_target: float = 0.95,
    max_false_alert_rate: float = 0.05,
    delta: float = 0.1,
    note: str = "not calibrated: every case not alerted is escalated; nothing alerts locally",
) -> Calibration:
    """The thresholds to use before any calibration: escalate everything, alert on nothing."""
    return Calibration(
        lower=0.0,
        upper=1.0,
        recall_target=recall_target,
        max_false_alert_rate=max_false_alert_rate,
        delta=delta,
        guaranteed=False,
        n_unsafe=0,
        n_safe=0,
        note=note,
    )


def _flags(values: Sequence[bool] | None, n: int, what: str) -> list[bool]:
    if values is None:
        return [False] * n
    out = [bool(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{n} p_unsafe values but {len(out)} {what} flags")
    return out


def _check_inputs(
    p_unsafe: Sequence[float], labels: Sequence[bool], caught: Sequence[bool] | None
) -> tuple[list[float], list[bool], list[bool]]:
    probs = [float(p) for p in p_unsafe]
    flags = [bool(label) for label in labels]
    if len(probs) != len(flags):
        raise ValueError(f"{len(probs)} p_unsafe values but {len(flags)} labels")
    escalated = _flags(caught, len(probs), "caught")
    for index, p in enumerate(probs):
        if math.isnan(p):
            raise ValueError(f"p_unsafe[{index}] is NaN")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_unsafe[{index}] = {p} is outside [0, 1]")
    return probs, flags, escalated


def _percent(rate: float) -> str:
    return f"{100 * rate:g}%"


def calibrate(
    p_unsafe: Sequence[float],
    labels: Sequence[bool],
    *,
    recall_target: float = 0.95,
    max_false_alert_rate: float = 0.05,
    delta: float = 0.1,
    caught: Sequence[bool] | None = None,
    keyword: Sequence[bool] | None = None,
    stratum_only: Sequence[bool] | None = None,
) -> Calibration:
    """Thresholds certified by Learn-then-Test on a labelled calibration split.

    ``labels`` is True for unsafe cases; ``caught`` is True where the rest of the policy
    escalates the case anyway, so such an unsafe case is never missed whatever ``lower``
    is; ``keyword`` is True where the keyword rule would escalate the case unless the head
    alerts or its p_unsafe is under ``keyword_lower`` (certified here first, see the module
    docstring); ``stratum_only`` is True for cases that certify the keyword floor but are
    not drawn like the edges' inputs (a set enriched with keyword scenes), so they stay out
    of the system recall and false-alert risks. Raises ValueError on mismatched lengths, NaN
    or out-of-range probabilities.
    """
    if not 0 < recall_target < 1:
        raise ValueError(f"recall_target must be in (0, 1), got {recall_target}")
    if not 0 < max_false_alert_rate <= 1:
        raise ValueError(f"max_false_alert_rate must be in (0, 1], got {max_false_alert_rate}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    probs, flags, escalated = _check_inputs(p_unsafe, labels, caught)
    each = delta / 2  # Bonferroni: one half for each risk
    max_miss = 1 - recall_target

    named = _flags(keyword, len(probs), "keyword")
    extra = _flags(stratum_only, len(probs), "stratum_only")
    rows = list(zip(probs, flags, escalated, named, extra, strict=True))
    unsafe = [p for p, f, _, _, x in rows if f and not x]
    safe = sorted(p for p, f, _, _, x in rows if not f and not x)
    n_unsafe, n_safe = len(unsafe), len(safe)
    distinct = sorted(set(probs))
    candidates = [0.0, *(p for p in distinct if p > 0.0)]
    # unsafe cases nothing else escalates: those that name a keyword, and the rest
    named_all = sorted(p for p, f, c, k, _ in rows if f and not c and k)
    named_unsafe = sorted(p for p, f, c, k, x in rows if f and not c and k and not x)
    plain_unsafe = sorted(p for p, f, c, k, x in rows if f and not c and not k and not x)

    # The keyword floor, certified on the keyword hazards alone (walk up while certified).
    floor, floor_misses = 0.0, 0
    for t in candidates if named_all else ():
        k = bisect_left(named_all, t)
        if clopper_pearson_upper(k, len(named_all), each) > max_miss:
            break
        floor, floor_misses = t, k

    # Lower: the miss risk grows with t, so test t = 0 first and walk up while certified.
    # A keyword hazard under lower is still escalated from min(floor, margin x t) up.
    lower, misses, recall_ok = 0.0, 0, False
    for t in candidates:
        k = bisect_left(plain_unsafe, t) + bisect_left(named_unsafe, min(floor, KEYWORD_MARGIN * t))
        if clopper_pearson_upper(k, n_unsafe, each) > max_miss:
            break
        lower, misses, recall_ok = t, k, True
    floor = min(floor, KEYWORD_MARGIN * lower)

    # Upper: the false-alert risk grows as t falls, so test t = 1 first and walk down.
    upper, false_alerts, alerts_ok = 1.0, 0, False
    for t in [1.0, *(p for p in reversed(distinct) if p < 1.0)]:
        k = n_safe - bisect_left(safe, t)  # safe cases with p >= t
        if clopper_pearson_upper(k, n_safe, each) > max_false_alert_rate:
            break
        upper, false_alerts, alerts_ok = t, k, True
    upper = max(upper, lower)  # the uncertain band may be empty
    false_alerts = n_safe - bisect_left(safe, upper)

    parts: list[str] = []
    if recall_ok:
        parts.append(
            f"system recall >= {recall_target:g} with probability >= {1 - delta:g} "
            f"({METHOD}, delta {each:g} per risk, on {n_unsafe} unsafe cases, "
            f"{misses} missed below lower {lower:.4g})"
        )
    else:
        needed = min_unsafe_cases(recall_target, each)
        parts.append(
            f"only {n_unsafe} unsafe calibration cases: at least {needed} are needed to "
            f"certify recall {recall_target:g} at delta {delta:g} ({each:g} per risk); "
            "every case the head cannot rule out is escalated"
        )
    if named_all and floor > 0:
        parts.append(
            f"keyword cases pass under keyword_lower {floor:.4g}: recall >= {recall_target:g} "
            f"on the {len(named_all)} hazards that name a keyword ({floor_misses} under it)"
        )
    elif recall_ok:
        needed = min_unsafe_cases(recall_target, each)
        parts.append(
            f"every keyword case the head does not alert on is escalated ({len(named_all)} "
            f"keyword hazards; {needed} would certify a floor)"
        )
    if alerts_ok:
        parts.append(
            f"local false alerts <= {_percent(max_false_alert_rate)} "
            f"({n_safe} safe cases, {false_alerts} at or above upper {upper:.4g})"
        )
    else:
        needed = _min_cases(max_false_alert_rate, each)
        if n_safe < needed:
            parts.append(
                f"only {n_safe} safe calibration cases: at least {needed} are needed to "
                f"certify local false alerts <= {_percent(max_false_alert_rate)}; "
                "nothing alerts locally"
            )
        else:
            parts.append(
                f"local false alerts <= {_percent(max_false_alert_rate)} not certified "
                f"even at upper 1.0 ({n_safe} safe cases); nothing alerts locally"
            )
    return Calibration(
        lower=lower,
        upper=upper,
        recall_target=recall_target,
        max_false_alert_rate=max_false_alert_rate,
        delta=delta,
        guaranteed=recall_ok and alerts_ok,
        n_unsafe=n_unsafe,
        n_safe=n_safe,
        note="; ".join(parts),
        keyword_lower=floor,
    )


def expected_calls(
    calibration: Calibration, p_unsafe: Sequence[float], keyword_hits: Sequence[bool]
) -> int:
    """Cases the policy would escalate for safety (the band, plus keyword cases the head
    does not alert on and scores at or above ``keyword_lower``, when the rule is on)."""
    calls = 0
    for p, hit in zip(p_unsafe, keyword_hits, strict=True):
        zone = calibration.zone(p)
        named = calibration.keywords and hit and zone != ALERT and p >= calibration.keyword_lower
        calls += zone == UNCERTAIN or named
    return calls


def calibrate_policy(
    p_unsafe: Sequence[float],
    labels: Sequence[bool],
    keyword_hits: Sequence[bool],
    *,
    recall_target: float = 0.95,
    max_false_alert_rate: float = 0.05,
    delta: float = 0.1,
    stratum_only: Sequence[bool] | None = None,
) -> Calibration:
    """Thresholds and whether the keyword rule stays (see the module docstring).

    Both candidates are certified at the same ``delta`` each; choosing between two
    certified policies by their calls (not by their misses) keeps the guarantee of the
    one chosen only approximately, so a tie or an uncertified alternative keeps the rule.
    """
    common = {
        "recall_target": recall_target,
        "max_false_alert_rate": max_false_alert_rate,
        "delta": delta,
    }
    with_rule = calibrate(
        p_unsafe, labels, keyword=keyword_hits, stratum_only=stratum_only, **common
    )
    without = calibrate(p_unsafe, labels, stratum_only=stratum_only, **common).model_copy(
        update={"keywords": False}
    )
    if not without.guaranteed or not with_rule.guaranteed:
        return with_rule if with_rule.guaranteed or not without.guaranteed else without
    calls_with = expected_calls(with_rule, p_unsafe, keyword_hits)
    calls_without = expected_calls(without, p_unsafe, keyword_hits)
    if calls_without < calls_with:
        note = (
            f"{without.note}; the safety-keyword rule is off: without it the certified "
            f"policy escalates {calls_without} of {len(labels)} calibration cases, "
            f"with it {calls_with}"
        )
        return without.model_copy(update={"note": note})
    note = (
        f"{with_rule.note}; the safety-keyword rule stays: {calls_with} of {len(labels)} "
        f"calibration cases escalated with it, {calls_without} without"
    )
    return with_rule.model_copy(update={"note": note})
