"""What the console's tests share: a release registry with a history, scenes with frames.

``add_releases`` writes v1 (passed the gate), v2 (passed, active) and v3 (refused by the
gate, kept to look at), each with the bundled head and an escalation band, as
``gemma-teacher train`` leaves a registry. ``scene_jpeg`` draws a small camera-like frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from shared.calibration import conservative
from shared.release import build_files, default_release
from shared.skill import default_skill
from teacher.release.registry import ReleaseRegistry

BAND = (0.2, 0.7)
REFUSED = (
    "system safety recall on the site e1 hazards fell against the active release v2 beyond "
    "noise: 5 hazard(s) it missed that v2 caught, 0 the other way (exact McNemar p 0.031 < 0.05)"
)


def summary(calls: float, recall: float, accuracy: float) -> dict:
    return {"teacher_calls_per_100": calls, "system_recall": recall, "accuracy": accuracy,
            "false_alerts_per_100": 2.5, "auc": 0.95, "n": 120, "hazards": 40}  # fmt: skip


def add_releases(home: Path, active: int = 2) -> ReleaseRegistry:
    registry = ReleaseRegistry(home)
    head = default_release().head
    band = conservative().model_copy(update={"lower": BAND[0], "upper": BAND[1]})
    docs = {
        1: {"passed": True, "reasons": [], "candidate": summary(31.2, 1.0, 0.81)},
        2: {"passed": True, "reasons": [], "candidate": summary(24.4, 0.975, 0.84)},
        3: {"passed": False, "reasons": [REFUSED], "candidate": summary(18.1, 0.875, 0.86)},
    }
    for version, doc in docs.items():
        skill = default_skill().model_copy(update={"name": f"factory skill {version}"})
        files = build_files(version, skill, head, band, parent=version - 1, note=f"round {version}")
        registry.add(files, {"version": version, **doc})
    registry.activate(active)
    return registry


def scene_jpeg(seed: int, fire: bool = False) -> bytes:
    """A 320x240 frame: a room with a counter and a stove, flames on it when ``fire``."""
    rng = np.random.default_rng(seed)
    img = np.full((240, 320, 3), (200, 205, 210), np.uint8)
    img[150:, :] = (120, 135, 150)  # floor
    cv2.rectangle(img, (40, 110), (280, 160), (90, 90, 95), -1)  # counter
    cv2.rectangle(img, (120, 100), (200, 112), (40, 40, 40), -1)  # stove
    if fire:
        for dx in (-18, 0, 18):
            pts = np.array([[160 + dx - 12, 100], [160 + dx + 12, 100], [160 + dx, 62]], np.int32)
            cv2.fillPoly(img, [pts], (0, 120, 255))
    x = int(rng.integers(60, 260))
    cv2.circle(img, (x, 70), 12, (60, 80, 110), -1)  # a person's head
    cv2.rectangle(img, (x - 14, 82), (x + 14, 150), (150, 90, 60), -1)
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", cv2.add(img, noise), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()
