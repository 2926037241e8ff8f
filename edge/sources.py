"""Input sources: where the daemon's inputs come from, as one stream of ``Item``s.

``open_source(spec, config)`` understands:

    0, 1, ...                    a webcam by index                       (live)
    rtsp://..., http(s)://...    a network stream (RTSP, MJPEG, HLS ...) (live)
    video.avi                    a video file, at its own pace or --realtime
    frames/ or 'shots/*.jpg'     a folder or glob of images, in name order
    notes.txt or -               text, one input per line (- is stdin); a line that is
                                 a JSON object uses its "input" field
    cases.jsonl                  JSON lines, each with an "input" field (and maybe "id")
    scenes                       the bundled sample scenes (shared/data/dev_scenes.jsonl)

Live sources (``edge.streams``) keep only the newest frame, and reopen a stream that
drops with exponential back-off. A webcam or file that cannot be
opened at all raises one ``SourceError``. A bad line or unreadable image inside a
readable source is logged with its place, counted in ``bad``, and skipped. So is an
image or frame over ``gate.max_pixels`` (``oversized``): an image file's size is read
from its header before anything is decoded, so a small file that would decode to
gigabytes never is.

This module knows nothing about gating, models or events.
"""

from __future__ import annotations

import glob
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import IO

import cv2

from edge.source_base import Item, PixelCap, Source
from edge.streams import LiveSource
from shared.config import SourceConfig
from shared.errors import SourceError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
TEXT_SUFFIXES = {".txt", ".text", ".lines", ".jsonl", ".ndjson"}
STREAM = re.compile(r"^(rtsps?|rtmp|https?|udp|tcp|srt)://", re.IGNORECASE)
SCENES_ALIAS = "scenes"


# ---------------------------------------------------------------- text
class TextSource(Source):
    def __init__(self, name: str, opener: Callable[[], IO[str]], jsonl: bool):
        self.name, self._opener, self._jsonl = name, opener, jsonl
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Item]:
        index = 0
        with self._opener() as stream:
            for number, line in enumerate(stream, 1):
                if self._closed.is_set():
                    return
                line = line.strip()
                if not line or line.startswith("#") and not self._jsonl:
                    continue
                text, item_id = line, None
                if self._jsonl or line.startswith("{"):
                    parsed = self._parse(line, number)
                    if parsed is None:
                        continue
                    text, item_id = parsed
                yield Item(index, self.name, None, text=text, id=item_id)
                index += 1

    def _parse(self, line: str, number: int) -> tuple[str, str | None] | None:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            return self._skip(number, f"not JSON ({exc.msg})")
        if not isinstance(doc, dict):
            return self._skip(number, "not a JSON object")
        text = doc.get("input")
        if not isinstance(text, str) or not text.strip():
            return self._skip(number, 'no non-empty string "input" field')
        item_id = doc.get("id")
        return text.strip(), str(item_id) if item_id is not None else None

    def _skip(self, number: int, why: str) -> None:
        self.bad += 1
        logger.error("%s line %d skipped: %s", self.name, number, why)
        return None

    def close(self) -> None:
        self._closed.set()


