"""Recall estimated from weighted audits: unbiased, with an interval that covers the truth."""

import random

from shared.policy import audit_probability
from shared.rounds import calls_by_reason, round_row
from shared.scoring import AUDIT, Outcome, audit_estimate


def simulate(seed: int, n: int = 3000):
    """A release that passes 30 hazards hidden among low scores; audits drawn as the edge does."""
    rng = random.Random(seed)
    outcomes, truly_missed, caught = [], 0, 0
    for i in range(n):
        hazard = i % 10 == 0
        p = rng.random() * 0.05 if hazard and i % 100 == 0 else rng.random() ** 3 * 0.05
        if hazard and i % 100 != 0:  # caught hazards: the band or an alert
            outcomes.append(Outcome(True, i % 20 == 0, i % 20 != 0, True, True, 0.1, 1, str(i),
                                    ("uncertain_safety",)))  # fmt: skip
            caught += 1
            continue
        truly_missed += hazard
        chance = audit_probability(p, 0.05, 25)
        if rng.random() < chance:
            outcomes.append(
                Outcome(hazard, False, True, False, True, 0.1, 1, str(i), (AUDIT,), chance)
            )
        else:
            outcomes.append(Outcome(hazard, False, False, False, True, 0.1, 1, str(i)))
    return outcomes, caught / (caught + truly_missed), truly_missed


def test_the_horvitz_thompson_estimate_is_unbiased_and_its_interval_covers():
    estimates, covered = [], 0
    for seed in range(200):
        outcomes, truth, missed = simulate(seed)
        est = audit_estimate(outcomes)
        estimates.append(est.missed)
        covered += est.low <= truth <= est.high
    mean = sum(estimates) / len(estimates)
    assert abs(mean - missed) / missed < 0.15  # 30 hazards passed; the mean estimate is near
    assert covered >= 0.85 * 200


def test_no_audited_hazard_gives_the_rule_of_three_bound():
    caught = [Outcome(True, True, False, True, True, 0.1, 1, f"c{i}") for i in range(50)]
    passed = [Outcome(False, False, False, False, True, 0.1, 1, f"p{i}") for i in range(90)]
    audited = [Outcome(False, False, True, False, True, 0.1, 1, f"a{i}", (AUDIT,), 0.1)
               for i in range(10)]  # fmt: skip
    est = audit_estimate(caught + passed + audited)
    assert est.recall == 1.0 and est.high == 1.0
    assert est.low == 50 / (50 + 3 * 100 / 10)


def test_calls_are_split_by_what_they_were_for():
    outs = [
        Outcome(True, False, True, True, True, 0.1, 1, "a", ("safety_keyword", "uncertain_safety")),
        Outcome(False, False, True, True, True, 0.1, 1, "b", ("safety_keyword",)),
        Outcome(False, False, True, True, False, 0.1, 1, "c", ("format_error",)),
        Outcome(False, False, True, True, True, 0.1, 1, "d", (AUDIT,), 0.04),
        Outcome(False, False, False, True, True, 0.1, 1, "e"),
    ]
    assert calls_by_reason(outs) == {"band": 20.0, "keyword": 20.0, "format": 20.0,
                                     "audit": 20.0, "other": 0.0}  # fmt: skip
    row = round_row("r", outs)
    assert row.calls_by_reason["audit"] == 20.0 and row.audit_recall == 1.0


def test_a_round_names_the_hazards_it_missed_and_what_the_edge_saw():
    from edge.demo_scoring import outcome

    passed = {"decision": {"escalate": False, "alert": False}, "alert": False, "release": 2}
    knife = {"escalate": False, "alert": False, "keywords": ["knife"], "keyword_cleared": "words"}
    junction, held = "A cleaner hoses down a live junction box.", "A man holds a knife low."
    outs = [
        outcome({**passed, "input": junction, "p_unsafe": 0.0213}, True),
        outcome({**passed, "input": "A cat sleeps on the sofa."}, False),
        outcome({**passed, "input": "Smoke rises from a bin.", "alert": True}, True),
        outcome({**passed, "input": held, "decision": knife, "p_unsafe": 0.2}, True),
    ]
    row = round_row("round 3", outs)
    assert row.missed == 2 and row.missed_ids == (junction, held)
    assert row.to_json()["missed_why"] == (
        "p_unsafe 0.021; not drawn for audit",
        "p_unsafe 0.200; keywords knife cleared (words); not drawn for audit",
    )
    assert outs[2].passed_why == ""  # alerted: nothing passed
