"""The scene sketch: a frame turned into a short factual text for a text-only student.

Only what OpenCV itself ships is used, each cue cheap and conservative (a cue that is
absent is not mentioned, so the text never says "no fire" and trips a keyword):

- people:     the HOG + linear SVM pedestrian detector (``HOGDescriptor``)
- faces:      the frontal-face Haar cascade (``cv2.data.haarcascades``)
- motion:     regions that changed against the previous sketched frame (contours)
- fire-like:  bright, saturated red-orange-yellow pixels (HSV), large enough to matter
- smoke-like: grey, low-texture pixels that are *moving* (static grey walls are not smoke)
- light:      mean brightness ("dark", "dim", "bright")

``Sketch.text`` reads like "Camera view, dim light. 2 people: left, centre. Motion:
centre, right." and ``Sketch.signature`` names the cues present, which the
daemon uses as the "same scene" key for the policy's cooldown. ``to_jpeg`` encodes the
frame for multimodal backends and escalations.

This module knows nothing about models, gating or the policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from shared.config import SketchConfig

logger = logging.getLogger(__name__)

MOTION_DELTA = 25  # grey levels a pixel must change by to count as moving
LARGE_AREA = 0.1  # a cue covering this fraction of the view is called large


@dataclass(frozen=True)
class Sketch:
    text: str
    people: int
    faces: int
    motion_regions: int
    fire_fraction: float
    smoke_fraction: float
    brightness: float  # mean V channel, 0..255

    @property
    def signature(self) -> str:
        """The cues present, coarsely: the same situation gives the same signature."""
        parts = ["frame"]
        if self.people:
            parts.append("people" if self.people > 1 else "person")
        if self.faces:
            parts.append("face")
        if self.fire_fraction:
            parts.append("fire")
        if self.smoke_fraction:
            parts.append("smoke")
        if self.brightness < 40:
            parts.append("dark")
        return ":".join(parts)

    def to_json(self) -> dict:
        return {
            "people": self.people,
            "faces": self.faces,
            "motion_regions": self.motion_regions,
            "fire_fraction": round(self.fire_fraction, 4),
            "smoke_fraction": round(self.smoke_fraction, 4),
            "brightness": round(self.brightness, 1),
        }


def _where(x_centre: float, width: int) -> str:
    third = x_centre / max(width, 1)
    return "left" if third < 1 / 3 else "centre" if third < 2 / 3 else "right"


def _places(xs: list[float], width: int) -> str:
    seen: list[str] = []
    for x in sorted(xs):
        place = _where(x, width)
        if place not in seen:
            seen.append(place)
    return ", ".join(seen)


def to_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return data.tobytes()


class SceneSketcher:
    """Stateful (remembers the previous frame for motion); one per source."""

    def __init__(self, config: SketchConfig):
        self.config = config
        self._hog: cv2.HOGDescriptor | None = None
        self._faces: cv2.CascadeClassifier | None = None
        if config.people:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        if config.faces:
            path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
            self._faces = cv2.CascadeClassifier(path)
            if self._faces.empty():  # opencv-python >= 5 no longer ships the cascades
                logger.warning("Haar cascade %s not found; face cue off", path)
                self._faces = None
        self._previous: np.ndarray | None = None
        self._previous_texture: np.ndarray | None = None

    def sketch(self, frame: np.ndarray) -> Sketch:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        height, width = frame.shape[:2]
        scale = self.config.width / width
        small = cv2.resize(frame, (self.config.width, max(1, round(height * scale))))
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        hue, sat, val = cv2.split(hsv)
        w = small.shape[1]

        people_x: list[float] = []
        if self._hog is not None:
            rects, weights = self._hog.detectMultiScale(
                small, winStride=(8, 8), padding=(8, 8), scale=1.05
            )
            for (x, _, rw, _), weight in zip(rects, np.ravel(weights), strict=False):
                if weight >= self.config.people_min_score:
                    people_x.append(x + rw / 2)
        face_x: list[float] = []
        if self._faces is not None:
            found = self._faces.detectMultiScale(grey, 1.1, 5, minSize=(20, 20))
            face_x = [x + fw / 2 for (x, _, fw, _) in found]

        moving = np.zeros(grey.shape, dtype=bool)
        regions: list[float] = []
        had_previous = self._previous is not None
        if self._previous is not None and self._previous.shape == grey.shape:
            diff = cv2.absdiff(cv2.GaussianBlur(grey, (5, 5), 0), self._previous)
            mask = cv2.dilate((diff > MOTION_DELTA).astype(np.uint8), None, iterations=2)
            moving = mask.astype(bool)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            min_area = self.config.motion_min_area * grey.size
            for contour in contours:
                x, _, cw, _ = cv2.boundingRect(contour)
                if cv2.contourArea(contour) >= min_area:
                    regions.append(x + cw / 2)
        self._previous = cv2.GaussianBlur(grey, (5, 5), 0)

        fire = ((hue <= 25) | (hue >= 170)) & (sat >= 120) & (val >= 180)
        fire_fraction = float(np.count_nonzero(fire)) / fire.size
        if fire_fraction < self.config.fire_min_fraction:
            fire_fraction = 0.0
        # Smoke: greyish pixels that move and lost the detail they had (haze over texture);
        # a flat grey object sliding over a flat background is not smoke.
        texture = np.abs(cv2.Laplacian(grey, cv2.CV_16S, ksize=3))
        lost = np.zeros(grey.shape, dtype=bool)
        if self._previous_texture is not None and self._previous_texture.shape == grey.shape:
            before = self._previous_texture.astype(np.int32)
            lost = (before - texture >= 10) & (2 * texture.astype(np.int32) < before)
        self._previous_texture = texture
        smoke = moving & lost & (sat < 40) & (val >= 80) & (val <= 230)
        smoke_fraction = float(np.count_nonzero(smoke)) / smoke.size
        if smoke_fraction < self.config.smoke_min_fraction:
            smoke_fraction = 0.0
        brightness = float(val.mean())

        light = "dark" if brightness < 40 else "dim" if brightness < 100 else "bright"
        if brightness >= 100 and brightness < 170:
            light = "normal"
        parts = [f"Camera view, {light} light."]
        if people_x:
            n = len(people_x)
            count = "1 person" if n == 1 else f"{n} people" if n < 4 else "4 or more people"
            parts.append(f"{count}: {_places(people_x, w)}.")
        if face_x:
            n = len(face_x)
            parts.append(f"{n} {'face' if n == 1 else 'faces'} towards the camera.")
        if regions:
            parts.append(f"Motion: {_places(regions, w)}.")
        elif had_previous and not people_x:
            parts.append("Nothing moves.")
        if fire_fraction:
            size = "A large" if fire_fraction >= LARGE_AREA else "A small"
            parts.append(f"{size} bright flame-coloured area.")
        if smoke_fraction:
            size = "A large" if smoke_fraction >= LARGE_AREA else "A small"
            parts.append(f"{size} area of moving grey haze like smoke.")
        return Sketch(
            text=" ".join(parts),
            people=len(people_x),
            faces=len(face_x),
            motion_regions=len(regions),
            fire_fraction=fire_fraction,
            smoke_fraction=smoke_fraction,
            brightness=brightness,
        )


class RecentSketches:
    """Sketches answered in the last ``window_s`` seconds: a text-only model answers the
    same sketch the same way, so the daemon skips a repeat for a while."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._seen: dict[str, float] = {}  # key -> when it was last answered

    def seen(self, key: str, now: float) -> bool:
        """True when ``key`` was answered within the window; else records it at ``now``."""
        if self.window_s <= 0:
            return False
        last = self._seen.get(key)
        if last is not None and 0 <= now - last < self.window_s:
            return True
        self._seen[key] = now
        if len(self._seen) > 1024:
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.window_s}
        return False
