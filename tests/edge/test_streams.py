"""Real network streams on loopback: the daemon survives the server going away and back.

The streams are served from Debian's opencv-doc vtest.avi by real servers:

- RTSP: GStreamer's RTSP server (``tests/edge/rtsp_server.py`` under /usr/bin/python3);
  apt packages: opencv-doc python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
- HTTP MJPEG (what many IP cameras serve): ffmpeg ``-f mpjpeg -listen 1``; apt: ffmpeg

Each test skips with the missing package named. The daemon runs as a real subprocess
(``tests.edge.scripted_edge``: the real CLI with a scripted model).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.edge.media import VTEST
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
RTSP_APT = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not VTEST.exists(), reason="needs vtest.avi: apt-get install opencv-doc"),
]


def _gst_rtsp_available() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import GstRtspServer"
    )
    return subprocess.run([str(SYSTEM_PYTHON), "-c", probe], capture_output=True).returncode == 0


class RtspServer:
    def __init__(self, port: int):
        self.port, self.proc = port, None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> None:
        script = ROOT / "tests" / "edge" / "rtsp_server.py"
        cmd = [str(SYSTEM_PYTHON), str(script), str(VTEST), str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "ready" once listening
        assert line.strip() == "ready", self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class MjpegServer:
    def __init__(self, port: int):
        self.port, self.proc = port, None
        self.url = f"http://127.0.0.1:{port}/cam.mjpg"

    def start(self) -> None:
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1"]
        cmd += ["-i", str(VTEST), "-f", "mpjpeg", "-q:v", "5", "-listen", "1", self.url]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # no readiness signal; probing would take its only client slot

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _answers(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == "answer"]


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _outage_and_recovery(server, tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        "source: {reconnect_initial_s: 0.2, reconnect_max_s: 1.0, open_timeout_s: 5}\n"
        "gate: {sample_fps: 2, audit_every: 2}\n"
    )
    events = tmp_path / "events.jsonl"
    server.start()
    cmd = [sys.executable, "-m", "tests.edge.scripted_edge", "--", "run", "--source", server.url]
    cmd += ["--config", str(config), "--events", str(events), "--no-progress"]
    edge = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: len(_answers(events)) >= 3, 60), "no answers from the stream"
        server.stop()
        time.sleep(6)  # longer than the read timeout: the outage is noticed, reopen fails
        before = len(_answers(events))
        restarted = time.time()
        server.start()
        resumed = _wait(lambda: any(e["time"] > restarted for e in _answers(events)), 60)
        assert edge.poll() is None, "the daemon died during the outage"
        edge.send_signal(signal.SIGINT)
        _, err = edge.communicate(timeout=30)
    finally:
        if edge.poll() is None:
            edge.kill()
        server.stop()
    assert resumed, f"no answer after the server came back:\n{err}"
    assert edge.returncode == 0, err
    assert len(_answers(events)) > before
    assert err.count("stream lost") == 1, err  # logged once, not per reopen attempt
    assert err.count("stream back after") == 1, err
    assert json.loads(events.read_text().splitlines()[-1])["type"] == "summary"


@pytest.mark.skipif(not _gst_rtsp_available(), reason=f"RTSP server needs apt: {RTSP_APT}")
def test_rtsp_stream_survives_server_restart(tmp_path):
    _outage_and_recovery(RtspServer(free_port()), tmp_path)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs apt-get install ffmpeg")
def test_mjpeg_stream_survives_server_restart(tmp_path):
    _outage_and_recovery(MjpegServer(free_port()), tmp_path)
