"""Nothing escalated is lost: 10,000 cases from 4 edge processes over CurveZMQ while the
teacher process is SIGKILLed and restarted twice and one edge is SIGKILLed and restarted
once. Afterwards the store holds every case exactly once and every outbox is empty."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edge.outbox import Outbox
from teacher.data.store import CaseStore, default_store_path
from teacher.serve.keys import init_keys, new_edge
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
EDGES = 4
PER_EDGE = 2500
RATE = 160  # escalations/s per edge: ~16 s of traffic, so the kills land mid-stream


class Teacher:
    def __init__(self, config: Path, log: Path):
        self.config, self.log = config, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "teacher", "-v", "serve", "--config", str(self.config)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert "serving on" in line, f"teacher did not start: {line!r}, see {self.log}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def edge_cmd(name: str, tmp: Path, endpoint: str, keys: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tests" / "procs" / "edge_load.py"),
        "--endpoint",
        endpoint,
        "--edge-id",
        name,
        "--dir",
        str(tmp / name),
        "--count",
        str(PER_EDGE),
        "--rate",
        str(RATE),
        "--secret-key",
        str(keys / "edges" / f"{name}.key_secret"),
        "--teacher-key",
        str(keys / "teacher.key"),
        "--deadline",
        "150",
    ]


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_teacher_twice_and_an_edge_once_loses_and_doubles_nothing(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    names = [f"edge{i}" for i in range(EDGES)]
    for name in names:
        new_edge(keys, name)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "teacher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(tmp_path / "home"),
                "server": {"bind": endpoint, "keys_dir": str(keys), "heartbeat_s": 0.2},
                "reviewer": {
                    "backend": "labels",
                    "labels": str(ROOT / "shared" / "data" / "dev_scenes.jsonl"),
                    "batch_size": 256,
                },
            }
        )
    )
    teacher = Teacher(config, tmp_path / "teacher.log")
    teacher.start()
    logs = {n: open(tmp_path / f"{n}.log", "a") for n in names}

    def start_edge(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            edge_cmd(name, tmp_path, endpoint, keys),
            cwd=ROOT,
            stdout=logs[name],
            stderr=subprocess.STDOUT,
        )

    def progress(name: str) -> int:
        try:
            return int((tmp_path / name / "progress").read_text().strip() or -1)
        except (OSError, ValueError):
            return -1

    def wait_progress(at_least: int) -> None:
        deadline = time.monotonic() + 60
        while min(progress(n) for n in names) < at_least:
            assert time.monotonic() < deadline, {n: progress(n) for n in names}
            time.sleep(0.05)

    edges = {n: start_edge(n) for n in names}
    try:
        wait_progress(300)
        teacher.kill()  # 1st teacher SIGKILL; the edges keep queuing
        time.sleep(0.7)
        edges["edge1"].send_signal(signal.SIGKILL)  # the edge SIGKILL, its outbox not drained
        edges["edge1"].wait()
        killed_at = progress("edge1")
        time.sleep(0.3)
        edges["edge1"] = start_edge("edge1")
        teacher.start()
        wait_progress(1500)
        teacher.kill()  # 2nd teacher SIGKILL
        time.sleep(1.5)
        teacher.start()
        codes = {n: p.wait(timeout=180) for n, p in edges.items()}
    finally:
        for p in edges.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        if teacher.proc and teacher.proc.poll() is None:
            teacher.stop()
    assert codes == dict.fromkeys(names, 0), {n: (tmp_path / f"{n}.log").read_text() for n in names}

    store = CaseStore(default_store_path(tmp_path / "home"))
    ids = store.case_ids()
    expected = {f"{n}-{i:06d}" for n in names for i in range(PER_EDGE)}
    assert len(ids) == len(set(ids)) == EDGES * PER_EDGE
    assert set(ids) == expected
    assert store.count("reviewed") + store.count("new") + store.count("reviewing") == len(ids)
    assert store.count("reviewed") > 0
    store.close()
    for name in names:
        outbox = Outbox(tmp_path / name / "outbox.sqlite")
        assert outbox.depth() == 0 and outbox.dead() == []
        outbox.close()
    # The edge killed mid-stream was restarted and resumed after its last queued case:
    # what it had queued but not delivered came out of its outbox.
    assert f"from {killed_at + 1}" in (tmp_path / "edge1.log").read_text()
