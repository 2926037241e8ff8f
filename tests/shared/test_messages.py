import json
import uuid

import pytest

from shared.errors import MessageError
from shared.messages import (
    Ack,
    ErrorReply,
    Escalation,
    Heartbeat,
    PushResult,
    ReleasePush,
    Review,
    decode,
    encode,
    error_code,
    file_entry,
    verify_payloads,
)

CASE = uuid.uuid4().hex


def escalation(**kw):
    base = dict(
        case_id=CASE,
        edge_id="edge-1",
        created_at=1.0,
        source="cam0",
        input="a scene",
        answer="Answer: x\nSAFETY: no\nCONFIDENCE: 0.4",
        safety=False,
        confidence=0.4,
        reasons=["low_confidence"],
    )
    base.update(kw)
    return Escalation(**base)


MESSAGES = [
    (escalation(), []),
    (escalation(kind="frame", has_frame=True), [b"\xff\xd8jpeg"]),
    (Ack(case_id=CASE), []),
    (Ack(case_id=CASE, duplicate=True), []),
    (
        Review(
            case_id=CASE,
            answer="Answer: y\nSAFETY: yes\nCONFIDENCE: 0.9",
            safety=True,
            keywords=["fire"],
            reviewer="labels",
        ),
        [],
    ),
    (
        ReleasePush(
            version=1,
            files=[file_entry("manifest.json", b"{}"), file_entry("skill.json", b"abc")],
        ),
        [b"{}", b"abc"],
    ),
    (PushResult(version=3, accepted=False, reason="hash"), []),
    (Heartbeat(sender="edge-1", skill_version=2, outbox_depth=5), []),
    (ErrorReply(code="malformed", detail="bad"), []),
]


@pytest.mark.parametrize("msg,payloads", MESSAGES, ids=lambda m: getattr(m, "type", "payload"))
def test_round_trip(msg, payloads):
    frames = encode(msg, payloads)
    assert all(isinstance(f, bytes) for f in frames)
    back, got = decode(frames)
    assert back == msg
    assert got == payloads
    assert json.loads(frames[0])["schema_version"] == 1


@pytest.mark.parametrize(
    "frames,code",
    [
        ([], "malformed"),
        ([b"not json"], "malformed"),
        ([b"[1,2]"], "malformed"),
        ([json.dumps({"type": "teleport", "schema_version": 1}).encode()], "unknown_type"),
        ([b'{"type": [], "schema_version": 1}'], "unknown_type"),  # unhashable: no TypeError
        ([b'{"type": {"a": 1}}'], "unknown_type"),
        (
            [json.dumps({"type": "ack", "schema_version": 2, "case_id": CASE}).encode()],
            "bad_version",
        ),
        ([json.dumps({"type": "ack", "schema_version": 1, "case_id": "x"}).encode()], "malformed"),
        (
            [
                json.dumps(
                    {"type": "ack", "schema_version": 1, "case_id": CASE, "extra": 1}
                ).encode()
            ],
            "malformed",
        ),
        ([encode(Ack(case_id=CASE))[0], b"unexpected payload"], "malformed"),
    ],
)
def test_rejects_bad_messages(frames, code):
    with pytest.raises(MessageError) as info:
        decode(frames)
    assert error_code(info.value) == code


def test_oversized_message_is_rejected_before_parsing():
    frames = encode(escalation(kind="frame", has_frame=True), [b"x" * 2000])
    with pytest.raises(MessageError) as info:
        decode(frames, max_bytes=1024)
    assert error_code(info.value) == "too_large"
    assert "1024" in str(info.value)


def test_malformed_error_names_the_field():
    doc = json.loads(encode(escalation())[0])
    doc["confidence"] = 7
    with pytest.raises(MessageError) as info:
        decode([json.dumps(doc).encode()])
    assert "confidence" in str(info.value)


def test_encode_checks_payload_count():
    with pytest.raises(MessageError):
        encode(escalation(has_frame=True), [])


def test_verify_payloads_catches_tampering():
    push = ReleasePush(
        version=1, files=[file_entry("skill.json", b"good"), file_entry("manifest.json", b"m")]
    )
    assert verify_payloads(push, [b"good", b"m"]) is None
    assert "sha256" in verify_payloads(push, [b"evil", b"m"])
    assert "size" in verify_payloads(push, [b"longer", b"m"])


@pytest.mark.parametrize("kind", ["skill_push", "adapter_push"])
def test_the_retired_single_file_pushes_are_refused_naming_the_version_that_dropped_them(kind):
    doc = json.dumps({"type": kind, "schema_version": 1, "version": 3}).encode()
    with pytest.raises(MessageError, match=r"unknown_type: .*retired in gemma-edge 0\.2\.0"):
        decode([doc])
