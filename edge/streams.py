"""Live sources: a webcam or a network stream (RTSP, MJPEG, HLS ...), newest frame only.

A reader thread reads as fast as the camera sends and overwrites one slot, so a slow
consumer skips frames instead of building a backlog. A stream that drops is reopened
with exponential back-off; the outage is logged once when it starts and once when it
ends. A webcam that cannot be opened at all raises one ``SourceError``. Frames over
``gate.max_pixels`` are skipped and counted. It knows nothing about gating or models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np

from edge.source_base import Item, PixelCap, Source
from shared.config import SourceConfig
from shared.errors import SourceError

logger = logging.getLogger(__name__)


class LiveSource(Source):
    """A webcam or network stream read by a thread that keeps only the newest frame."""

    live = True

    def __init__(self, target: int | str, config: SourceConfig, max_pixels: int | None = None):
        self.target, self.config = target, config
        self._pixels = PixelCap(max_pixels)
        self.name = f"webcam:{target}" if isinstance(target, int) else str(target)
        self.frames_read = 0
        self.frames_dropped = 0  # read by the thread but never handed out
        self.outages = 0
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._t = 0.0
        self._closed = threading.Event()
        cap = self._open()
        if cap is None:
            if isinstance(target, int):
                raise SourceError(
                    f"no webcam at index {target} (/dev/video{target} missing or busy)"
                )
            raise SourceError(f"cannot open stream {target} within {config.open_timeout_s:g} s")
        self._thread = threading.Thread(
            target=self._read_loop, args=(cap,), name="source-reader", daemon=True
        )
        self._thread.start()

    def _open(self) -> cv2.VideoCapture | None:
        if isinstance(self.target, int):
            cap = cv2.VideoCapture(self.target)
        else:
            ms = int(self.config.open_timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _read_loop(self, cap: cv2.VideoCapture | None) -> None:
        backoff = self.config.reconnect_initial_s
        down_since: float | None = None
        attempts = 0
        while not self._closed.is_set():
            if cap is None:
                if self._closed.wait(backoff):
                    break
                attempts += 1
                cap = self._open()
                if cap is None:
                    logger.debug("reopening %s failed (attempt %d)", self.name, attempts)
                    backoff = min(backoff * 2, self.config.reconnect_max_s)
                    continue
            ok, frame = cap.read()
            if not ok:
                cap.release()
                cap = None
                if down_since is None:
                    down_since = time.monotonic()
                    self.outages += 1
                    logger.warning("%s: stream lost; reopening with back-off", self.name)
                continue
            if down_since is not None:
                logger.warning(
                    "%s: stream back after %.1f s (%d attempts)",
                    self.name,
                    time.monotonic() - down_since,
                    attempts,
                )
                down_since, attempts = None, 0
                backoff = self.config.reconnect_initial_s
            with self._cond:
                if self._frame is not None:
                    self.frames_dropped += 1
                self._frame, self._t = frame, time.monotonic()
                self._seq += 1
                self.frames_read += 1
                self._cond.notify_all()
        if cap is not None:
            cap.release()

    def __iter__(self) -> Iterator[Item]:
        index = 0
        while not self._closed.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._frame is not None or self._closed.is_set(), 0.5)
                frame, t = self._frame, self._t
                self._frame = None
            if frame is None:
                continue
            if self._pixels.frame_over(frame, f"{self.name} frame"):
                self.bad += 1
                self.oversized = self._pixels.oversized
                continue
            yield Item(index, self.name, t, frame=frame)
            index += 1

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=self.config.open_timeout_s + 1)
