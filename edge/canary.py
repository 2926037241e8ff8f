"""Before an edge activates a release: can it run it as the teacher certified it?

    problems = check_release(student, release, policy_config)   # [] or the reasons
    if problems: refuse the push (the teacher gets the reasons), keep what runs

Two kinds of checks, cheapest first:

- **what it is**: the safety head reads layers this model has, at this model's width
  (``shared.student.head_problem``); its tensors are finite with a non-zero std and its
  thresholds lie in [0, 1] with lower <= upper (``shared.head`` and
  ``shared.calibration`` refuse anything else when the release loads);
- **what it does**: every canary in the manifest (inputs of the teacher's frozen split
  with the p(unsafe) and decision its harness computed) is answered through this edge's
  own ``Student`` with the candidate release, and decided by this edge's policy. A
  p(unsafe) that is missing or not finite, one further than ``canary_tolerance`` from the
  teacher's, or a canary hazard that would pass (neither alerted nor escalated) refuses
  the release. This is what catches an engine that computes differently from the
  teacher's, or a head that reads the wrong layers of the right width.

The canaries run inside ``Student.trial``: answers to live inputs wait for them (a few
model calls) and the release that ran before is restored whatever happens.

It knows nothing about sockets or files: ``edge.daemon.EdgeDaemon.prepare_release``
calls it from the link's thread before ``edge.updates`` moves the ``active`` pointer.
"""

from __future__ import annotations

import math

from shared.config import PolicyConfig
from shared.policy import PolicyContext, decide, needs_sentence, text_scene_key
from shared.release import Release
from shared.student import Student, head_problem


def check_release(student: Student, release: Release, policy: PolicyConfig) -> list[str]:
    """Everything that stops this edge from running ``release`` as certified ([] if none)."""
    problem = head_problem(student.backend, release.head)
    if problem is not None:
        return [problem]
    if not release.manifest.canaries:
        return []
    tolerance = release.manifest.canary_tolerance
    problems: list[str] = []
    with student.trial(release):
        for number, canary in enumerate(release.manifest.canaries, 1):
            name = f"canary {number} ({canary.id or canary.input[:40]!r})"
            context = PolicyContext(
                now=0.0,
                processed=1,
                input_text=canary.input,
                scene_key=text_scene_key(canary.input),
                calibration=release.calibration,
            )
            try:  # judged as this edge judges (answer: when_needed included)
                answered = student.answer(
                    canary.input, None, lambda a, c=context: needs_sentence(a, c, policy)
                )
            except Exception as exc:  # a canary that cannot be judged refuses the release
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            p = answered.answer.p_unsafe
            if release.head is not None and (p is None or not math.isfinite(p)):
                problems.append(f"{name}: the safety head gave p_unsafe = {p}")
                continue
            if p is not None and canary.p_unsafe is not None:
                if abs(p - canary.p_unsafe) > tolerance:
                    problems.append(
                        f"{name}: p_unsafe {p:.4f} here, {canary.p_unsafe:.4f} on the teacher "
                        f"(tolerance {tolerance:g})"
                    )
            decision = decide(answered.answer, context, policy)
            if canary.unsafe and decision.outcome == "pass":
                problems.append(
                    f"{name}: a hazard would pass here (p_unsafe {p}); the teacher's harness "
                    f"decided {canary.decision}"
                )
    return problems
