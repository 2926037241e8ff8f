"""Sources on real files: text, JSONL, bundled scenes, images, video, live streams."""

import json
import logging
import time

import cv2
import pytest

from edge.sources import ImageSource, LiveSource, TextSource, VideoFileSource, open_source
from shared.config import SourceConfig
from shared.errors import SourceError
from tests.edge.media import background, scene_video, with_box

FAST = SourceConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2, open_timeout_s=5)


def test_text_lines_skip_blanks_and_comments(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("A cat sleeps.\n\n# a comment\n  A dog barks.  \n")
    source = open_source(str(path))
    assert isinstance(source, TextSource) and source.total == 3
    items = list(source)
    assert [i.text for i in items] == ["A cat sleeps.", "A dog barks."]
    assert [i.index for i in items] == [0, 1] and items[0].kind == "text"


def test_jsonl_uses_input_and_id_and_skips_bad_lines(tmp_path, caplog):
    path = tmp_path / "cases.jsonl"
    lines = [
        json.dumps({"id": "a1", "input": "Smoke in the hall."}),
        "{not json",
        json.dumps({"text": "no input field"}),
        json.dumps(["a", "list"]),
        json.dumps({"input": "Second good line."}),
    ]
    path.write_text("\n".join(lines) + "\n")
    source = open_source(str(path))
    with caplog.at_level(logging.ERROR):
        items = list(source)
    assert [(i.id, i.text) for i in items] == [
        ("a1", "Smoke in the hall."),
        (None, "Second good line."),
    ]
    assert source.bad == 3
    assert "line 2 skipped" in caplog.text and "line 3 skipped" in caplog.text


def test_a_text_line_that_is_json_uses_its_input(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text('plain words\n{"input": "from json", "id": 7}\n')
    assert [(i.text, i.id) for i in open_source(str(path))] == [
        ("plain words", None),
        ("from json", "7"),
    ]


def test_scenes_alias_reads_the_bundled_file():
    items = list(open_source("scenes"))
    assert len(items) == 40
    assert items[0].id == "dev-001" and "flame" in items[0].text


def test_images_from_folder_and_glob_skip_unreadable(tmp_path, caplog):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"shot{i}.png"), with_box(background(), 40 * i))
    (tmp_path / "shot9.jpg").write_bytes(b"not an image")
    (tmp_path / "readme.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageSource) and source.total == 4
    with caplog.at_level(logging.ERROR):
        items = list(source)
    assert len(items) == 3 and source.bad == 1 and "unreadable image" in caplog.text
    assert items[0].frame.shape == (240, 320, 3) and items[0].t is None
    assert len(list(open_source(str(tmp_path / "shot[01].png")))) == 2


def test_video_file_frames_carry_media_time(tmp_path):
    path = scene_video(tmp_path / "clip.avi", n=30, fps=10)
    source = open_source(str(path))
    assert isinstance(source, VideoFileSource) and source.total == 30
    items = list(source)
    assert len(items) == 30
    assert items[10].t == pytest.approx(1.0) and items[10].kind == "frame"


def test_realtime_plays_at_the_file_rate(tmp_path):
    path = scene_video(tmp_path / "clip.avi", n=6, fps=10)
    source = open_source(str(path), SourceConfig(realtime=True))
    start = time.monotonic()
    assert len(list(source)) == 6
    assert time.monotonic() - start >= 0.45  # 6 frames at 10 fps: the last at 0.5 s


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing.avi"), "not found"),
        (lambda p: (p / "bad.avi").write_bytes(b"\0" * 100) and str(p / "bad.avi"), "cannot open"),
        (lambda p: str(p), "has no images"),
        (lambda p: str(p / "*.png"), "no images match"),
        (lambda p: "97", "no webcam at index 97"),
    ],
)
def test_unopenable_sources_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        open_source(make(tmp_path), FAST)


def test_unreachable_stream_is_a_clear_error():
    with pytest.raises(SourceError, match="cannot open stream"):
        open_source("http://127.0.0.1:9/cam.mjpg", SourceConfig(open_timeout_s=2))


def test_live_source_keeps_only_the_newest_frame_and_reopens(tmp_path, caplog):
    # A file read as a live stream: the reader thread outpaces a slow consumer (so it
    # must drop frames), and each end of file is an outage that is reopened.
    path = scene_video(tmp_path / "clip.avi", n=40, fps=10)
    source = LiveSource(str(path), FAST)
    assert source.live
    items = []
    with caplog.at_level(logging.WARNING, logger="edge.sources"):
        for item in source:
            items.append(item)
            time.sleep(0.02)
            if len(items) == 30:
                break
        source.close()
    assert source.frames_dropped > 0
    assert source.frames_read >= len(items) + source.frames_dropped - 1
    assert [i.index for i in items] == list(range(30))
    assert source.outages >= 1
    assert caplog.text.count("stream lost") == source.outages
    assert all(i.t is not None for i in items)
    times = [i.t for i in items]
    assert times == sorted(times)
