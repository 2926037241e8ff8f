"""Upskill → release build → teacher server → edge link → the edge's next input, end to end.

A real teacher server and a real edge daemon with its real link (ZeroMQ on loopback)
run side by side; only the model is scripted. An upskill winner that beats the default
skill goes to the release build (head fit on its prompt, thresholds, the release gate);
the server pushes the release and the daemon, never restarted, answers its next input
with it. A winner that does not beat the active skill builds nothing, and the edge
keeps answering with what it has.
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
from shared.config import EdgeConfig, LinkConfig
from shared.evaluation import bundled_cases
from shared.skill import default_skill
from shared.teacher_config import ReviewerConfig, ServerConfig, TeacherConfig, UpskillConfig
from teacher.improve.upskill import run_upskill
from teacher.release.build import build_release
from teacher.release.registry import ReleaseRegistry
from teacher.serve.server import TeacherServer
from tests.fakes import FeatureBackend, ScriptedBackend, hazard_cases

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
    teacher_cfg.policy.audit_every = 0
    teacher_cfg.student.max_new_tokens = 16
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
    edge_model = FeatureBackend()  # hidden states: the release's head runs here as built
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


def test_an_upskilled_skill_reaches_the_running_edge_in_a_release_for_its_next_input(stack):
    server, cfg, daemon, answer, out = stack
    first = answer("A cat is sleeping on a sofa.")
    assert first.system == default_skill().instructions

    upskill = UpskillConfig(candidates=4, rounds=1)
    parent = ReleaseRegistry(cfg.home).active().skill
    result = run_upskill(
        CASES, student(lambda r: "missed hazard" in r.system), parent, upskill, progress=False
    )
    assert result.decision.to_build and result.decision.beats_parent
    built = build_release(cfg, FeatureBackend(), hazard_cases(200), skill=result.skill,
                          progress=False)  # fmt: skip
    assert built.verdict.passed, built.verdict.reasons
    wait_for(lambda: server.edges["e1"].release_version == built.version)  # pushed, reported

    nxt = answer("A bicycle is parked against a garden fence.")
    assert nxt.system == result.skill.instructions and "missed hazard" in nxt.system
    assert nxt.demos == result.skill.demos
    assert [e["release"] for e in answer_events(out)] == [0, built.version]
    assert answer_events(out)[-1]["p_unsafe"] is not None  # its head runs on the edge
    assert daemon.stats.items == 2  # the same daemon: nothing restarted


def test_a_winner_whose_release_the_gate_refuses_never_reaches_the_edge(stack):
    """One gate: upskill hands every winner to the release build; a release that would
    miss hazards under the edge's prompt is refused there, and nothing is pushed."""
    from tests.teacher.test_release import adapter_files

    server, cfg, daemon, answer, out = stack
    cases = hazard_cases(200)
    first = build_release(cfg, FeatureBackend(), cases, progress=False)  # head only: v1
    assert first.verdict.passed
    wait_for(lambda: server.edges["e1"].release_version == 1)
    default = default_skill()
    backend = student(lambda r: r.system == default.instructions and r.demos == default.demos)
    result = run_upskill(CASES, backend, default, UpskillConfig(candidates=3, rounds=1),
                         progress=False)  # fmt: skip
    assert result.decision.to_build and not result.decision.beats_parent
    broken = FeatureBackend(bad_adapter="gemma-release-")  # its LoRA loses the hazard signal
    # The LoRA does not pay, so its head-only twin is the candidate; a gate that asks for a
    # gain (release.must_gain) refuses that twin, since it gains nothing over v1.
    cfg.release.must_gain = True
    built = build_release(cfg, broken, cases, skill=result.skill, adapter=adapter_files(),
                          progress=False)  # fmt: skip
    assert built.timing["lora"]["paid"] is False
    assert not built.verdict.passed and built.version is None, built.verdict
    assert ReleaseRegistry(cfg.home).versions() == [1]
    time.sleep(0.5)  # several heartbeats: a push would have happened by now
    assert server.edges["e1"].release_version == 1
    assert answer("A cat is sleeping on a sofa.").system == default.instructions
