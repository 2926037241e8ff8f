"""``gemma-edge demo``: the whole loop on one machine, round after round.

    gemma-edge demo --quick            # 2 short rounds, a few minutes on a 2-core CPU
    gemma-edge demo                    # 8 rounds of 80 fresh scenes
    gemma-edge demo --full             # upskill and a LoRA as well as the head
    gemma-edge demo --lora             # a LoRA with the head, no upskill

What runs, all of it real and on loopback, with the embedded Gemma 3 270M (no network,
no Ollama):

1. a temporary home with CurveZMQ keys (``gemma-teacher keys``): the teacher's pair and
   one edge's, on the teacher's allow-list;
2. ``gemma-teacher serve`` as a subprocess; its reviewer is ``labels``: a labelled file
   stands in for the teacher (a person, or an Ollama teacher in a real deployment);
3. ``gemma-edge run`` as a subprocess reading inputs on stdin, linked to the teacher,
   starting on the bundled release v0;
4. per round: the round's fresh scenes (``shared/data/demo/scenes.jsonl``, one site, never
   seen by any release) go to the edge; the demo waits until every escalation is stored,
   reviewed and the review is back at the edge; then ``gemma-teacher train --head-only``
   (``--full``: ``upskill`` then ``train``) builds a release from the reviews and from the
   inputs the edge settled by itself (a sampled share it sent over the link, stored apart
   and self-labelled), gated against the active one; the server pushes it; the edge takes it without restarting
   and the next round shows it in every event;
5. a table per round (from the edge's own events, scored against the scenario's labels)
   and ``report.json`` + ``report.png`` in ``--out``.

It knows how to start and watch the parts, not how any part works inside: it drives the
teacher through its commands and reads only the shared release layout (it imports
nothing of ``teacher``), so it stands above both sides.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import yaml
from tqdm import tqdm

from edge.demo_scoring import outcome, scenario_path, start_outcomes, write_round_labels
from shared.errors import GemmaEdgeError
from shared.evaluation import LabeledCase
from shared.release import read_active
from shared.rounds import RoundRow, round_row, table
from shared.scoring import Outcome

logger = logging.getLogger(__name__)

EDGE_ID = "demo-edge"
TEACHER_NAME = (
    "labels stand in for the teacher (a person, or an Ollama teacher in a real deployment)"
)
QUICK = {"rounds": 2, "per_round": 24}
FULL = {"rounds": 8, "per_round": 80}
ANSWER_TIMEOUT_S = 600
REVIEW_TIMEOUT_S = 300
PUSH_TIMEOUT_S = 300


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


class DemoRun:
    """The processes and files of one demo run; ``run`` plays the rounds."""

    def __init__(
        self,
        work: Path,
        rounds: list[list[LabeledCase]],
        full: bool,
        threads: int,
        seed: int = 0,
        scenes: Path | None = None,
        backend: str = "embedded",
        answer: str = "always",
        lora: bool = False,
    ):
        self.work = work
        self.backend = backend  # the student engine, the same on the edge and the teacher
        self.answer = answer
        self.scenes = scenes or scenario_path()
        self.rounds = rounds
        self.full = full
        self.lora = lora  # a LoRA with the head every round, without upskill
        self.threads = threads
        self.seed = seed
        self.home = work / "teacher"
        self.events = work / "events.jsonl"
        self.teacher: subprocess.Popen | None = None
        self.edge: subprocess.Popen | None = None
        self.rows: list[RoundRow] = []
        self.outcomes: list[list[Outcome]] = []  # per round, per input, as the edge answered
        self.builds: list[dict] = []
        self._pushed = 0  # the last release the edge was seen to install

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

    # ------------------------------------------------------------ one round
    def play(self, index: int, cases: list[LabeledCase]) -> RoundRow:
        before = len([e for e in events(self.events) if e.get("type") == "answer"])
        bar = tqdm(
            total=len(cases), desc=f"round {index}: the edge answers", unit="input", file=sys.stderr
        )
        answered: list[dict] = []
        for case in cases:
            self.edge.stdin.write(case.input + "\n")
            self.edge.stdin.flush()
            target = before + len(answered) + 1
            self.wait(
                lambda t=target: self._answers() >= t,
                ANSWER_TIMEOUT_S,
                f"the edge's answer to {case.input[:40]!r}",
            )
            answered = self._answers_since(before)
            bar.update()
        bar.close()
        escalated = {e["case_id"] for e in answered if e.get("case_id")}
        reviewed = lambda: escalated <= self._reviewed()  # noqa: E731
        with tqdm(
            total=len(escalated),
            desc=f"round {index}: stored and reviewed",
            unit="case",
            file=sys.stderr,
            bar_format="{desc}: {n_fmt}/{total_fmt} {bar} {elapsed}",
        ) as bar:

            def progress() -> bool:
                done = len(escalated & self._reviewed())
                bar.update(done - bar.n)
                return reviewed()

            self.wait(progress, REVIEW_TIMEOUT_S, "every escalation to be reviewed")
        self.wait(self._outbox_empty, REVIEW_TIMEOUT_S, "the settled inputs to reach the teacher")
        self.outcomes.append([outcome(e, c.safety) for e, c in zip(answered, cases, strict=True)])
        return round_row(f"round {index}", self.outcomes[-1])

    def _outbox_empty(self) -> bool:
        """The edge's outbox holds nothing (every case and settled input was acked)."""
        import sqlite3

        path = self.work / "edge" / "outbox.sqlite"
        if not path.exists():
            return True
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0

    def _answers(self) -> int:
        return sum(1 for e in events(self.events) if e.get("type") == "answer")

    def _answers_since(self, before: int) -> list[dict]:
        return [e for e in events(self.events) if e.get("type") == "answer"][before:]

    def _reviewed(self) -> set[str]:
        return {e["case_id"] for e in events(self.events) if e.get("type") == "review"}

    # ------------------------------------------------------------ releases
    def improve(self, index: int) -> dict:
        """Build a release from everything reviewed so far; wait until the edge has it."""
        prior = []  # the teacher's own labelled scenes, besides what it reviewed here
        for name in ("scenes.jsonl", "dev_scenes.jsonl"):
            prior += ["--labels", str(files("shared").joinpath(f"data/{name}"))]
        # what the edge settled by itself reaches the teacher over the link (Settled)
        steps = {
            "full": [["upskill", *prior], ["train", *prior]],
            "lora": [["train", *prior]],
            "head": [["train", "--head-only", *prior]],
        }[self.improves]
        doc: dict = {"after_round": index, "steps": []}
        for step in steps:
            shown = [
                a for a in step if not a.endswith(".jsonl") and a not in ("--labels", "--traffic")
            ]
            say(
                f"teacher: gemma-teacher {' '.join(shown)}: a release from the reviews so far, "
                "the bundled labelled scenes and the inputs the edge settled itself (head "
                "features, thresholds, then the gate scores it against the running release)"
            )
            t0 = time.perf_counter()
            done = self.run_teacher(step)
            seconds = round(time.perf_counter() - t0, 1)
            result = "built" if done.returncode == 0 else "refused by the gate"
            doc["steps"].append(
                {"command": step, "exit": done.returncode, "outcome": result, "seconds": seconds}
            )
            (self.work / f"round{index}-{step[0]}.out").write_text(done.stdout)
            if done.returncode not in (0, 1):
                raise GemmaEdgeError(
                    f"gemma-teacher {step[0]} failed ({done.returncode}); "
                    f"see {self.work / f'round{index}-{step[0]}.out'}"
                )
            said = [
                line
                for line in done.stdout.splitlines()
                if line.startswith(("release v", "refused", "not saved", "no release", "the LoRA"))
            ]
            doc["steps"][-1]["said"] = said  # what the gate passed, or its named reasons
            for line in said:
                say(f"teacher: {line}")
        active = read_active(self.home / "releases") or 0  # the teacher's active pointer
        doc["release"] = active
        pointer = self.work / "edge" / "releases" / "active"
        if active and active != self._pushed:
            self._pushed = active
            self.wait(
                lambda: pointer.is_file() and pointer.read_text().strip() == str(active),
                PUSH_TIMEOUT_S,
                f"the edge to install release v{active}",
            )
            say(f"edge: installed release v{active}; it answers with it from the next input")
        return doc

    # ------------------------------------------------------------ the whole run
    @property
    def improves(self) -> str:
        """What a build trains: full (upskill + LoRA + head), lora (LoRA + head) or head."""
        return "full" if self.full else "lora" if self.lora else "head"

    @property
    def mode(self) -> str:
        return {
            "full": "full (upskill + LoRA + head)",
            "lora": "LoRA + head",
            "head": "head and thresholds",
        }[self.improves]

    def run(self) -> list[RoundRow]:
        self.start()
        try:
            for index, cases in enumerate(self.rounds):
                row = self.play(index, cases)
                self.rows.append(row)
                print(table(self.rows[-1:]), file=sys.stderr)
                for text in row.missed_ids:  # the worst outcome: say which input it was
                    print(f"round {index}: MISSED a hazard: {text}", file=sys.stderr)
                if index < len(self.rounds) - 1:
                    self.builds.append(self.improve(index))
        finally:
            self.stop()
        self.rows = self.against_start()
        return self.rows

    def against_start(self) -> list[RoundRow]:
        """Every round's rows, with the same inputs answered by the release the edge
        started with (``edge.demo_scoring``): the loop against no loop."""
        labels, out = self.work / "rounds.jsonl", self.work / "start_release.json"
        write_round_labels(labels, self.rounds[: len(self.rows)])
        say(
            "teacher: gemma-teacher eval --release 0: every round's inputs on the starting "
            "release, to measure the loop against no loop"
        )
        done = self.run_teacher(
            ["eval", "--release", "0", "--labels", str(labels), "--json", str(out), "--no-progress"]
        )
        if done.returncode != 0:
            raise GemmaEdgeError(f"gemma-teacher eval failed ({done.returncode}): {done.stdout}")
        start = start_outcomes(out)
        return [
            round_row(row.label, self.outcomes[i], start.get(i)) for i, row in enumerate(self.rows)
        ]

    def run_teacher(self, args: list[str]) -> subprocess.CompletedProcess:
        """``gemma-teacher ARGS --config <the demo's teacher.yaml>``, its stdout captured."""
        return subprocess.run(
            [sys.executable, "-m", "teacher", *args, "--config", str(self.teacher_cfg)],
            stdout=subprocess.PIPE,
            text=True,
        )


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)
