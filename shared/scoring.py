"""Every number that says how a deployment or a release does, defined once.

    rates = score([Outcome(...), ...])     # one Outcome per input, seen from the system
    rates.system_recall, rates.teacher_calls_per_100, rates.false_alerts_per_100

An ``Outcome`` is what happened to one input: the truth (None where nobody knows it),
whether the student alerted locally, whether the teacher was called, the student's own
verdict and format, its latency and release. ``score`` turns a list of them into
``Rates``. The release harness (``teacher.release.harness``), the demo's round table and
``gemma-teacher report`` (``shared.rounds``) and the benchmarks all read their numbers
from here, so a "teacher call per 100" or a "false alert per 100" means one thing:

- per 100 inputs: teacher calls and local alerts, over every input answered;
- per 100 labelled inputs: false alerts (a safe input alerted) and missed hazards
  (a hazard neither alerted nor escalated), over the inputs whose truth is known;
- system recall: of the known hazards, the share alerted or escalated (None: none known);
- student accuracy, recall, specificity: the student's own verdict against the truth.

``audit_estimate`` estimates, from the audits alone, how many hazards a release let pass
(the Horvitz-Thompson estimator under Poisson sampling: each audited input counts
1/``audit_p`` times, see ``shared.policy.audit_probability``) and so its system recall,
with an interval; the demo checks it against the truth it knows.

It knows nothing about events, stores, models or releases.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

AUDIT = "audit"  # the policy's reason for a sampled input (shared.policy.AUDIT)


def student_verdict(p_unsafe: float | None, safety: bool | None) -> bool | None:
    """The student's own judgement: its safety head at 0.5 where it has one, else the
    answer's SAFETY line (None when neither said anything)."""
    return p_unsafe >= 0.5 if p_unsafe is not None else safety


@dataclass(frozen=True)
class Outcome:
    truth: bool | None  # unsafe? None: unknown
    alert: bool  # the student alerted locally
    escalated: bool  # the teacher was called
    verdict: bool | None  # the student's own judgement (head at 0.5, else its SAFETY line)
    format_ok: bool
    latency_s: float
    release: int
    id: str = ""
    reasons: tuple[str, ...] = ()  # why it was escalated (or would have been)
    audit_p: float | None = None  # an audit's inclusion probability (None: not audited)
    passed_why: str = ""  # for an input the edge let pass: what it saw (p_unsafe, keywords)

    @property
    def caught(self) -> bool:
        """The system caught it: the student alerted, or the teacher was called."""
        return self.alert or self.escalated

    @property
    def audited(self) -> bool:
        """Escalated only because the audit drew it: the release itself let it pass."""
        return self.escalated and not self.alert and tuple(self.reasons) == (AUDIT,)


@dataclass(frozen=True)
class Rates:
    inputs: int
    labelled: int  # inputs whose truth is known
    hazards: int
    missed: tuple[str, ...]  # ids of the known hazards the system let pass
    teacher_calls_per_100: float  # per 100 inputs
    alerts_per_100: float  # per 100 inputs
    false_alerts_per_100: float | None  # per 100 labelled inputs; None: none labelled
    missed_per_100: float | None  # per 100 labelled inputs
    system_recall: float | None  # None: no known hazard
    student_accuracy: float | None  # None: none labelled
    student_recall: float | None  # None: no known hazard
    student_specificity: float | None  # None: no known safe input
    format_ok: float
    p50_s: float
    p95_s: float
    release: int  # the release that answered most of them


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _share(part: int, whole: int, per: float = 1.0) -> float | None:
    return per * part / whole if whole else None


