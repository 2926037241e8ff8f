"""The ``Escalation`` an edge sends for one input: built so that it always can be.

``build_escalation`` puts the input, the model's answer, the decision and the release
that answered into the wire message. A value the model computed that is not a
probability is left out and the reasons say ``judge_error``; a field the message cannot
carry (pydantic refuses it) is retried with the model's fields left out, so the case
itself always travels. It knows nothing about sockets or the outbox.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from edge.source_base import Item
from shared.answer import Answer
from shared.messages import Escalation
from shared.policy import JUDGE_ERROR, Decision
from shared.release import Release

logger = logging.getLogger(__name__)

NOT_QUEUED = "not_queued"  # an escalation the outbox could not take: alerted locally


def alert_here(event: dict) -> None:
    """The teacher will not see this input: the edge alerts on it itself."""
    event["alert"] = True
    event["decision"]["reasons"].append(NOT_QUEUED)


def probability(value: float | None) -> float | None:
    """``value`` if it is a probability, else None."""
    return value if value is None or 0.0 <= value <= 1.0 else None


def build_escalation(
    case_id: str,
    edge_id: str,
    now: float,
    item: Item,
    text: str,
    raw: str,
    answer: Answer,
    decision: Decision,
    release: Release,
    adapter_version: int,
    has_frame: bool,
    error: str = "",
) -> Escalation:
    reasons = list(decision.reasons)
    p_unsafe, confidence = probability(answer.p_unsafe), probability(answer.best_confidence)
    if (p_unsafe, confidence) != (answer.p_unsafe, answer.best_confidence):
        reasons.append(JUDGE_ERROR)  # what the model computed is not a probability
    fields = {
        "case_id": case_id,
        "edge_id": edge_id,
        "created_at": now,
        "source": item.source[-1024:],
        "kind": item.kind,
        "input": text[:16_384],
        "answer": (raw or (f"[{error}]" if error else ""))[:16_384],
        "safety": answer.safety,
        "confidence": confidence,
        "reasons": list(dict.fromkeys(reasons)),
        "safety_keyword": decision.safety_keyword,
        "skill_version": release.skill.version,
        "adapter_version": adapter_version,
        "release_version": release.version,
        "p_unsafe": p_unsafe,
        "alert": decision.alert,
        "audit_p": decision.audit_p,
        "has_frame": has_frame,
    }
    try:
        return Escalation(**fields)
    except ValidationError as exc:  # keep the case: the fields that cannot be wrong
        logger.error(
            "escalation %s: %s; sending it without the model's fields",
            case_id,
            exc.errors()[0]["msg"],
        )
        fields.update(
            safety=None,
            confidence=None,
            p_unsafe=None,
            answer="",
            reasons=list(dict.fromkeys([*reasons, JUDGE_ERROR]))[:16],
        )
        fields["source"] = str(fields["source"])[-256:] or "?"
        return Escalation(**fields)
