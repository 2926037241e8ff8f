"""The frame gate: which frames are worth a sketch and a model call.

Cheapest test first, so most frames cost almost nothing:

1. ``rate``       sample at ``sample_fps`` (by the frame's timestamp: media time for
                  files, capture time for live streams); no pixel is touched.
2. ``no_motion``  under ``motion_threshold`` of the pixels changed against the last
                  *processed* frame (on a 64x48 grey thumbnail).
3. ``duplicate``  the 64-bit perceptual hash (DCT of a 32x32 thumbnail) is within
                  ``dedupe_hamming`` bits of the last processed frame's.

A frame stopped by 2 or 3 still passes as an ``audit`` once ``audit_every`` frames in
a row were gated, so a scene that changes too slowly for the tests is still looked at.

This module knows nothing about sources, sketches or models: frames in, verdicts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from shared.config import GateConfig

THUMB = (64, 48)  # motion thumbnail (width, height)
PIXEL_DELTA = 25  # grey levels a thumbnail pixel must change by to count as motion

RATE, NO_MOTION, DUPLICATE = "rate", "no_motion", "duplicate"
FIRST, CHANGED, AUDIT = "first", "changed", "audit"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # gated: rate | no_motion | duplicate; passed: first | changed | audit
    motion: float | None = None  # fraction of thumbnail pixels that changed
    distance: int | None = None  # hamming distance of the perceptual hashes
    phash: int | None = None


@dataclass
class GateStats:
    seen: int = 0
    passed: int = 0
    gated: dict[str, int] = field(default_factory=lambda: {RATE: 0, NO_MOTION: 0, DUPLICATE: 0})
    audits: int = 0

    @property
    def gated_total(self) -> int:
        return sum(self.gated.values())

    def to_json(self) -> dict:
        return {
            "seen": self.seen,
            "passed": self.passed,
            "gated": self.gated_total,
            "gated_by_reason": dict(self.gated),
            "audits": self.audits,
        }


def grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def phash(grey_frame: np.ndarray) -> int:
    """64-bit perceptual hash: signs of the 8x8 low-frequency DCT against their median."""
    small = cv2.resize(grey_frame, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class FrameGate:
    """Stateful: remembers the last processed frame. One per source; not thread-safe."""

    def __init__(self, config: GateConfig):
        self.config = config
        self.stats = GateStats()
        self._last_sample_t: float | None = None
        self._last_thumb: np.ndarray | None = None
        self._last_hash: int | None = None
        self._gated_in_row = 0

    def check(self, frame: np.ndarray, t: float | None) -> GateResult:
        """Gate ``frame`` taken at ``t`` seconds (any monotonic clock; None: not sampled)."""
        self.stats.seen += 1
        if t is not None:
            interval = 1.0 / self.config.sample_fps
            last = self._last_sample_t
            # The tolerance makes a 10 fps file sampled at 2 fps take every 5th frame;
            # a clock that went backwards (a restarted stream) samples at once.
            if last is not None and last <= t < last + interval - 1e-6:
                return self._gate(GateResult(False, RATE), count_in_row=False)
            self._last_sample_t = t

        g = grey(frame)
        thumb = cv2.resize(g, THUMB, interpolation=cv2.INTER_AREA)
        if self._last_thumb is None:
            return self._pass(GateResult(True, FIRST, phash=phash(g)), thumb)
        changed = cv2.absdiff(thumb, self._last_thumb) > PIXEL_DELTA
        motion = float(np.count_nonzero(changed)) / changed.size
        audit_due = bool(self.config.audit_every) and self._gated_in_row >= self.config.audit_every
        if motion < self.config.motion_threshold:
            if audit_due:
                return self._pass(GateResult(True, AUDIT, motion, phash=phash(g)), thumb)
            return self._gate(GateResult(False, NO_MOTION, motion))
        h = phash(g)
        distance = hamming(h, self._last_hash) if self._last_hash is not None else 64
        if distance <= self.config.dedupe_hamming:
            if audit_due:
                return self._pass(GateResult(True, AUDIT, motion, distance, h), thumb)
            return self._gate(GateResult(False, DUPLICATE, motion, distance, h))
        return self._pass(GateResult(True, CHANGED, motion, distance, h), thumb)

    def _gate(self, result: GateResult, count_in_row: bool = True) -> GateResult:
        self.stats.gated[result.reason] = self.stats.gated.get(result.reason, 0) + 1
        if count_in_row:
            self._gated_in_row += 1
        return result

    def _pass(self, result: GateResult, thumb: np.ndarray) -> GateResult:
        self.stats.passed += 1
        if result.reason == AUDIT:
            self.stats.audits += 1
        self._gated_in_row = 0
        self._last_thumb = thumb
        self._last_hash = result.phash
        return result

    def reject(self, reason: str) -> None:
        """Count the frame that just passed as gated after all (a later, dearer test said so).

        It stays the reference for motion and hashes, and counts towards the next audit.
        """
        self.stats.passed -= 1
        self.stats.gated[reason] = self.stats.gated.get(reason, 0) + 1
        self._gated_in_row += 1
