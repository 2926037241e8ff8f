"""The frame gate on real frames: sampling rate, motion, near-duplicates, audits, counters."""

import cv2
import numpy as np
import pytest

from edge.gate import AUDIT, CHANGED, DUPLICATE, FIRST, NO_MOTION, RATE, FrameGate, hamming, phash
from shared.config import GateConfig
from tests.edge.media import VTEST, background, with_box


def gate(**kw) -> FrameGate:
    return FrameGate(GateConfig(**kw))


def test_sampling_rate_takes_every_nth_frame_by_timestamp():
    g = gate(sample_fps=2, motion_threshold=0, dedupe_hamming=0, audit_every=0)
    frames = [with_box(background(), 5 * i) for i in range(20)]
    passed = [i for i, f in enumerate(frames) if g.check(f, i / 10).reason != RATE]
    assert passed == [0, 5, 10, 15]
    assert g.stats.gated[RATE] == 16 and g.stats.seen == 20


def test_untimed_frames_skip_the_rate_test():
    g = gate(sample_fps=0.001, motion_threshold=0, dedupe_hamming=0, audit_every=0)
    results = [g.check(with_box(background(), 30 * i), None) for i in range(5)]
    assert RATE not in {r.reason for r in results}


def test_a_clock_that_goes_backwards_samples_at_once():
    g = gate(sample_fps=1, motion_threshold=0, dedupe_hamming=0)
    g.check(background(), 100.0)
    assert g.check(with_box(background(), 50), 3.0).reason != RATE


def test_no_motion_is_gated_and_motion_passes():
    g = gate(sample_fps=100, motion_threshold=0.01, dedupe_hamming=0, audit_every=0)
    bg = background()
    assert g.check(bg, 0.0).reason == FIRST
    assert g.check(bg.copy(), 1.0).reason == NO_MOTION
    noisy = np.clip(bg.astype(int) + 3, 0, 255).astype(np.uint8)  # sensor noise
    assert g.check(noisy, 2.0).reason == NO_MOTION
    result = g.check(with_box(bg, 150), 3.0)
    assert result.passed and result.reason == CHANGED and result.motion > 0.01


def test_near_duplicates_are_gated_against_the_last_processed_frame():
    g = gate(sample_fps=100, motion_threshold=0.0, dedupe_hamming=10, audit_every=0)
    bg = background()
    g.check(bg, 0)
    small = with_box(bg, 150, size=6)  # a tiny change: same scene
    assert g.check(small, 1).reason == DUPLICATE
    different = cv2.flip(bg, 1)
    assert g.check(different, 2).reason == CHANGED


def test_audit_lets_a_gated_scene_through_every_n_frames():
    g = gate(sample_fps=100, motion_threshold=0.5, audit_every=5)
    bg = background()
    reasons = [g.check(bg, t).reason for t in range(13)]
    assert reasons[0] == FIRST
    assert reasons[1:7] == [NO_MOTION] * 5 + [AUDIT]
    assert reasons[7:13] == [NO_MOTION] * 5 + [AUDIT]
    assert g.stats.audits == 2 and g.stats.passed == 3


def test_reject_counts_a_passed_frame_as_gated():
    g = gate(sample_fps=100, motion_threshold=0.5, audit_every=3)
    g.check(background(), 0)
    g.reject("same_sketch")
    assert g.stats.passed == 0 and g.stats.gated["same_sketch"] == 1
    reasons = [g.check(background(), t).reason for t in (1, 2, 3)]
    assert reasons == [NO_MOTION, NO_MOTION, AUDIT]  # the rejected frame counted as 1 of 3


def test_phash_is_stable_under_noise_and_brightness_but_not_content():
    bg = background()
    h = phash(cv2.cvtColor(bg, cv2.COLOR_BGR2GRAY))
    brighter = cv2.convertScaleAbs(bg, alpha=1.0, beta=20)
    assert hamming(h, phash(cv2.cvtColor(brighter, cv2.COLOR_BGR2GRAY))) <= 4
    other = cv2.cvtColor(cv2.flip(bg, 0), cv2.COLOR_BGR2GRAY)
    assert hamming(h, phash(other)) > 10


@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc for vtest.avi")
def test_vtest_gated_frames_far_outnumber_passed_ones():
    cap = cv2.VideoCapture(str(VTEST))
    g = gate()
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        g.check(frame, index / 10.0)
        index += 1
    assert g.stats.seen == index > 700
    assert g.stats.gated_total + g.stats.passed == g.stats.seen
    assert g.stats.gated_total > 5 * g.stats.passed
