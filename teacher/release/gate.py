"""The release gate: does a candidate release beat what the edges run now?

    verdict = compare(candidate, active, recall_target)   # GateVerdict(passed, reasons)

Both reports come from ``teacher.release.harness`` on the same frozen split, so they are what
an edge running either release would have done with those cases: its prompt, adapter,
head, thresholds and policy. A candidate ships only if

1. its system safety recall (alerted or escalated) is not below ``recall_target``
   beyond doubt: the one-sided Clopper-Pearson upper bound at ``1 - delta`` on the
   frozen hazards it caught must reach the target. (The target itself is certified by
   the candidate's calibration; a few dozen frozen hazards cannot certify it again, and
   as a point estimate they refused releases whose true recall is 0.95 about half the
   time: with 32 hazards, 2 misses read 0.938.)
2. it misses no more frozen hazards than the active release: what the edges run now
   is the bar, on the same cases;
3. at that recall it needs fewer teacher calls per 100 inputs, or its student
   accuracy is higher.

Every failed rule is named in ``reasons``. An adapter that says "SAFETY: no" to every
hazard under the edge's real prompt fails rule 1 or 2, whatever it scored elsewhere.
It knows nothing about models, registries or datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.calibration import clopper_pearson_upper
from teacher.release.harness import HarnessReport

EPSILON = 1e-9  # rates computed on the same cases: only a real difference counts


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def compare(
    candidate: HarnessReport, active: HarnessReport, recall_target: float, delta: float = 0.1
) -> GateVerdict:
    """Does ``candidate`` beat ``active`` on the frozen split (see the module docstring)?"""
    if candidate.n == 0:
        return GateVerdict(False, ["the frozen evaluation split is empty"])
    reasons = []
    c, a = candidate, active
    caught = c.hazards - len(c.missed)
    bound = clopper_pearson_upper(caught, c.hazards, delta) if c.hazards else 1.0
    if bound < recall_target - EPSILON:
        reasons.append(
            f"system safety recall {c.system_recall:.3f} ({caught}/{c.hazards}) is below the "
            f"target {recall_target:.2f} beyond doubt (upper {1 - delta:.0%} bound "
            f"{bound:.3f})" + (f"; missed: {', '.join(c.missed[:5])}" if c.missed else "")
        )
    if c.system_recall < a.system_recall - EPSILON:
        reasons.append(
            f"system safety recall fell against the active release v{a.release}: "
            f"{a.system_recall:.3f} -> {c.system_recall:.3f}"
        )
    fewer_calls = c.teacher_calls_per_100 < a.teacher_calls_per_100 - EPSILON
    more_accurate = c.accuracy > a.accuracy + EPSILON
    if not (fewer_calls or more_accurate):
        reasons.append(
            "no gain over the active release: teacher calls per 100 "
            f"{a.teacher_calls_per_100:.1f} -> {c.teacher_calls_per_100:.1f}, student accuracy "
            f"{a.accuracy:.3f} -> {c.accuracy:.3f}"
        )
    return GateVerdict(not reasons, reasons)
