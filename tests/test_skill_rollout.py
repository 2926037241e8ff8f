"""Upskill → registry → teacher server → edge link → the edge's next input, end to end.

A real teacher server and a real edge daemon with its real link (ZeroMQ on loopback)
run side by side; only the model is scripted. An upskill run that beats the default
skill activates vN, the server pushes it, and the daemon, never restarted, answers its
next input with vN. An upskill run whose winner does not beat the active skill pushes
nothing, and the edge keeps answering with what it has.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time

import pytest

from edge.daemon import EdgeDaemon
from edge.events import EventLog
from edge.run import make_link
from edge.sources import Item, Source
from shared.backend import GenerateRequest
from shared.config import (
    EdgeConfig,
    LinkConfig,
    ReviewerConfig,
    ServerConfig,
    TeacherConfig,
    UpskillConfig,
)
from shared.evaluation import bundled_cases
from shared.skill import default_skill
from teacher.registry import Registry
from teacher.server import TeacherServer
from teacher.upskill import run_upskill
from tests.fakes import ScriptedBackend

CASES = bundled_cases()
TRUTH = {c.input: c.safety for c in CASES}


class QueueSource(Source):
    """Inputs handed in by the test, one at a time, until closed."""

    name = "queue"

    def __init__(self):
        self.q: queue.Queue[str | None] = queue.Queue()
        self.n = 0

    def __iter__(self):
        while (text := self.q.get()) is not None:
            yield Item(self.n, "queue", None, text=text)
            self.n += 1

    def close(self) -> None:
        self.q.put(None)


def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def student(good_when):
    def answer(req: GenerateRequest) -> str:
        verdict = TRUTH.get(req.input, False) if good_when(req) else False
        return f"Answer: {req.input}\nSAFETY: {'yes' if verdict else 'no'}\nCONFIDENCE: 0.9"

    return ScriptedBackend(answer)


@pytest.fixture
def stack(tmp_path):
    teacher_cfg = TeacherConfig(
        home=tmp_path / "teacher",
        server=ServerConfig(bind="tcp://127.0.0.1:*", insecure=True, heartbeat_s=0.1),
        reviewer=ReviewerConfig(backend="labels", labels="unused.jsonl"),
    )
    server = TeacherServer(teacher_cfg)
    server.start()
    edge_cfg = EdgeConfig(
        edge_id="e1",
        state_dir=tmp_path / "edge",
        link=LinkConfig(
            teacher=server.endpoint,
            insecure=True,
            outbox=tmp_path / "edge" / "outbox.sqlite",
            heartbeat_s=0.1,
            timeout_s=2.0,
            reconnect_max_s=0.5,
        ),
    )
    edge_model = ScriptedBackend("Answer: A quiet room.\nSAFETY: no\nCONFIDENCE: 0.95")
    source = QueueSource()
    out = io.StringIO()
    daemon = EdgeDaemon(edge_cfg, edge_model, source, EventLog(None, stream=out))
    link = make_link(edge_cfg, daemon)
    thread = threading.Thread(target=daemon.run, kwargs={"progress": False}, daemon=True)
    thread.start()
    wait_for(lambda: "e1" in server.edges)

    def answer(text: str) -> GenerateRequest:
        before, written = len(edge_model.requests), len(answer_events(out))
        source.q.put(text)
        wait_for(lambda: len(edge_model.requests) > before)
        wait_for(lambda: len(answer_events(out)) > written)  # the event follows the request
        return edge_model.requests[-1]

    yield server, teacher_cfg, daemon, answer, out
    daemon.stop()
    source.close()
    thread.join(timeout=10)
    link.stop()
    server.stop()
    server.store.close()


def answer_events(out: io.StringIO) -> list[dict]:
    docs = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [d for d in docs if d.get("type") == "answer"]


def test_an_upskilled_skill_reaches_the_running_edge_for_its_next_input(stack):
    server, cfg, daemon, answer, out = stack
    first = answer("A cat is sleeping on a sofa.")
    assert first.system == default_skill().instructions

    registry = Registry(cfg.home, "skills")
    upskill = UpskillConfig(candidates=4, rounds=1)
    result = run_upskill(
        CASES, student(lambda r: "missed hazard" in r.system), registry, upskill, progress=False
    )
    assert result.decision.activated and result.decision.version == 1
    wait_for(lambda: server.edges["e1"].skill_version == 1)  # pushed, installed, reported

    nxt = answer("A bicycle is parked against a garden fence.")
    assert nxt.system == result.skill.instructions and "missed hazard" in nxt.system
    assert nxt.demos == result.skill.demos
    assert [e["skill_version"] for e in answer_events(out)] == [0, 1]
    assert daemon.stats.items == 2  # the same daemon: nothing restarted


def test_a_skill_that_does_not_beat_the_active_one_never_reaches_the_edge(stack):
    server, cfg, daemon, answer, out = stack
    registry = Registry(cfg.home, "skills")
    # The student judges right only with the default skill: no candidate beats it.
    default = default_skill()
    backend = student(lambda r: r.system == default.instructions and r.demos == default.demos)
    result = run_upskill(CASES, backend, registry, UpskillConfig(candidates=3, rounds=1),
                         progress=False)  # fmt: skip
    assert not result.decision.activated and registry.active() is None
    time.sleep(0.5)  # several heartbeats: a push would have happened by now
    assert server.edges["e1"].skill_version == 0
    assert answer("A cat is sleeping on a sofa.").system == default.instructions
    assert [e["skill_version"] for e in answer_events(out)] == [0]
