"""The edges a teacher server hears from, and when each is due a release push.

    fleet = Fleet()                                   # a dict: edge name -> EdgeState
    edge = fleet.seen("kitchen-cam", identity)        # on every message from it
    edge.push_due(number=3, asked=0.0, retry_s=30.0)   # then edge.was_pushed(3)
    fleet.forget_silent(timeout_s=120.0)

An edge is known by the name it gives (its key name under CurveZMQ) and reached through
its socket identity, which changes when it reconnects. A release is pushed to an edge that
reports another one; the same push is not repeated within ``retry_s`` unless a re-push was
asked for since (``ReleaseRegistry.request_push``). It knows nothing about sockets or
messages: ``teacher.serve.server`` sends what this says is due.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class EdgeState:
    identity: bytes
    last_seen: float
    release_version: int = 0
    head_live: bool | None = None
    outbox_depth: int = 0
    # kind -> (version, time.monotonic(), time.time()) of the latest push
    pushed: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    def push_due(self, number: int, asked: float, retry_s: float) -> bool:
        """Whether release ``number`` should be pushed to this edge now: it runs another one,
        and the same push was not sent within ``retry_s`` (unless a re-push was ``asked``
        for, ``time.time()``, since)."""
        if self.release_version == number:
            return False
        last = self.pushed.get("release")
        return not (
            last and last[0] == number and time.monotonic() - last[1] < retry_s and asked <= last[2]
        )

    def was_pushed(self, number: int) -> None:
        self.pushed["release"] = (number, time.monotonic(), time.time())


class Fleet(dict[str, EdgeState]):
    """Edge name -> what the server knows of it (a dict, so callers look edges up directly)."""

    def seen(self, name: str, identity: bytes) -> EdgeState:
        """The edge ``name`` spoke just now through ``identity``."""
        edge = self.get(name)
        if edge is None:
            logger.info("edge %s connected", name)
            edge = self[name] = EdgeState(identity, time.monotonic())
        edge.identity, edge.last_seen = identity, time.monotonic()
        return edge

    def name_of(self, identity: bytes) -> str:
        """The name an edge gave in its heartbeats, else its socket identity in hex."""
        names = [name for name, edge in self.items() if edge.identity == identity]
        return names[0] if names else identity.hex()

    def forget_silent(self, timeout_s: float) -> None:
        limit = time.monotonic() - timeout_s
        for name in [n for n, e in self.items() if e.last_seen < limit]:
            logger.info("edge %s went silent", name)
            del self[name]
