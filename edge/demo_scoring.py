"""How the demo scores its rounds: from the edge's events, and against the starting release.

``outcome`` turns one record into a ``shared.scoring.Outcome``: an edge's answer event
or a case of the teacher's harness (``gemma-teacher eval --json``), which carry the
same fields. ``write_round_labels`` writes every round's inputs as one labelled file
(ids ``r<round>:<id>``), and ``start_outcomes`` reads the harness's answers to it back
per round: the same inputs answered by the release the edge started with, in round
order, as an edge that never got a new release would have met them. Fresh rounds differ
in difficulty, so a falling line is the loop only where it falls below this one.

It knows the record fields, nothing about processes or models.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.evaluation import LabeledCase
from shared.scoring import Outcome, student_verdict


def outcome(record: dict, truth: bool) -> Outcome:
    """An answer event (its ``alert`` says what the edge did, a local alert of an
    escalation it could not queue included) or a harness case, as an Outcome."""
    decision = record["decision"]
    return Outcome(
        truth=truth,
        alert=bool(record.get("alert", decision.get("alert"))),
        escalated=bool(decision["escalate"]),
        verdict=student_verdict(record.get("p_unsafe"), record.get("safety")),
        format_ok=bool(record.get("format_ok")),
        latency_s=float(record.get("latency_s") or 0.0),
        release=int(record.get("release") or 0),
        reasons=tuple(decision.get("reasons") or ()) if decision["escalate"] else (),
        audit_p=decision.get("audit_p"),
    )


def write_round_labels(path: Path, rounds: list[list[LabeledCase]]) -> None:
    with Path(path).open("w") as fh:
        for index, cases in enumerate(rounds):
            for case in cases:
                doc = {
                    "id": f"r{index}:{case.id}",
                    "input": case.input,
                    "safety": case.safety,
                    "keywords": list(case.keywords),
                }
                fh.write(json.dumps(doc) + "\n")


def start_outcomes(eval_json: Path) -> dict[int, list[Outcome]]:
    """Round -> outcomes, from ``gemma-teacher eval --json`` on ``write_round_labels``'s file."""
    per_round: dict[int, list[Outcome]] = {}
    for case in json.loads(Path(eval_json).read_text())["reports"][0]["cases"]:
        index = int(case["id"].split(":", 1)[0][1:])
        per_round.setdefault(index, []).append(outcome(case, case["label"]))
    return per_round