def _text_file(path: Path, name: str) -> TextSource:
    try:
        with path.open(encoding="utf-8") as fh:
            total = sum(1 for line in fh if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read text source {path}: {exc}") from None
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    source = TextSource(name, lambda: path.open(encoding="utf-8"), jsonl)
    source.total = total
    return source


def _bundled_scenes() -> TextSource:
    resource = files("shared").joinpath("data/dev_scenes.jsonl")
    data = resource.read_text(encoding="utf-8")
    source = TextSource(SCENES_ALIAS, lambda: _StringIO(data), jsonl=True)
    source.total = sum(1 for line in data.splitlines() if line.strip())
    return source


class _StringIO:
    def __init__(self, data: str):
        self._lines = data.splitlines(keepends=True)

    def __enter__(self):
        return iter(self._lines)

    def __exit__(self, *exc) -> None:
        return None


# ---------------------------------------------------------------- images
def image_pixels(path: Path) -> tuple[int, str] | None:
    """(pixels, "W x H") from an image file's header, without decoding it; None if the
    header cannot be read. A header past Pillow's own bomb limit counts as too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as exc:
        return 2**62, f"over Pillow's limit ({exc})"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return width * height, f"{width} x {height}"


class ImageSource(Source):
    def __init__(self, name: str, paths: list[Path], max_pixels: int | None = None):
        self.name, self._paths, self.total = name, paths, len(paths)
        self._cap = PixelCap(max_pixels)
        self._closed = threading.Event()

    @property
    def oversized(self) -> int:
        return self._cap.oversized

    def __iter__(self) -> Iterator[Item]:
        index = 0
        for path in self._paths:
            if self._closed.is_set():
                return
            size = image_pixels(path)
            if size is None:
                self.bad += 1
                logger.error("%s: unreadable image skipped (no image header)", path)
                continue
            if self._cap.over(*size, str(path)):
                self.bad += 1
                continue
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                self.bad += 1
                logger.error("%s: unreadable image skipped", path)
                continue
            yield Item(index, str(path), None, frame=frame)
            index += 1

    def close(self) -> None:
        self._closed.set()


# ---------------------------------------------------------------- video files
class VideoFileSource(Source):
    def __init__(self, path: Path, config: SourceConfig, max_pixels: int | None = None):
        self.name, self.config = str(path), config
        self._pixels = PixelCap(max_pixels)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open {path} as a video (OpenCV/FFmpeg could not read it)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 25.0
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.total = count if count > 0 else None
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Item]:
        start = time.monotonic()
        index = 0
        try:
            while not self._closed.is_set():
                ok, frame = self._cap.read()
                if not ok:
                    if index == 0:
                        raise SourceError(f"{self.name}: no frame could be decoded")
                    return
                t = index / self.fps
                if self._pixels.frame_over(frame, f"{self.name} frame {index}"):
                    self.bad += 1
                    self.oversized = self._pixels.oversized
                    index += 1
                    continue
                if self.config.realtime:
                    delay = start + t - time.monotonic()
                    if delay > 0 and self._closed.wait(delay):
                        return
                yield Item(index, self.name, t, frame=frame)
                index += 1
        finally:
            self._cap.release()

    def close(self) -> None:
        self._closed.set()


# ---------------------------------------------------------------- dispatch
def open_source(
    spec: str, config: SourceConfig | None = None, max_pixels: int | None = None
) -> Source:
    """The source named by ``spec`` (see the module docstring); SourceError if it cannot be.

    ``max_pixels`` (``gate.max_pixels``) bounds every image and frame it hands out."""
    config = config or SourceConfig()
    spec = spec.strip()
    if spec == SCENES_ALIAS and not Path(spec).exists():
        return _bundled_scenes()
    if spec == "-":
        return TextSource("stdin", lambda: _NoClose(sys.stdin), jsonl=False)
    if spec.isdigit():
        return LiveSource(int(spec), config, max_pixels)
    if STREAM.match(spec):
        return LiveSource(spec, config, max_pixels)
    path = Path(spec).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"folder {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageSource(str(path), images, max_pixels)
    if any(ch in spec for ch in "*?[") and not path.exists():
        matches = sorted(Path(p) for p in glob.glob(str(path)))
        images = [p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise SourceError(f"no images match {spec!r}")
        return ImageSource(spec, images, max_pixels)
    if not path.exists():
        raise SourceError(f"source {spec!r} not found (not a file, folder, URL or webcam index)")
    if not path.is_file():
        raise SourceError(f"source {spec!r} is not a regular file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _text_file(path, str(path))
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(str(path), [path], max_pixels)
    return VideoFileSource(path, config, max_pixels)


class _NoClose:
    def __init__(self, stream: IO[str]):
        self._stream = stream

    def __enter__(self) -> IO[str]:
        return self._stream

    def __exit__(self, *exc) -> None:
        return None
