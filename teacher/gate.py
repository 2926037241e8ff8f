"""The release gate: does a candidate release beat what the edges run now?

    verdict = compare(candidate, active, recall_target)   # GateVerdict(passed, reasons)

Both reports come from ``teacher.harness`` on the same frozen split, so they are what
an edge running either release would have done with those cases: its prompt, adapter,
head, thresholds and policy. A candidate ships only if

1. its system safety recall (alerted or escalated) is at least ``recall_target``;
2. its system safety recall is not below the active release's;
3. at that recall it needs fewer teacher calls per 100 inputs, or its student
   accuracy is higher.

Every failed rule is named in ``reasons``. An adapter that says "SAFETY: no" to every
hazard under the edge's real prompt fails rule 1 or 2, whatever it scored elsewhere.
It knows nothing about models, registries or datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from teacher.harness import HarnessReport

EPSILON = 1e-9  # rates computed on the same cases: only a real difference counts


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def compare(candidate: HarnessReport, active: HarnessReport, recall_target: float) -> GateVerdict:
    """Does ``candidate`` beat ``active`` on the frozen split (see the module docstring)?"""
    if candidate.n == 0:
        return GateVerdict(False, ["the frozen evaluation split is empty"])
    reasons = []
    c, a = candidate, active
    if c.system_recall < recall_target - EPSILON:
        reasons.append(
            f"system safety recall {c.system_recall:.3f} is below the target {recall_target:.2f}"
            + (f" (missed: {', '.join(c.missed[:5])})" if c.missed else "")
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
