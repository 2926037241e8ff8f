"""The scene sketch on real frames: only cues that are present are named."""

import cv2
import numpy as np
import pytest

from edge.sketch import SceneSketcher, to_jpeg
from shared.config import PolicyConfig, SketchConfig
from shared.policy import find_keywords
from tests.edge.media import VTEST, background, fire_frame, with_box

KEYWORDS = tuple(PolicyConfig().safety_keywords)
EXCEPTIONS = tuple(PolicyConfig().keyword_exceptions)


def sketcher(**kw) -> SceneSketcher:
    return SceneSketcher(SketchConfig(**kw))


def test_a_quiet_room_names_no_safety_cue():
    s = sketcher(width=320)
    first = s.sketch(background())
    again = s.sketch(background())
    assert first.people == 0 and first.fire_fraction == 0 and first.smoke_fraction == 0
    assert "Motion" not in again.text and "Nothing moves." in again.text
    assert find_keywords(again.text, KEYWORDS, EXCEPTIONS) == []
    assert again.signature == "frame"


def test_fire_like_colours_are_named_and_match_a_safety_keyword():
    sk = sketcher(width=320).sketch(fire_frame())
    assert sk.fire_fraction > 0.05
    assert "flame-coloured" in sk.text
    assert find_keywords(sk.text, KEYWORDS, EXCEPTIONS) == ["flame"]
    assert "fire" in sk.signature


def test_haze_over_texture_is_smoke_but_a_flat_moving_box_is_not():
    rng = np.random.default_rng(0)
    textured = rng.integers(0, 255, (240, 320, 1), dtype=np.uint8).repeat(3, axis=2)
    hazy = textured.copy()
    hazy[40:200, 60:260] = (0.2 * textured[40:200, 60:260] + 0.8 * 170).astype(np.uint8)
    s = sketcher(width=320)
    s.sketch(textured)
    sk = s.sketch(hazy)
    assert sk.smoke_fraction > 0.1 and "A large area of moving grey haze like smoke." in sk.text
    assert find_keywords(sk.text, KEYWORDS, EXCEPTIONS) == ["smoke"]
    s = sketcher(width=320)
    s.sketch(background())
    assert s.sketch(with_box(background(), 120, size=80)).smoke_fraction == 0


def test_motion_regions_and_where():
    s = sketcher(width=320)
    s.sketch(background())
    sk = s.sketch(with_box(background(), 260))
    assert sk.motion_regions >= 1
    assert "Motion: right." in sk.text


def test_darkness_is_named():
    dark = (background() * 0.1).astype(np.uint8)
    sk = sketcher(width=320).sketch(dark)
    assert "dark light" in sk.text and sk.signature.endswith("dark")


def test_grey_frames_and_odd_sizes_work():
    grey = cv2.cvtColor(background(333, 211), cv2.COLOR_BGR2GRAY)
    assert sketcher(width=200).sketch(grey).text.startswith("Camera view")


def test_jpeg_round_trip():
    data = to_jpeg(background(), 70)
    assert data[:2] == b"\xff\xd8"
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == background().shape


@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc for vtest.avi")
def test_vtest_pedestrians_are_seen():
    cap = cv2.VideoCapture(str(VTEST))
    s = sketcher()
    counts = []
    for index in range(0, 300):
        ok, frame = cap.read()
        assert ok
        if index % 50 == 0:
            sk = s.sketch(frame)
            counts.append(sk.people)
            assert find_keywords(sk.text, KEYWORDS, EXCEPTIONS) == []  # no false alarm
    assert sum(1 for c in counts if c) >= 4, counts