def missed_hazards(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The known hazards the system let pass (neither alerted nor escalated), in order."""
    return [o for o in outcomes if o.truth and not o.caught]


def score(outcomes: Sequence[Outcome]) -> Rates:
    n = len(outcomes)
    known = [o for o in outcomes if o.truth is not None]
    hazards = [o for o in known if o.truth]
    safe = [o for o in known if not o.truth]
    missed = tuple(o.id for o in missed_hazards(outcomes))
    releases = Counter(o.release for o in outcomes)
    latencies = [o.latency_s for o in outcomes]
    return Rates(
        inputs=n,
        labelled=len(known),
        hazards=len(hazards),
        missed=missed,
        teacher_calls_per_100=_share(sum(o.escalated for o in outcomes), n, 100) or 0.0,
        alerts_per_100=_share(sum(o.alert for o in outcomes), n, 100) or 0.0,
        false_alerts_per_100=_share(sum(o.alert for o in safe), len(known), 100),
        missed_per_100=_share(len(missed), len(known), 100),
        system_recall=_share(len(hazards) - len(missed), len(hazards)),
        student_accuracy=_share(sum(o.verdict == o.truth for o in known), len(known)),
        student_recall=_share(sum(o.verdict is True for o in hazards), len(hazards)),
        student_specificity=_share(sum(o.verdict is False for o in safe), len(safe)),
        format_ok=_share(sum(o.format_ok for o in outcomes), n) or 0.0,
        p50_s=quantile(latencies, 0.5),
        p95_s=quantile(latencies, 0.95),
        release=releases.most_common(1)[0][0] if releases else 0,
    )


@dataclass(frozen=True)
class AuditEstimate:
    passed: int  # inputs the release let pass (the audited among them)
    audited: int
    found: int  # hazards the audits found
    caught: int  # known hazards the release alerted or escalated (not by audit)
    missed: float  # estimated hazards among the passed inputs
    recall: float | None  # caught / (caught + missed); None: nothing to estimate from
    low: float | None  # the interval's ends (see ``audit_estimate``)
    high: float | None


def audit_estimate(outcomes: Sequence[Outcome], z: float = 1.96) -> AuditEstimate:
    """A release's system recall estimated from its audits, as a deployment can.

    Hazards among the passed inputs: the Horvitz-Thompson sum of 1/``audit_p`` over the
    audited hazards, its variance sum((1 - p)/p^2). The interval is that estimate +-
    ``z`` standard errors, mapped through caught/(caught + missed); where the audits found
    no hazard it is the rule of three instead (at most 3 hazards in the sample, spread
    like the sample: 3 x passed / audited). Caught hazards are the reviewed ones among
    the non-audit escalations and the alerts known to be hazards (an alert whose truth
    is unknown counts as one: a person was told).

    Known bias: ``audit_p`` is the probability of the draw; an audit the budget or the
    cooldown then suppresses is not recorded as audited, so the net probability is a
    little lower than the weight assumes and the missed count is a little low.
    """
    passed = [o for o in outcomes if not o.alert and (not o.escalated or o.audited)]
    audits = [o for o in passed if o.audited and o.audit_p and o.truth is not None]
    found = [o.audit_p for o in audits if o.truth]
    caught = sum(
        1
        for o in outcomes
        if o.caught and not o.audited and (o.truth or (o.truth is None and o.alert))
    )
    return estimate_recall(len(passed), len(audits), found, caught, z)


def estimate_recall(
    passed: int, audited: int, found: Sequence[float], caught: int, z: float = 1.96
) -> AuditEstimate:
    """``audit_estimate`` from its counts, for callers that count in SQL (the console):
    ``passed`` inputs the release let pass, ``audited`` of them labelled by an audit,
    ``found`` the ``audit_p`` of each hazard those audits found, ``caught`` hazards."""
    missed = sum(1 / p for p in found)
    if not audited or caught + missed == 0:
        return AuditEstimate(passed, audited, len(found), caught, missed, None, None, None)
    recall = caught / (caught + missed)
    if found:
        se = math.sqrt(sum((1 - p) / p**2 for p in found))
        low_m, high_m = max(missed - z * se, 0.0), missed + z * se
    else:
        low_m, high_m = 0.0, 3.0 * passed / audited
    share = lambda m: caught / (caught + m) if caught + m else 1.0  # noqa: E731
    return AuditEstimate(
        passed, audited, len(found), caught, missed, recall, share(high_m), share(low_m)
    )
