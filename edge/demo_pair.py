"""The process pair ``gemma-edge demo`` drives: a teacher server and an edge, each a real
subprocess on loopback with its own config, keys and log, and what the demo reads of them.

    pair = DemoProcesses(work, backend="llamacpp", answer="when_needed", threads=2)
    pair.start()                                   # keys, configs, serve, run --source -
    pair.wait(lambda: pair.answers() >= 1, 600, "an answer")
    pair.run_teacher(["train", "--head-only"]); pair.stop()

It writes the two YAML files a person would (``gemma-teacher keys`` for the CurveZMQ keys,
the labels reviewer standing in for the teacher), starts and stops the processes, and
reads the edge's events file and outbox. It knows nothing of rounds, scoring or releases
(``edge.demo``).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from shared.errors import GemmaEdgeError

EDGE_ID = "demo-edge"
TEACHER_NAME = (
    "labels stand in for the teacher (a person, or an Ollama teacher in a real deployment)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


class DemoProcesses:
    """A teacher server and an edge as subprocesses under ``work`` (see the module doc)."""

    def __init__(
        self,
        work: Path,
        scenes: Path,
        backend: str,
        answer: str,
        threads: int,
        seed: int = 0,
    ):
        self.work = work
        self.scenes = scenes  # the labels the teacher "knows"
        self.backend = backend  # the student engine, the same on the edge and the teacher
        self.answer = answer
        self.threads = threads
        self.seed = seed
        self.home = work / "teacher"
        self.events = work / "events.jsonl"
        self.teacher: subprocess.Popen | None = None
        self.edge: subprocess.Popen | None = None

    # ------------------------------------------------------------ set-up
    def write_configs(self) -> tuple[Path, Path]:
        keys = self.home / "keys"  # made as a person would: `gemma-teacher keys ...`
        for action in (["init"], ["new-edge", EDGE_ID]):
            done = subprocess.run(
                [sys.executable, "-m", "teacher", "keys", *action, "--keys-dir", str(keys)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise GemmaEdgeError(f"gemma-teacher keys {action[0]} failed: {done.stderr}")
        edge_secret = keys / "edges" / f"{EDGE_ID}.key_secret"
        port = free_port()
        labels = self.work / "labels.jsonl"  # what the teacher "knows": every scenario label
        shutil.copyfile(self.scenes, labels)
        student = {
            "backend": self.backend,
            self.backend: {"threads": self.threads},
            "answer": self.answer,
        }
        teacher = {
            "home": str(self.home),
            "server": {
                "bind": f"tcp://127.0.0.1:{port}",
                "keys_dir": str(keys),
                "heartbeat_s": 0.5,
            },
            "reviewer": {"backend": "labels", "labels": str(labels)},
            "student": student,
            "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-4, "seed": self.seed},
        }
        edge = {
            "edge_id": EDGE_ID,
            "state_dir": str(self.work / "edge"),
            "model": student,
            "link": {
                "teacher": f"tcp://127.0.0.1:{port}",
                "edge_secret_key": str(edge_secret),
                "teacher_public_key": str(keys / "teacher.key"),
                "heartbeat_s": 0.5,
                "outbox": str(self.work / "edge" / "outbox.sqlite"),
            },
        }
        paths = self.work / "teacher.yaml", self.work / "edge.yaml"
        for path, doc in zip(paths, (teacher, edge), strict=True):
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return paths

    def start(self) -> None:
        from shared.config import EmbeddedModelConfig
        from shared.models import ensure_cache

        if self.backend == "embedded":  # the first run converts, with a bar
            ensure_cache(None, EmbeddedModelConfig().cache_dir)
        teacher_cfg, edge_cfg = self.write_configs()
        self.teacher_cfg = teacher_cfg
        self.teacher = subprocess.Popen(
            [sys.executable, "-m", "teacher", "serve", "--config", str(teacher_cfg)],
            stdout=subprocess.PIPE,
            stderr=(self.work / "teacher.log").open("w"),
            text=True,
        )
        line = self.teacher.stdout.readline()
        if "serving" not in line:
            raise GemmaEdgeError(f"the teacher did not start: see {self.work / 'teacher.log'}")
        say(f"teacher: {line.strip()}; reviewer: {TEACHER_NAME}")
        self.edge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "run",
                "--config",
                str(edge_cfg),
                "--source",
                "-",
                "--events",
                str(self.events),
                "--no-progress",
            ],
            stdin=subprocess.PIPE,
            stderr=(self.work / "edge.log").open("w"),
            text=True,
        )
        say(f"edge {EDGE_ID}: pid {self.edge.pid}, CurveZMQ link to the teacher")

    def stop(self) -> None:
        if self.edge is not None and self.edge.poll() is None:
            self.edge.stdin.close()  # end of input: the edge finishes and exits 0
            try:
                self.edge.wait(60)
            except subprocess.TimeoutExpired:
                self.edge.kill()
        if self.teacher is not None and self.teacher.poll() is None:
            self.teacher.send_signal(signal.SIGTERM)
            try:
                self.teacher.wait(30)
            except subprocess.TimeoutExpired:
                self.teacher.kill()

    # ------------------------------------------------------------ waiting
    def _alive(self) -> None:
        for name, proc in (("edge", self.edge), ("teacher", self.teacher)):
            if proc is not None and proc.poll() is not None:
                raise GemmaEdgeError(
                    f"the {name} exited ({proc.returncode}); see {self.work / (name + '.log')}"
                )

    def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self._alive()
            if time.monotonic() > deadline:
                raise GemmaEdgeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def refused(self, version: int) -> str | None:
        """The reason the edge logged for refusing release ``version`` (None: it did not)."""
        marker = f"refused release push v{version}: "
        path = self.work / "edge.log"
        if not path.exists():
            return None
        for line in path.read_text(errors="replace").splitlines():
            if marker in line:
                return line.split(marker, 1)[1]
        return None

    def outbox_empty(self) -> bool:
        """The edge's outbox holds nothing (every case and settled input was acked)."""
        import sqlite3

        path = self.work / "edge" / "outbox.sqlite"
        if not path.exists():
            return True
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0

    def answers(self) -> int:
        return sum(1 for e in events(self.events) if e.get("type") == "answer")

    def answers_since(self, before: int) -> list[dict]:
        return [e for e in events(self.events) if e.get("type") == "answer"][before:]

    def reviewed(self) -> set[str]:
        return {e["case_id"] for e in events(self.events) if e.get("type") == "review"}

    def run_teacher(self, args: list[str]) -> subprocess.CompletedProcess:
        """``gemma-teacher ARGS --config <the demo's teacher.yaml>``, its stdout captured."""
        return subprocess.run(
            [sys.executable, "-m", "teacher", *args, "--config", str(self.teacher_cfg)],
            stdout=subprocess.PIPE,
            text=True,
        )


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)
