"""The daemon wired together: real sources, events, hooks, metrics; a scripted backend.

Subprocess tests run the real ``gemma-edge run`` code path through
``tests.edge.scripted_edge`` (everything real but the model).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from edge.daemon import EdgeDaemon
from edge.events import EventLog, SafetyHooks
from edge.metrics import EdgeMetrics
from edge.sources import open_source
from shared.backend import GenerateRequest
from shared.config import EdgeConfig, PolicyConfig
from shared.errors import BackendError, ConfigError
from shared.messages import Escalation, Review
from shared.policy import find_keywords
from shared.release import skill_release
from shared.skill import Skill, save_skill
from tests.edge.media import VTEST, background, scene_video, with_box, write_video
from tests.fakes import ScriptedBackend

ROOT = Path(__file__).resolve().parents[2]
QUIET = "Answer: Something happens.\nSAFETY: no\nCONFIDENCE: 0.9"


def daemon(source, backend=None, config=None, **kw) -> tuple[EdgeDaemon, io.StringIO]:
    out = io.StringIO()
    d = EdgeDaemon(
        config or EdgeConfig(),
        backend or ScriptedBackend(QUIET),
        source,
        EventLog(None, stream=out),
        **kw,
    )
    return d, out


def events(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_scenes_all_answered_and_every_keyword_scene_escalates():
    config = EdgeConfig()
    d, out = daemon(open_source("scenes"), config=config)
    d.run(progress=False)
    evs = events(out)
    answers = [e for e in evs if e["type"] == "answer"]
    assert len(answers) == 40 and evs[-1]["type"] == "summary" and evs[-1]["answered"] == 40
    policy = config.policy
    for e in answers:
        named = find_keywords(
            e["input"], tuple(policy.safety_keywords), tuple(policy.keyword_exceptions)
        )
        if named:
            assert e["decision"]["escalate"], e["input"]
            assert "safety_keyword" in e["decision"]["reasons"]
            assert e["decision"]["keywords"] == named
        if e["decision"]["escalate"]:
            assert e["decision"]["reasons"] and e["case_id"]
    assert sum(e["decision"]["escalate"] for e in answers) >= 7


def test_a_backend_error_escalates_the_input_and_the_daemon_goes_on(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo breaks\nthree\n")
    backend = ScriptedBackend(QUIET, fail_on="breaks", error=BackendError("model fell over"))
    d, out = daemon(open_source(str(path)), backend)
    stats = d.run(progress=False)
    evs = events(out)
    assert [e["type"] for e in evs] == ["answer", "error", "answer", "summary"]
    assert evs[1]["error"] == "model fell over"
    assert evs[1]["decision"]["escalate"] and evs[1]["decision"]["reasons"] == ["judge_error"]
    assert evs[1]["case_id"] and evs[1]["input"] == "two breaks"
    assert stats.backend_errors == 1 and stats.answered == 2
    assert stats.escalation_reasons["judge_error"] == 1


def test_video_frames_are_gated_before_the_model(tmp_path):
    path = scene_video(tmp_path / "clip.avi", n=80, fps=10)
    backend = ScriptedBackend(QUIET)
    d, out = daemon(open_source(str(path)), backend)
    d.run(progress=False)
    evs = events(out)
    summary = evs[-1]
    assert summary["frames"]["seen"] == 80 == summary["inputs"]
    assert summary["model_calls"] == len(backend.requests) == summary["frames"]["passed"]
    assert summary["frames"]["gated"] >= 60  # 2 fps of 10 fps, and the static half
    assert summary["frames"]["gated_by_reason"]["rate"] >= 60
    answers = [e for e in evs if e["type"] == "answer"]
    assert all(e["kind"] == "frame" and e["input"].startswith("Camera view") for e in answers)
    assert sum(e["gated_before"] for e in answers) <= summary["frames"]["gated"]
    assert backend.requests[0].image is None  # text-only backend: no JPEG work


@pytest.mark.slow
@pytest.mark.skipif(not VTEST.exists(), reason="apt-get install opencv-doc for vtest.avi")
def test_vtest_gated_far_outnumber_model_calls_and_escalations_have_reasons():
    config = EdgeConfig(policy=PolicyConfig(audit_every=5))
    backend = ScriptedBackend(QUIET)
    d, out = daemon(open_source(str(VTEST)), backend, config)
    d.run(max_inputs=300, progress=False)  # the first 30 s of the video
    evs = events(out)
    summary = evs[-1]
    assert summary["frames"]["seen"] == 300
    assert summary["frames"]["gated"] > 8 * summary["model_calls"]
    escalated = [e for e in evs if e.get("decision", {}).get("escalate")]
    assert escalated and all(e["decision"]["reasons"] for e in escalated)


def test_a_skill_file_runs_bare_from_the_start_and_a_broken_one_stops_it(tmp_path):
    from edge.cli import parser
    from edge.run import run

    skill_path = tmp_path / "skill.json"
    save_skill(Skill(version=1, instructions="Version one."), skill_path)
    texts = tmp_path / "in.txt"
    texts.write_text("a\nb\n")
    events_path = tmp_path / "events.jsonl"
    argv = ["run", "--source", str(texts), "--skill", str(skill_path), "--events",
            str(events_path), "--no-progress"]  # fmt: skip
    backend = ScriptedBackend(QUIET)
    assert run(parser().parse_args(argv), backend=backend) == 0
    assert [r.system for r in backend.requests] == ["Version one."] * 2
    answers = [json.loads(x) for x in events_path.read_text().splitlines()]
    assert [e["skill_version"] for e in answers if e["type"] == "answer"] == [1, 1]
    assert all(e["p_unsafe"] is None for e in answers if e["type"] == "answer")  # no head

    skill_path.write_text("instructions: ''\n")
    with pytest.raises(ConfigError, match="skill.json"):
        run(parser().parse_args(argv), backend=ScriptedBackend(QUIET))


class AdapterBackend(ScriptedBackend):
    supports_adapters = True

    def __init__(self):
        super().__init__(QUIET)
        self.loaded: dict[str, Path] = {}
        self.active = None

    @property
    def adapters(self) -> list[str]:
        return sorted(self.loaded)

    @property
    def active_adapter(self) -> str | None:
        return self.active

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        self.loaded[name] = path

    def set_adapter(self, name: str | None) -> None:
        self.active = name


class RecordingLink:
    """What the daemon needs of ``edge.link.LinkClient``; records what it is given."""

    def __init__(self):
        self.cases: list[tuple[Escalation, bytes | None]] = []
        self.versions = (0, 0, 0)

    def escalate(self, esc: Escalation, frame: bytes | None = None) -> None:
        self.cases.append((esc, frame))

    def set_versions(self, skill_version, adapter_version, release=0, head_live=None) -> None:
        self.versions = (skill_version, adapter_version, release)
        self.head_live = head_live

    def count_input(self, release: int) -> None:
        self.counted = getattr(self, "counted", 0) + 1

    def depth(self) -> int:
        return len(self.cases)


def test_link_gets_every_escalation_and_pushes_apply_to_the_next_input(tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("fire one\nquiet\nsmoke two\nquiet again\n")
    backend = AdapterBackend()
    d, out = daemon(open_source(str(texts)), backend)
    link = RecordingLink()
    d.attach_link(link)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    pushed = skill_release(Skill(version=3, instructions="Pushed."), adapter, version=4)

    original = backend.generate

    def generate(request):
        if request.input == "quiet":  # pushes arrive from the link's thread mid-input
            d.on_release(pushed)
            d.on_review(Review(case_id="c" * 12, answer="Answer: x", safety=True, reviewer="t"))
        return original(request)

    backend.generate = generate
    d.run(progress=False)
    evs = [e for e in events(out) if e["type"] == "answer"]
    assert [e["release"] for e in evs] == [0, 0, 4, 4]
    assert [e["adapter_version"] for e in evs] == [0, 0, 4, 4]
    assert backend.loaded[backend.active] == adapter
    assert [esc.input for esc, _ in link.cases] == ["fire one", "smoke two"]
    esc = link.cases[1][0]
    assert esc.reasons == ["safety_keyword"] and esc.safety_keyword
    assert (esc.release_version, esc.adapter_version) == (4, 4) and esc.edge_id == "edge-1"
    assert link.versions == (3, 4, 4)  # skill, adapter, release
    assert any(e["type"] == "review" for e in events(out))


def test_frame_escalations_carry_the_jpeg_to_the_link(tmp_path):
    path = scene_video(tmp_path / "clip.avi", n=20, fps=10)
    config = EdgeConfig(policy=PolicyConfig(audit_every=1, cooldown_s=0))
    d, _ = daemon(open_source(str(path)), config=config)
    link = RecordingLink()
    d.attach_link(link)
    d.run(progress=False)
    assert link.cases
    for esc, frame in link.cases:
        assert esc.kind == "frame" and esc.has_frame and frame[:2] == b"\xff\xd8"


def test_safety_events_reach_the_pub_socket_and_the_command(tmp_path):
    port = 25000 + os.getpid() % 1000
    hooks = SafetyHooks(f"sh -c 'cat >> {tmp_path}/hook.jsonl; echo >> {tmp_path}/hook.jsonl'",
                        f"tcp://127.0.0.1:{port}")  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"safety")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)  # PUB/SUB: let the subscription arrive
    texts = tmp_path / "in.txt"
    texts.write_text("A cat.\nKnife on the floor.\nA fire extinguisher.\nFlames!\n")
    try:
        d, _ = daemon(open_source(str(texts)), hooks=hooks)
        d.run(progress=False)
        hooks.close()
        received = []
        while sub.poll(1000):
            topic, body = sub.recv_multipart()
            received.append(json.loads(body)["input"])
    finally:
        sub.close()
        ctx.term()
    assert received == ["Knife on the floor.", "Flames!"]
    lines = [x for x in (tmp_path / "hook.jsonl").read_text().splitlines() if x.strip()]
    assert [json.loads(x)["input"] for x in lines] == received
    assert hooks.sent == 4 and hooks.failed == 0


def test_events_file_rotates_and_keeps_n(tmp_path):
    log = EventLog(tmp_path / "ev.jsonl", rotate_mb=0.001, keep=2)  # ~1 KB per file
    for i in range(100):
        log.write({"i": i, "pad": "x" * 50})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ev.jsonl", "ev.jsonl.1", "ev.jsonl.2"]
    last = [json.loads(x)["i"] for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert last[-1] == 99 and all(p.stat().st_size <= 1100 for p in tmp_path.iterdir())


def test_metrics_are_served_in_prometheus_format(tmp_path):
    metrics = EdgeMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        path = scene_video(tmp_path / "clip.avi", n=30, fps=10)
        texts = tmp_path / "in.txt"
        texts.write_text("fire\nfine\n")
        d, _ = daemon(open_source(str(path)), metrics=metrics)
        d.run(progress=False)
        d2, _ = daemon(open_source(str(texts)), metrics=metrics)
        d2.run(progress=False)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert "gemma_edge_frames_total 30.0" in body
    assert 'gemma_edge_gated_frames_total{reason="rate"}' in body
    assert 'gemma_edge_escalations_total{reason="safety_keyword"} 1.0' in body
    assert 'gemma_edge_inputs_total{kind="text"} 2.0' in body
    assert "gemma_edge_latency_seconds_count" in body


# ---------------------------------------------------------------- real subprocesses
def scripted(*args: str, delay: float = 0.0, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.edge.scripted_edge", "--delay", str(delay), "--", *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_current_input_flushes_and_exits_0(tmp_path, sig):
    events_file = tmp_path / "ev.jsonl"
    proc = scripted("run", "--source", "-", "--events", str(events_file), delay=2.0,
                    stdin=subprocess.PIPE)  # fmt: skip
    proc.stdin.write("first input\nsecond input\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "first input" not in _read(events_file):
        time.sleep(0.1)
    time.sleep(0.5)  # now busy with "second input" (2 s)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    evs = [json.loads(x) for x in events_file.read_text().splitlines()]
    assert [e.get("input") for e in evs[:2]] == ["first input", "second input"]
    assert evs[-1]["type"] == "summary" and evs[-1]["answered"] == 2
    assert "2 inputs from stdin" in err


@pytest.mark.slow
def test_signal_while_waiting_for_input_exits_0_at_once(tmp_path):
    proc = scripted("run", "--source", "-", stdin=subprocess.PIPE)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["type"] == "summary"


def test_cli_errors_are_clear(tmp_path):
    proc = scripted("run", "--source", str(tmp_path / "nope.avi"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "not found" in err and "Traceback" not in err
    bad = tmp_path / "edge.yaml"
    bad.write_text("policy:\n  budget_per_minute: -1\n")
    proc = scripted("run", "--source", "scenes", "--config", str(bad))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "policy.budget_per_minute" in err


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
@pytest.mark.integration
def test_real_cli_on_the_embedded_model(tmp_path):
    """``gemma-edge run`` as a user runs it, on the bundled Gemma 3 270M (3 scenes)."""
    cases = tmp_path / "cases.jsonl"
    lines = [
        {"id": "a", "input": "Flames are visible through the window of a parked car."},
        {"id": "b", "input": "A laptop and a coffee mug are on a desk."},
        {"id": "c", "input": "A fire extinguisher hangs next to the door."},
    ]
    cases.write_text("".join(json.dumps(x) + "\n" for x in lines))
    events_file = tmp_path / "ev.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edge",
        "run",
        "--source",
        str(cases),
        "--events",
        str(events_file),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    evs = [json.loads(x) for x in events_file.read_text().splitlines()]
    answers = {e["id"]: e for e in evs if e["type"] == "answer"}
    assert set(answers) == {"a", "b", "c"}
    assert all(e["raw"].startswith("Answer:") and e["latency_s"] > 0 for e in answers.values())
    a = answers["a"]
    assert a["decision"]["keywords"] == ["flames"] and a["release"] == 0
    # The bundled release's head is sure: a local alert (no teacher call is needed for it).
    assert a["alert"] and a["safety_event"] and a["p_unsafe"] > 0.9
    assert "safety_keyword" not in answers["c"]["decision"]["reasons"]
    assert "3 inputs from" in done.stderr and evs[-1]["type"] == "summary"


@pytest.mark.parametrize("window, calls", [(30.0, 2), (0.0, 12)])
def test_a_repeated_sketch_skips_the_text_model(tmp_path, window, calls):
    # A and B alternate at 2 fps: every frame passes the gate (big change), but after the
    # first, each sketch reads the same ("Motion: centre."), so a text model is asked once.
    bg = background()
    frames = [bg if i % 2 == 0 else with_box(bg, 120, size=80) for i in range(12)]
    path = write_video(tmp_path / "ab.avi", frames, fps=2)
    config = EdgeConfig(gate={"same_sketch_s": window}, sketch={"width": 320})
    backend = ScriptedBackend(QUIET)
    d, out = daemon(open_source(str(path)), backend, config)
    d.run(progress=False)
    summary = events(out)[-1]
    assert len(backend.requests) == calls == summary["model_calls"]
    assert summary["frames"]["gated_by_reason"].get("same_sketch", 0) == 12 - calls
    assert summary["frames"]["passed"] == calls


def test_a_release_decides_with_its_head_and_a_pushed_one_applies_to_the_next_input(tmp_path):
    from shared.calibration import Calibration
    from shared.head import fit_head
    from shared.release import build_files, write_release
    from shared.skill import default_skill
    from tests.fakes import FeatureBackend, hazard_cases

    backend = FeatureBackend()
    import numpy as np

    cases = hazard_cases(40)
    x = [backend.generate(GenerateRequest("", c.input, hidden_layers=(1, 2))).hidden for c in cases]
    head = fit_head(np.array(x), [c.safety for c in cases], layers=(1, 2))
    cal = Calibration(lower=0.3, upper=0.7, recall_target=0.95, max_false_alert_rate=0.1,
                      delta=0.1, guaranteed=True, n_unsafe=60, n_safe=60)  # fmt: skip
    v1 = write_release(tmp_path / "v1", build_files(1, default_skill(), head, cal))
    v2 = write_release(tmp_path / "v2", build_files(2, default_skill(), None, None))
    texts = tmp_path / "in.txt"
    texts.write_text("DANGER one\ncalm two\nDANGER three\ncalm four\n")
    d, out = daemon(open_source(str(texts)), backend, release=v1,
                    config=EdgeConfig(policy=PolicyConfig(audit_every=0)))  # fmt: skip
    original = backend.generate

    def generate(request):
        if request.input == "calm two":  # a push arrives mid-input from the link's thread
            d.on_release(v2)
        return original(request)

    backend.generate = generate
    d.run(progress=False)
    evs = [e for e in events(out) if e["type"] == "answer"]
    assert [e["release"] for e in evs] == [1, 1, 2, 2]
    first, second = evs[0], evs[1]
    assert first["p_unsafe"] > 0.9 and first["alert"] and first["safety_event"]
    assert not first["decision"]["escalate"]  # caught locally: no teacher call
    assert second["p_unsafe"] < 0.1 and not second["alert"] and not second["decision"]["escalate"]
    assert evs[2]["p_unsafe"] is None  # v2 has no head: the words and confidence rules decide
    assert events(out)[-1]["release"] == 2
