"""What a run of the daemon did: its counters, as the last event line and as text.

It knows nothing about models or sockets; ``edge.daemon`` counts, this says.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from edge.gate import GateStats
from edge.source_base import Source
from shared.release import Release


@dataclass
class RunStats:
    items: int = 0  # taken from the source
    model_calls: int = 0
    answered: int = 0
    backend_errors: int = 0
    escalations: int = 0
    escalation_reasons: Counter = field(default_factory=Counter)
    suppressed: Counter = field(default_factory=Counter)
    safety_events: int = 0
    reviews: int = 0
    started: float = field(default_factory=time.monotonic)


def summary_event(
    s: RunStats, g: GateStats, source: Source, release: Release, adapter_version: int, now: float
) -> dict:
    """The run's last event line."""
    return {
        "type": "summary",
        "time": now,
        "source": source.name,
        "elapsed_s": round(time.monotonic() - s.started, 3),
        "inputs": s.items,
        "frames": g.to_json(),
        "model_calls": s.model_calls,
        "answered": s.answered,
        "backend_errors": s.backend_errors,
        "escalations": s.escalations,
        "escalation_reasons": dict(s.escalation_reasons),
        "suppressed": dict(s.suppressed),
        "safety_events": s.safety_events,
        "bad_inputs": source.bad,
        "oversized_inputs": source.oversized,
        "skill_version": release.skill.version,
        "adapter_version": adapter_version,
        "release": release.version,
    }


def summary_text(s: RunStats, g: GateStats, source: Source, queued: bool) -> str:
    """What a person reads on stderr when the run ends."""
    lines = [
        f"gemma-edge: {s.items} inputs from {source.name} in "
        f"{time.monotonic() - s.started:.1f} s; {s.model_calls} model calls, "
        f"{s.answered} answered"
    ]
    if g.seen:
        gated = ", ".join(f"{k} {v}" for k, v in g.gated.items() if v) or "none"
        lines.append(
            f"  frames: {g.seen} seen, {g.gated_total} gated ({gated}), "
            f"{g.passed} passed ({g.audits} audits)"
        )
    reasons = ", ".join(f"{k} {v}" for k, v in s.escalation_reasons.most_common())
    held = ", ".join(f"{k} {v}" for k, v in s.suppressed.items())
    where = "queued for the teacher" if queued else "recorded in the events"
    lines.append(
        f"  escalations: {s.escalations} {where}"
        + (f" (by reason: {reasons})" if reasons else "")
        + (f"; held back: {held}" if held else "")
    )
    lines.append(
        f"  safety events: {s.safety_events}; backend errors: {s.backend_errors}; "
        f"bad inputs skipped: {source.bad}"
        + (f" ({source.oversized} over gate.max_pixels)" if source.oversized else "")
    )
    return "\n".join(lines)


def status_doc(daemon) -> dict:
    """A few numbers for heartbeats on other channels (the MQTT sink)."""
    return {
        "release": daemon.release.version,
        "head_live": daemon.head_live,
        "answered": daemon.stats.answered,
        "escalations": daemon.stats.escalations,
    }
