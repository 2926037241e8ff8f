"""The demo's rounds: a site's scenes per round, and how they are scored, from the edge's
events and against the starting release.

``scenario`` reads a site's scene file (``--scenes``; the bundled factory by default) into
rounds.

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
from importlib.resources import files
from pathlib import Path

from shared.errors import GemmaEdgeError
from shared.evaluation import LabeledCase, load_labeled
from shared.scoring import Outcome, student_verdict


def scenario_path() -> Path:
    return Path(str(files("shared").joinpath("data/demo/scenes.jsonl")))


def scenario(
    rounds: int | None, per_round: int | None, path: Path | None = None
) -> list[list[LabeledCase]]:
    """The first ``per_round`` scenes of each of the first ``rounds`` rounds of a site's
    scene file (``--scenes``; the bundled scenario by default). ``None``: all of them."""
    path = path or scenario_path()
    if not path.is_file():
        raise GemmaEdgeError(f"--scenes {path}: no such file")
    by_round: dict[int, list[LabeledCase]] = {}
    docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for n, (doc, case) in enumerate(zip(docs, load_labeled(path), strict=True), 1):
        if not isinstance(doc.get("round"), int):
            raise GemmaEdgeError(f"{path} line {n}: a demo scene needs an integer 'round'")
        by_round.setdefault(doc["round"], []).append(case)
    rounds = len(by_round) if rounds is None else rounds
    if rounds > len(by_round):
        raise GemmaEdgeError(
            f"--rounds {rounds}: {path.name} has {len(by_round)} rounds of fresh scenes"
        )
    most = min(len(cases) for cases in by_round.values())
    per_round = most if per_round is None else per_round
    if per_round > most:
        raise GemmaEdgeError(f"--per-round {per_round}: each round has {most} scenes")
    return [by_round[r][:per_round] for r in sorted(by_round)[:rounds]]


def outcome(record: dict, truth: bool) -> Outcome:
    """An answer event (its ``alert`` says what the edge did, a local alert of an
    escalation it could not queue included) or a harness case, as an Outcome."""
    decision = record["decision"]
    alert = bool(record.get("alert", decision.get("alert")))
    return Outcome(
        truth=truth,
        alert=alert,
        escalated=bool(decision["escalate"]),
        verdict=student_verdict(record.get("p_unsafe"), record.get("safety")),
        format_ok=bool(record.get("format_ok")),
        latency_s=float(record.get("latency_s") or 0.0),
        release=int(record.get("release") or 0),
        id=str(record.get("input") or ""),  # a missed hazard is named in the round's row
        reasons=tuple(decision.get("reasons") or ()) if decision["escalate"] else (),
        audit_p=decision.get("audit_p"),
        passed_why="" if alert or decision["escalate"] else passed_why(record),
    )


def passed_why(record: dict) -> str:
    """What the edge saw in an input it let pass: its p_unsafe (under the release's
    ``lower``), the safety keywords the release cleared and how (its floor, or its memory
    of reviewed safe cases by their words or sketches), and that the audit did not draw it."""
    decision, p = record["decision"], record.get("p_unsafe")
    seen = [f"p_unsafe {p:.3f}" if p is not None else "no p_unsafe"]
    if decision.get("keywords"):
        how = decision.get("keyword_cleared")
        how = f" ({how})" if isinstance(how, str) and how else ""
        seen.append(f"keywords {', '.join(decision['keywords'])} cleared{how}")
    return "; ".join([*seen, "not drawn for audit"])


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
