"""The teacher server on loopback: authentication, bad input, duplicates, and its CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq
import zmq.auth

from edge.link import LinkClient
from shared.config import LinkConfig
from shared.messages import Ack, ErrorReply, Escalation, Heartbeat, decode, encode
from shared.teacher_config import ServerConfig, TeacherConfig
from teacher.data.store import CaseStore, default_store_path
from teacher.serve.keys import init_keys, new_edge, revoke_edge
from teacher.serve.server import TeacherServer

ROOT = Path(__file__).resolve().parents[2]


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def esc(edge: str = "e1", **kw) -> Escalation:
    return Escalation(
        case_id=uuid.uuid4().hex, edge_id=edge, created_at=time.time(), source="t", input="x", **kw
    )


@pytest.fixture
def secure(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys)
    new_edge(keys, "e1")
    config = TeacherConfig(
        home=tmp_path / "home",
        server=ServerConfig(bind="tcp://127.0.0.1:*", keys_dir=keys, heartbeat_s=0.1),
    )
    server = TeacherServer(config)
    server.start()
    yield server, keys
    server.stop()


def edge_link(tmp_path, server, keys, name: str, secret: Path) -> LinkClient:
    config = LinkConfig(
        teacher=server.endpoint,
        edge_secret_key=secret,
        teacher_public_key=keys / "teacher.key",
        outbox=tmp_path / name / "outbox.sqlite",
        heartbeat_s=0.1,
        timeout_s=1.0,
    )
    return LinkClient(config, name, tmp_path / name)


def test_an_edge_with_a_key_off_the_allow_list_gets_no_answer_and_nothing_is_stored(
    secure, tmp_path
):
    server, keys = secure
    _, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    stranger = edge_link(tmp_path, server, keys, "stranger", Path(stranger_secret))
    stranger.start()
    stranger.escalate(esc("stranger"))
    # A raw socket with the same unknown key: its heartbeat is never answered either.
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.curve_publickey, raw.curve_secretkey = zmq.auth.load_certificate(stranger_secret)
    raw.curve_serverkey, _ = zmq.auth.load_certificate(keys / "teacher.key")
    raw.connect(server.endpoint)
    raw.send_multipart(encode(Heartbeat(sender="stranger")))
    raw.send_multipart(encode(esc("stranger")))
    try:
        assert raw.poll(2500) == 0
        assert not stranger.connected and stranger.depth() == 1
        assert server.store.count() == 0 and "stranger" not in server.edges
        # ... while an allowed edge on the same server is served.
        allowed = edge_link(tmp_path, server, keys, "e1", keys / "edges" / "e1.key_secret")
        allowed.start()
        allowed.escalate(esc("e1"))
        wait_for(lambda: allowed.depth() == 0)
        allowed.stop()
        assert server.store.count() == 1
        assert server.store.list_cases()[0].edge_id == "e1"
    finally:
        raw.close()
        stranger.stop()


def test_an_allowed_edge_cannot_escalate_under_another_name(secure, tmp_path):
    server, keys = secure
    new_edge(keys, "e2")
    # e2's key, but the link says it is e1: the teacher refuses, the edge keeps it aside.
    link = edge_link(tmp_path, server, keys, "e1", keys / "edges" / "e2.key_secret")
    link.start()
    case = esc("e1")
    link.escalate(case)
    try:
        wait_for(lambda: link.depth() == 0)
        assert server.store.count() == 0
        [(cid, reason)] = link.outbox.dead()
        assert cid == case.case_id and "may not send cases as 'e1'" in reason
    finally:
        link.stop()


def test_a_revoked_edge_is_refused_on_its_next_connection(secure, tmp_path):
    server, keys = secure
    new_edge(keys, "e3")
    revoke_edge(keys, "e3")
    link = edge_link(tmp_path, server, keys, "e3", keys / "revoked" / "e3.key_secret")
    link.start()
    link.escalate(esc("e3"))
    time.sleep(1.5)
    try:
        assert not link.connected and link.depth() == 1 and server.store.count() == 0
    finally:
        link.stop()


@pytest.fixture
def plain(tmp_path):
    config = TeacherConfig(
        home=tmp_path / "home",
        server=ServerConfig(bind="tcp://127.0.0.1:*", insecure=True, max_message_bytes=4096),
    )
    server = TeacherServer(config)
    server.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    yield server, sock
    sock.close()
    server.stop()


def ask(sock, frames):
    sock.send_multipart(frames)
    assert sock.poll(5000), "no reply"
    return decode(sock.recv_multipart())[0]


def test_bad_messages_get_an_error_reply_and_change_nothing(plain, caplog):
    server, sock = plain
    good = esc()
    doc = json.loads(good.model_dump_json())
    cases = {
        "malformed": [b"\x00\xffnot json"],
        "unknown_type": [json.dumps({"type": "gossip" * 600, "schema_version": 1}).encode()],
        "bad_version": [json.dumps({**doc, "schema_version": 2}).encode()],
        "too_large": [good.model_dump_json().encode(), b"x" * 5000],
    }
    for code, frames in cases.items():
        reply = ask(sock, frames)
        assert isinstance(reply, ErrorReply) and reply.code == code, (code, reply)
    missing = {k: v for k, v in doc.items() if k != "input"}
    reply = ask(sock, [json.dumps(missing).encode()])
    assert reply.code == "malformed" and reply.case_id == good.case_id
    assert "escalation.input" in reply.detail
    reply = ask(sock, [good.model_dump_json().encode(), b"an undeclared frame"])
    assert reply.code == "malformed" and "payload" in reply.detail
    reply = ask(sock, encode(Ack(case_id=good.case_id)))
    assert reply.code == "rejected"
    assert server.store.count() == 0
    assert server.stats["errors"] == 6
    assert "bad message from edge" in caplog.text
    # Still serving: the good case is stored and acknowledged.
    assert ask(sock, encode(good)) == Ack(case_id=good.case_id)


def test_duplicates_are_acknowledged_again_and_stored_once(plain):
    server, sock = plain
    case = esc()
    first = ask(sock, encode(case))
    again = ask(sock, encode(case))
    assert (first.duplicate, again.duplicate) == (False, True)
    assert server.store.case_ids() == [case.case_id]


def teacher_cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "teacher", *args], cwd=cwd, capture_output=True, text=True
    )


def test_keys_cli_init_new_edge_list(tmp_path):
    keys = str(tmp_path / "keys")
    assert teacher_cli("keys", "--keys-dir", keys, "init").returncode == 0
    out = teacher_cli("keys", "--keys-dir", keys, "new-edge", "kitchen-cam")
    assert out.returncode == 0 and "kitchen-cam.key_secret" in out.stdout
    again = teacher_cli("keys", "--keys-dir", keys, "new-edge", "kitchen-cam")
    assert again.returncode == 2 and "already has keys" in again.stderr
    listed = teacher_cli("keys", "--keys-dir", keys, "list").stdout
    public, _ = zmq.auth.load_certificate(tmp_path / "keys" / "edges" / "kitchen-cam.key")
    assert "kitchen-cam" in listed and public.decode() in listed
    bad = teacher_cli("keys", "--keys-dir", keys, "new-edge", "bad name!")
    assert bad.returncode == 2 and "edge name" in bad.stderr


def test_cases_cli_list_show_correct(tmp_path):
    home = tmp_path / "home"
    store = CaseStore(default_store_path(home))
    case = esc(safety=False)
    store.add_case(case)
    store.close()
    listed = teacher_cli("cases", "--home", str(home), "list", "--unreviewed")
    assert listed.returncode == 0 and case.case_id in listed.stdout
    fixed = teacher_cli(
        "cases",
        "--home",
        str(home),
        "correct",
        case.case_id,
        "--safety",
        "yes",
        "--answer",
        "A pan is on fire.",
        "--keywords",
        "pan,fire",
    )
    assert fixed.returncode == 0, fixed.stderr
    shown = json.loads(teacher_cli("cases", "--home", str(home), "show", case.case_id).stdout)
    assert shown["correction"]["safety"] is True
    assert shown["correction"]["answer"].startswith("Answer: A pan is on fire.\nSAFETY: yes")
    [label] = CaseStore(default_store_path(home)).labeled_cases()
    assert (label.safety, label.keywords, label.origin) == (True, ("pan", "fire"), "person")
    missing = teacher_cli("cases", "--home", str(home), "show", "nope-nope-nope")
    assert missing.returncode == 2 and "no case" in missing.stderr
    bad = teacher_cli("cases", "--home", str(home), "correct", case.case_id, "--safety", "maybe")
    assert bad.returncode == 2 and "yes or no" in bad.stderr


def test_an_edge_too_old_for_release_pushes_is_told_which_version_it_needs(tmp_path, caplog):
    """A pre-0.2 edge answers a release push with unknown_type; the teacher tells it."""
    from shared.messages import EDGE_TOO_OLD
    from shared.release import build_files
    from shared.skill import default_skill
    from teacher.release.registry import ReleaseRegistry

    config = TeacherConfig(
        home=tmp_path / "home",
        server=ServerConfig(bind="tcp://127.0.0.1:*", insecure=True, push_retry_s=60),
    )
    registry = ReleaseRegistry(config.home)
    registry.add(build_files(1, default_skill(), None, None), {})
    registry.activate(1)
    server = TeacherServer(config)
    server.start()
    old = zmq.Context.instance().socket(zmq.DEALER)
    old.linger = 0
    old.connect(server.endpoint)
    try:
        old.send_multipart(encode(Heartbeat(sender="old-edge")))
        kinds = []
        deadline = time.monotonic() + 5
        while "release_push" not in kinds and time.monotonic() < deadline:
            if old.poll(200):
                kinds.append(json.loads(old.recv_multipart()[0])["type"])
        assert "release_push" in kinds
        # what an edge that knows no release_push answers
        detail = "unknown_type: 'release_push' is not a message type (escalation, ack)"
        old.send_multipart(encode(ErrorReply(code="unknown_type", detail=detail)))
        reply = None
        while reply is None and time.monotonic() < deadline:
            if old.poll(200):
                msg = decode(old.recv_multipart())[0]
                reply = msg if isinstance(msg, ErrorReply) else None
        assert reply is not None and reply.code == "bad_version" and reply.detail == EDGE_TOO_OLD
        assert "gemma-edge 0.2.0 or later" in reply.detail
        assert "edge old-edge is too old for this teacher" in caplog.text
    finally:
        old.close()
        server.stop()
        server.store.close()


def test_an_old_home_s_skill_and_adapter_become_one_release_once(tmp_path, caplog):
    """Teacher homes from before 0.2.0 kept skills/ and adapters/ registries; the first
    start adopts their active versions as a release (no head), with one log line."""
    from shared.skill import default_skill
    from teacher.release.registry import ReleaseRegistry

    home = tmp_path / "home"
    skill = default_skill().model_copy(update={"version": 2, "instructions": "Old prompt."})
    (home / "skills" / "v2").mkdir(parents=True)
    (home / "skills" / "v2" / "skill.json").write_bytes(skill.to_bytes())
    (home / "skills" / "active").write_text("2\n")
    adapter = home / "adapters" / "v1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (adapter / "adapter_model.safetensors").write_bytes(
        __import__("safetensors.numpy", fromlist=["save"]).save(
            {"a.lora_A.weight": __import__("numpy").ones((4, 8), dtype="float32")}
        )
    )
    (home / "adapters" / "active").write_text("1\n")
    registry = ReleaseRegistry(home)
    with caplog.at_level("WARNING"):
        release = registry.ensure()
    assert release.version == 1 and release.head is None
    assert release.skill.instructions == "Old prompt."
    assert (release.adapter_dir / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    lines = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert lines == ["migrated skills/v2 and adapters/v1 of this teacher home into release v1 "
                     "(no safety head); edges get it on their next heartbeat"]  # fmt: skip
    assert registry.ensure().version == 1 and registry.versions() == [1]  # once
    assert (home / "skills" / "v2" / "skill.json").is_file()  # nothing of the old is lost
