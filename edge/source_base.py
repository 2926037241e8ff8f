"""What every input source hands the daemon (``Item``) and is (``Source``), and the pixel cap.

``PixelCap`` counts and logs images and frames over ``gate.max_pixels`` (the first, then
every 100th); sources skip them. It knows nothing about files, streams or models.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 16_777_216  # shared.config.GateConfig.max_pixels


@dataclass
class Item:
    index: int  # 0-based position in the source
    source: str  # the spec it came from
    t: float | None  # seconds: media time (files) or capture time (live); None = untimed
    text: str | None = None
    frame: np.ndarray | None = None
    id: str | None = None  # a JSONL line's "id"

    @property
    def kind(self) -> str:
        return "frame" if self.frame is not None else "text"


class Source:
    """Iterate for ``Item``s; ``close()`` ends the iteration (from any thread)."""

    name: str = ""
    live: bool = False
    total: int | None = None  # number of items when known (for progress bars)
    bad: int = 0  # lines, images or frames skipped as unreadable or over gate.max_pixels
    oversized: int = 0  # of those, images or frames over gate.max_pixels

    def __iter__(self) -> Iterator[Item]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PixelCap:
    """Counts and logs the frames over ``max_pixels`` (the first, then every 100th)."""

    def __init__(self, max_pixels: int | None):
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.oversized = 0

    def over(self, pixels: int, dims: str, where: str) -> bool:
        if pixels <= self.max_pixels:
            return False
        self.oversized += 1
        if self.oversized % 100 == 1:
            logger.error(
                "%s: %s pixels is over gate.max_pixels (%d): skipped (%d so far)",
                where,
                dims,
                self.max_pixels,
                self.oversized,
            )
        return True

    def frame_over(self, frame: np.ndarray, where: str) -> bool:
        height, width = frame.shape[:2]
        return self.over(width * height, f"{width} x {height}", where)
