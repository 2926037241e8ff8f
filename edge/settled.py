"""What the edge settled by itself, sampled for the teacher's self-training.

    sampler = SettledSampler(share=0.25, per_minute=30)
    msg = sampler.pick(edge_id, now, processed, text, kind, decision, release)  # or None

Most inputs never reach the teacher: the release alerts (``p_unsafe >= upper``) or rules
them out (``p_unsafe < lower``) by itself. A ``share`` of those, drawn by a hash of the
input and its count, at most ``per_minute`` a minute (a token bucket), travel as
``Settled`` messages through the outbox, redacted here first (``shared.redact``), so the
teacher can train the next head on the site's own scenes (``teacher.data.traffic``).
Escalated inputs never are: the teacher has them. It knows nothing about sockets.
"""

from __future__ import annotations

import hashlib

from shared.messages import Settled
from shared.redact import redact


class SettledSampler:
    def __init__(self, share: float, per_minute: int):
        self.share = share
        self.per_minute = per_minute
        self._tokens = float(per_minute)
        self._last: float | None = None
        self.sent = 0
        self.capped = 0  # picked but over the rate

    def _draw(self, processed: int, text: str) -> float:
        digest = hashlib.sha256(f"settled:{processed}:{text}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def pick(
        self, edge_id: str, now: float, processed: int, text: str, kind: str, decision, release
    ) -> Settled | None:
        """The ``Settled`` message for this input, or None (escalated, no head, not drawn,
        over the rate)."""
        if decision.escalate or decision.p_unsafe is None or not self.share or not text.strip():
            return None
        if self._draw(processed, text) >= self.share:
            return None
        if self._last is not None:
            self._tokens = min(
                self.per_minute, self._tokens + (now - self._last) * self.per_minute / 60
            )
        self._last = now
        if self._tokens < 1:
            self.capped += 1
            return None
        self._tokens -= 1
        self.sent += 1
        digest = hashlib.sha256(f"{edge_id}:{processed}:{now}:{text}".encode()).hexdigest()[:24]
        return Settled(
            case_id=f"settled-{digest}",
            edge_id=edge_id,
            created_at=now,
            kind=kind,
            input=redact(" ".join(text.split()))[:16_384],
            alert=bool(decision.alert),
            p_unsafe=min(max(float(decision.p_unsafe), 0.0), 1.0),
            release_version=release.version,
        )
