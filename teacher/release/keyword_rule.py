"""What a release build remembers for the safety-keyword rule, and which calibration cases
that memory clears (counted as passed when the thresholds are certified, leave-one-out).

    memory, cleared = word_memory(policy, reviewed, cal_cases)        # content-word hashes
    head, cleared = with_sketches(head, remembered, cal_cases, x_cal, policy)  # features

The rule itself, and what an edge does with the memory, is ``shared.keyword_memory`` and
``shared.policy``; ``teacher.release.head_fit`` calls these while it calibrates.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared.evaluation import LabeledCase
from shared.head import SafetyHead
from shared.keyword_memory import (
    Memory,
    cleared_leave_one_out,
    near_safe_leave_one_out,
    remember,
    remember_sketches,
)
from shared.policy import find_keywords


def word_memory(
    policy, reviewed: list[LabeledCase], cal_cases: list[LabeledCase]
) -> tuple[Memory, list[bool]]:
    """The reviewed keyword cases as content-word hashes, and for each calibration case
    whether the memory of the *other* reviewed cases clears it."""
    keywords, exceptions = tuple(policy.safety_keywords), tuple(policy.keyword_exceptions)
    pool = list({c.id: c for c in reviewed}.values())
    rows = [(c.input, c.safety, find_keywords(c.input, keywords, exceptions)) for c in pool]
    loo = dict(zip((c.id for c in pool), cleared_leave_one_out(rows, keywords), strict=True))
    return remember(rows, keywords), [loo.get(c.id, False) for c in cal_cases]


def with_sketches(
    head: SafetyHead,
    remembered: list[tuple[LabeledCase, np.ndarray]],
    cal_cases: list[LabeledCase],
    x_cal: np.ndarray,
    policy,
) -> tuple[SafetyHead, list[bool]]:
    """``head`` with the keyword sketches of ``remembered`` (reviewed cases and settled
    alerts, with their features), and for each calibration case whether the sketches of
    the *other* cases clear every keyword it names (``shared.keyword_memory``)."""
    keywords, exceptions = tuple(policy.safety_keywords), tuple(policy.keyword_exceptions)
    seen: dict[str, int] = {}
    rows = []
    for c, row in remembered:  # a case reviewed and also settled counts once, as reviewed
        if c.id not in seen and (matched := find_keywords(c.input, keywords, exceptions)):
            seen[c.id] = len(seen)
            rows.append((seen[c.id], c.safety, matched, row))
    if not rows:
        return head, [False] * len(cal_cases)
    vectors = head.sketch(np.array([r[3] for r in rows]))
    sketches, owner_of_row = remember_sketches(vectors, [r[1] for r in rows], [r[2] for r in rows])
    queries = head.sketch(np.asarray(x_cal))
    owners = [seen.get(c.id, -1) for c in cal_cases]
    near = near_safe_leave_one_out(sketches, queries, owners, owner_of_row)
    matched = [find_keywords(c.input, keywords, exceptions) for c in cal_cases]
    cleared = [bool(m) and set(m) <= n for m, n in zip(matched, near, strict=True)]
    return dataclasses.replace(head, sketches=sketches), cleared
