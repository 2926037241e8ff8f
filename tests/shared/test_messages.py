import json
import uuid

import pytest

from shared.errors import MessageError
from shared.messages import (
    Ack,
    AdapterPush,
    ErrorReply,
    Escalation,
    Heartbeat,
    PushResult,
    Review,
    SkillPush,
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
    (SkillPush(version=3, file=file_entry("skill.json", b"{}")), [b"{}"]),
    (
        AdapterPush(
            version=1,
            files=[
                file_entry("adapter_config.json", b"{}"),
                file_entry("adapter_model.safetensors", b"abc"),
            ],
        ),
        [b"{}", b"abc"],
    ),
    (PushResult(kind="skill", version=3, accepted=False, reason="hash"), []),
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
    push = SkillPush(version=1, file=file_entry("skill.json", b"good"))
    assert verify_payloads(push, [b"good"]) is None
    assert "sha256" in verify_payloads(push, [b"evil"])
    assert "size" in verify_payloads(push, [b"longer"])
