"""Real media files for the edge tests: synthetic scenes written with OpenCV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def background(width: int = 320, height: int = 240) -> np.ndarray:
    """A textured, static room: gradient walls and a few fixed boxes."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (60 + 80 * x / width).astype(np.uint8)
    frame[..., 1] = (70 + 60 * y / height).astype(np.uint8)
    frame[..., 2] = 90
    cv2.rectangle(frame, (20, 150), (90, 230), (40, 40, 120), -1)
    cv2.rectangle(frame, (230, 40), (300, 120), (140, 140, 40), -1)
    return frame


def with_box(frame: np.ndarray, x: int, size: int = 40, colour=(230, 230, 230)) -> np.ndarray:
    out = frame.copy()
    cv2.rectangle(out, (x, 90), (x + size, 90 + size * 2), colour, -1)
    return out


def fire_frame(width: int = 320, height: int = 240) -> np.ndarray:
    frame = background(width, height)
    hsv = np.zeros((60, 80, 3), np.uint8)
    hsv[..., 0], hsv[..., 1], hsv[..., 2] = 12, 230, 250  # bright saturated orange
    frame[100:160, 120:200] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return frame


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG AVI here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def scene_video(path: Path, n: int = 60, fps: float = 10.0) -> Path:
    """n frames: static for the first half, then a box walking across."""
    bg = background()
    frames = [bg.copy() for _ in range(n // 2)]
    frames += [with_box(bg, 10 + 8 * i) for i in range(n - n // 2)]
    return write_video(path, frames, fps)
