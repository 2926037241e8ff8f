"""The edge link against a real teacher server on loopback: drain, reconnect, reviews, pushes."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import zmq
from safetensors.numpy import save

from edge import updates
from edge.link import LinkClient
from shared.config import LinkConfig
from shared.errors import PushRejected
from shared.evaluation import bundled_cases
from shared.messages import (
    ErrorReply,
    Escalation,
    Heartbeat,
    decode,
    encode,
    file_entry,
)
from shared.skill import default_skill
from shared.teacher_config import ReviewerConfig, ServerConfig, TeacherConfig
from teacher.serve.review import LabelsReviewer
from teacher.serve.server import TeacherServer
from tests.helpers import free_port

LABELS = bundled_cases()


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def esc(edge: str = "e1", text: str | None = None) -> Escalation:
    return Escalation(
        case_id=uuid.uuid4().hex,
        edge_id=edge,
        created_at=time.time(),
        source="test",
        input=text or LABELS[0].input,
    )


def teacher(tmp_path, bind: str = "tcp://127.0.0.1:*", reviewer=None) -> TeacherServer:
    config = TeacherConfig(
        home=tmp_path / "teacher",
        server=ServerConfig(bind=bind, insecure=True, heartbeat_s=0.1, push_retry_s=0.5),
        reviewer=ReviewerConfig(backend="labels", labels="x.jsonl"),
    )
    server = TeacherServer(config, reviewer)
    server.start()
    return server


def link_config(tmp_path, endpoint: str) -> LinkConfig:
    return LinkConfig(
        teacher=endpoint,
        insecure=True,
        outbox=tmp_path / "edge" / "outbox.sqlite",
        heartbeat_s=0.1,
        timeout_s=1.0,
        reconnect_max_s=0.5,
    )


@pytest.fixture
def stack(tmp_path):
    """A running teacher (labels reviewer) and a connected edge link with recorders."""
    server = teacher(tmp_path, reviewer=LabelsReviewer(cases=LABELS))
    got = {"reviews": [], "releases": []}
    link = LinkClient(
        link_config(tmp_path, server.endpoint),
        "e1",
        tmp_path / "edge" / "state",
        on_review=got["reviews"].append,
        on_release=got["releases"].append,
    )
    link.start()
    yield server, link, got
    link.stop()
    server.stop()
    server.store.close()


def test_cases_queue_while_teacher_is_down_then_arrive_once_with_reviews(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    reviews = []
    link = LinkClient(link_config(tmp_path, endpoint), "e1", tmp_path / "st", reviews.append)
    link.start()
    cases = [esc(text=c.input) for c in LABELS[:20]]
    for case in cases:
        link.escalate(case)  # returns with no teacher at all
    assert link.depth() == 20 and not link.connected
    time.sleep(1.5)  # past timeout_s: the link has given up once and backs off
    server = teacher(tmp_path, bind=endpoint, reviewer=LabelsReviewer(cases=LABELS))
    try:
        wait_for(lambda: link.depth() == 0)
        assert sorted(server.store.case_ids()) == sorted(c.case_id for c in cases)
        wait_for(lambda: len(reviews) == 20)
        by_id = {r.case_id: r for r in reviews}
        for case, label in zip(cases, LABELS[:20], strict=True):
            assert by_id[case.case_id].safety == label.safety
    finally:
        link.stop()
        server.stop()


def test_escalation_for_another_edge_is_refused_locally(stack):
    _, link, _ = stack
    with pytest.raises(Exception, match="not this edge"):
        link.escalate(esc(edge="someone-else"))


def adapter_files(rank: int = 4) -> dict[str, bytes]:
    tensors = {"base_model.model.q_proj.lora_A.weight": np.ones((rank, 8), dtype=np.float32)}
    config = {"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"]}
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": save(tensors),
    }


def test_a_release_with_a_bad_adapter_is_refused_keeping_the_old(stack, tmp_path):
    from shared.release import build_files, set_active
    from teacher.release.registry import ReleaseRegistry

    server, link, got = stack
    registry = ReleaseRegistry(server.config.home)
    registry.add(build_files(1, default_skill(), None, None, adapter_files()), {})
    registry.activate(1)
    wait_for(lambda: link.release_version == 1)
    state = tmp_path / "edge" / "state"
    bad = {**adapter_files(), "adapter_model.safetensors": b"not safetensors at all"}
    folder = registry.path(2)  # damaged on the teacher's disk: the edge must refuse it
    folder.mkdir()
    for name, data in build_files(2, default_skill(), None, None, bad).items():
        (folder / name).write_bytes(data)
    set_active(registry.root, 2)
    time.sleep(1.5)  # pushed, refused, pushed again after push_retry_s, refused again
    assert link.release_version == 1 and updates.active_release(state).version == 1
    assert not (state / "releases" / "v2").exists()
    assert [r.version for r in got["releases"]] == [1]


def test_a_release_is_pushed_whole_installed_reported_and_rolled_back(stack, tmp_path):
    from shared.calibration import conservative
    from shared.release import build_files, default_release
    from teacher.release.registry import ReleaseRegistry

    server, link, got = stack
    state = tmp_path / "edge" / "state"
    registry = ReleaseRegistry(server.config.home)
    head = default_release().head
    for version in (1, 2):
        skill = default_skill().model_copy(update={"name": f"release {version}"})
        files = build_files(version, skill, head, conservative(), adapter_files())
        registry.add(files, {"passed": True})
    registry.activate(2)
    # The edge reports what it RUNS; the link alone reports what it installed.
    wait_for(lambda: link.release_version == 2)
    link.set_versions(0, 0, 2)
    wait_for(lambda: server.edges.get("e1") and server.edges["e1"].release_version == 2)
    assert [r.version for r in got["releases"]] == [2]
    release = updates.active_release(state)
    assert release.version == 2 and release.skill.name == "release 2"
    assert release.adapter_dir == state / "releases" / "v2" and release.head is not None
    registry.activate(1)  # rollback: the whole older release goes out
    wait_for(lambda: link.release_version == 1)
    link.set_versions(0, 0, 1)
    assert updates.active_release(state).skill.name == "release 1"
    registry.activate(0)  # back to the bundled release: it is pushed too
    wait_for(lambda: link.release_version == 0)
    assert updates.active_release(state).version == 0
    assert [r.version for r in got["releases"]] == [2, 1, 0]


def test_a_tampered_release_push_is_refused_and_the_old_one_stays(tmp_path):
    from shared.messages import ReleasePush
    from shared.release import build_files

    files = build_files(4, default_skill(), None, None, adapter_files())
    names = ["manifest.json", *sorted(n for n in files if n != "manifest.json")]
    push = ReleasePush(version=4, files=[file_entry(n, files[n]) for n in names])
    assert updates.install_release(tmp_path, push, [files[n] for n in names]).version == 4
    bad = build_files(5, default_skill(), None, None, adapter_files())
    bad_payloads = [bad[n] for n in names]
    bad_payloads[1] = bad_payloads[1][:-1] + b"X"  # tampered after the manifest was written
    entries = [file_entry(n, d) for n, d in zip(names, bad_payloads, strict=True)]
    with pytest.raises(PushRejected, match="sha256"):
        updates.install_release(tmp_path, ReleasePush(version=5, files=entries), bad_payloads)
    assert updates.active_release(tmp_path).version == 4
    assert not (tmp_path / "releases" / "v5").exists()


def _push(files: dict[str, bytes], version: int):
    from shared.messages import ReleasePush

    names = ["manifest.json", *sorted(n for n in files if n != "manifest.json")]
    msg = ReleasePush(version=version, files=[file_entry(n, files[n]) for n in names])
    return msg, [files[n] for n in names]


def test_malformed_releases_are_refused_naming_what_is_wrong(tmp_path):
    import hashlib

    from shared.release import build_files

    files = build_files(3, default_skill(), None, None, adapter_files())
    junk = b"{not: [a skill"
    manifest = json.loads(files["manifest.json"])
    for entry in manifest["files"]:
        if entry["name"] == "skill.json":
            entry.update(size=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    broken = {**files, "skill.json": junk, "manifest.json": json.dumps(manifest).encode()}
    with pytest.raises(PushRejected, match="skill"):
        updates.install_release(tmp_path, *_push(broken, 3))
    no_config = build_files(4, default_skill(), None, None, adapter_files())
    del no_config["adapter_config.json"]
    with pytest.raises(PushRejected, match="adapter_config.json"):
        updates.install_release(tmp_path, *_push(no_config, 4))
    assert updates.active_release(tmp_path) is None
    assert not any((tmp_path / "releases").glob("v*"))


def test_edge_answers_garbage_from_the_teacher_with_an_error_and_keeps_going(tmp_path):
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    link = LinkClient(link_config(tmp_path, f"tcp://127.0.0.1:{port}"), "e1", tmp_path / "st")
    link.start()
    try:
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        assert decode(frames)[0].type == "heartbeat"
        router.send_multipart([identity, b"\xff not json"])
        router.send_multipart([identity, b'{"type": "review", "schema_version": 9}'])
        replies = []
        deadline = time.monotonic() + 5
        while len(replies) < 2 and time.monotonic() < deadline:
            if router.poll(200):
                msg, _ = decode(router.recv_multipart()[1:])
                if isinstance(msg, ErrorReply):
                    replies.append(msg.code)
        assert replies == ["malformed", "bad_version"]
        router.send_multipart([identity, *encode(Heartbeat(sender="teacher"))])
        link.escalate(esc())
        got_case = False
        while not got_case and time.monotonic() < deadline + 5:
            if router.poll(200):
                got_case = decode(router.recv_multipart()[1:])[0].type == "escalation"
        assert got_case  # still alive and sending
    finally:
        link.stop()
        router.close()


def test_frames_travel_with_their_case_and_an_oversized_one_is_left_behind(stack, caplog):
    server, link, _ = stack
    small, big = esc(), esc()
    link.escalate(small, b"\xff\xd8 a jpeg")
    link.escalate(big, b"x" * link.config.max_message_bytes)
    wait_for(lambda: link.depth() == 0)
    assert server.store.frame(small.case_id) == b"\xff\xd8 a jpeg"
    assert server.store.get(small.case_id)["has_frame"] is True
    assert server.store.frame(big.case_id) is None  # the case itself arrived
    assert "sent without it" in caplog.text
