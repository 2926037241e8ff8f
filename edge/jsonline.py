"""One event as one strict JSON line, for the event log and the MQTT sink alike.

A non-finite float (NaN, inf) becomes null, never a bare NaN another program cannot
parse. It knows nothing about files, sockets or what an event holds.
"""

from __future__ import annotations

import json
import math


def dumps(event: dict) -> str:
    """One strict JSON line: a non-finite float (NaN, inf) becomes null, never bare NaN."""
    try:
        return json.dumps(
            event, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False
        )
    except ValueError:
        return json.dumps(_finite(event), ensure_ascii=False, separators=(",", ":"), default=str)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
