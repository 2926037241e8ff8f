"""Every message between an edge and the teacher box, as pydantic models.

On the wire a message is a multipart ZeroMQ message: frame 0 is the JSON document
(with ``type`` and ``schema_version``), any further frames are binary payloads (a
JPEG frame, the files of a release) whose count and sizes the document
declares. ``encode`` and ``decode`` are the only way in and out; nothing is pickled.

This module knows nothing about sockets: it turns models into frames and back and
rejects anything malformed, oversized or of an unknown type or version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.errors import MessageError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 8 * 2**20  # default cap on one whole multipart message
MAX_JSON_BYTES = 256 * 2**10  # the JSON document itself
MAX_JSON_DEPTH = 32  # nesting of arrays and objects in it (our documents need 4)
CaseId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
EdgeId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = SCHEMA_VERSION


class Escalation(Message):
    """An input the edge is unsure of, with the student's answer and why it escalated."""

    type: Literal["escalation"] = "escalation"
    case_id: CaseId
    edge_id: EdgeId
    created_at: float = Field(description="Unix time the edge saw the input.")
    source: str = Field(max_length=1024, description="Where the input came from.")
    kind: Literal["text", "frame"] = "text"
    input: str = Field(max_length=16_384, description="The text, or the frame's scene sketch.")
    answer: str = Field("", max_length=16_384, description="The student's raw answer.")
    safety: bool | None = Field(None, description="The student's safety verdict, if parsed.")
    confidence: float | None = Field(None, ge=0, le=1)
    reasons: list[str] = Field(default_factory=list, max_length=32)
    safety_keyword: bool = Field(False, description="A configured safety keyword matched.")
    skill_version: int = Field(0, ge=0)
    adapter_version: int = Field(0, ge=0)
    release_version: int = Field(0, ge=0, description="The release that answered.")
    p_unsafe: float | None = Field(None, ge=0, le=1, description="The safety head's p(unsafe).")
    alert: bool = Field(False, description="The student alerted locally too.")
    audit_p: float | None = Field(
        None, gt=0, le=1, description="An audit's inclusion probability (its weight is 1/p)."
    )
    has_frame: bool = Field(False, description="A JPEG frame travels as payload 0.")


class Settled(Message):
    """An input the edge settled by itself (alerted, or passed below the band): a sampled,
    redacted, rate-bounded stream the teacher keeps apart from reviews, for self-training."""

    type: Literal["settled"] = "settled"
    case_id: CaseId
    edge_id: EdgeId
    created_at: float = Field(description="Unix time the edge saw the input.")
    kind: Literal["text", "frame"] = "text"
    input: str = Field(max_length=16_384, description="The text, or the frame's sketch, redacted.")
    alert: bool = Field(description="The edge alerted (else it passed the input).")
    p_unsafe: float = Field(ge=0, le=1, description="The safety head's p(unsafe).")
    release_version: int = Field(0, ge=0, description="The release that answered.")


class Ack(Message):
    """The teacher has the case on disk (``duplicate``: it already had it)."""

    type: Literal["ack"] = "ack"
    case_id: CaseId
    duplicate: bool = False


class Review(Message):
    """The teacher's verdict on an escalated case."""

    type: Literal["review"] = "review"
    case_id: CaseId
    answer: str = Field(
        max_length=16_384, description="The teacher's answer in the student's format."
    )
    safety: bool
    keywords: list[str] = Field(default_factory=list, max_length=64)
    reviewer: str = Field(max_length=256, description="Which backend/model reviewed it.")
    reviewed_at: float = Field(default_factory=time.time)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    size: int = Field(ge=0)
    sha256: Sha256


class ReleasePush(Message):
    """A new release (``shared.release``); payload 0 is manifest.json, then its files."""

    type: Literal["release_push"] = "release_push"
    version: int = Field(ge=0)
    files: list[FileEntry] = Field(min_length=2, max_length=16)


class PushResult(Message):
    """The edge's answer to a push: installed, or refused and why."""

    type: Literal["push_result"] = "push_result"
    kind: Literal["release"] = "release"
    version: int = Field(ge=0)
    accepted: bool
    reason: str = Field("", max_length=2048)


class Heartbeat(Message):
    """Liveness both ways; the edge reports what it runs."""

    type: Literal["heartbeat"] = "heartbeat"
    sender: str = Field(max_length=64)
    sent_at: float = Field(default_factory=time.time)
    skill_version: int = Field(0, ge=0)
    adapter_version: int = Field(0, ge=0)
    release_version: int = Field(0, ge=0, description="The release the edge runs.")
    head_live: bool | None = Field(
        None,
        description="The release's safety head judges inputs (False: the edge runs the "
        "release without it, so its certified thresholds are not what decides); None: a "
        "teacher's own heartbeat, or an edge too old to say.",
    )
    boot: float = Field(0.0, ge=0, description="When the edge process started (Unix time).")
    inputs: dict[str, int] = Field(
        default_factory=dict, max_length=256, description="Inputs answered per release since boot."
    )
    outbox_depth: int = Field(0, ge=0)


class ErrorReply(Message):
    """The other side sent something it could not accept; nothing was changed."""

    type: Literal["error"] = "error"
    code: Literal["malformed", "too_large", "unknown_type", "bad_version", "rejected", "internal"]
    detail: str = Field(max_length=4096)
    case_id: str | None = Field(None, max_length=64)


AnyMessage = Annotated[
    Escalation | Settled | Ack | Review | ReleasePush | PushResult | Heartbeat | ErrorReply,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(AnyMessage)
TYPES = {
    "escalation": Escalation,
    "settled": Settled,
    "ack": Ack,
    "review": Review,
    "release_push": ReleasePush,
    "push_result": PushResult,
    "heartbeat": Heartbeat,
    "error": ErrorReply,
}


# Pushes of one skill or one adapter, retired in 0.2.0: only whole releases travel.
RETIRED = {
    "skill_push": "was retired in gemma-edge 0.2.0: only releases travel (release_push); "
    "update the teacher to gemma-edge 0.2.0 or later",
    "adapter_push": "was retired in gemma-edge 0.2.0: only releases travel (release_push); "
    "update the teacher to gemma-edge 0.2.0 or later",
}
# What a teacher tells an edge that does not know release pushes.
EDGE_TOO_OLD = (
    "this teacher pushes whole releases only (release_push); this edge does not take them: "
    "update it to gemma-edge 0.2.0 or later"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(name: str, data: bytes) -> FileEntry:
    return FileEntry(name=name, size=len(data), sha256=sha256(data))


def _expected_payloads(msg: Message) -> list[FileEntry] | int:
    if isinstance(msg, ReleasePush):
        return list(msg.files)
    if isinstance(msg, Escalation):
        return 1 if msg.has_frame else 0
    return 0


def encode(msg: Message, payloads: list[bytes] | tuple[bytes, ...] = ()) -> list[bytes]:
    """Frames for ``msg``: its JSON document, then its binary payloads."""
    expected = _expected_payloads(msg)
    count = expected if isinstance(expected, int) else len(expected)
    if len(payloads) != count:
        raise MessageError(f"{msg.type} declares {count} payload(s) but {len(payloads)} given")
    return [msg.model_dump_json().encode(), *payloads]


def decode(
    frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[AnyMessage, list[bytes]]:
    """Parse frames into (message, payloads); raise MessageError naming what is wrong.

    Payload hashes of pushes are checked by the receiver (``verify_payloads``), so that
    it can answer with a PushResult rather than an error.
    """
    if not frames:
        raise MessageError("malformed: empty message")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise MessageError(f"too_large: message is {total} bytes, the limit is {max_bytes}")
    head = frames[0]
    if len(head) > MAX_JSON_BYTES:
        raise MessageError(
            f"too_large: JSON document is {len(head)} bytes, the limit is {MAX_JSON_BYTES}"
        )
    doc = parse_document(head)
    kind = doc.get("type")
    name = kind if isinstance(kind, str) else ""  # a list or an object is no name
    if name in RETIRED:
        raise MessageError(f"unknown_type: {kind!r} {RETIRED[name]}")
    if name not in TYPES:
        raise MessageError(f"unknown_type: {kind!r} is not a message type ({', '.join(TYPES)})")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MessageError(
            f"bad_version: {kind} has schema_version {version!r}; this side speaks {SCHEMA_VERSION}"
        )
    try:
        msg = _ADAPTER.validate_python(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "<document>"
        raise MessageError(f"malformed: {kind}.{where}: {first['msg']}") from None
    payloads = list(frames[1:])
    expected = _expected_payloads(msg)
    count = expected if isinstance(expected, int) else len(expected)
    if len(payloads) != count:
        raise MessageError(f"malformed: {kind} declares {count} payload(s), got {len(payloads)}")
    return msg, payloads


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # unrolled: no per-char branch


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, counted without parsing it
    (brackets inside strings do not count), so a hostile document cannot recurse."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = str(data).encode("utf-8", "replace")
    bare = np.frombuffer(_STRING.sub(b"", bytes(data)), dtype=np.uint8)
    step = (bare == 91).view(np.int8) + (bare == 123).view(np.int8)  # [ {
    step = step.astype(np.int32) - (bare == 93) - (bare == 125)  # ] }
    return int(np.cumsum(step).max(initial=0))


def parse_document(head: bytes) -> dict:
    """Frame 0 as a JSON object, after the size and nesting limits; MessageError if not."""
    if len(head) > MAX_JSON_BYTES:
        raise MessageError(
            f"too_large: JSON document is {len(head)} bytes, the limit is {MAX_JSON_BYTES}"
        )
    depth = json_depth(head)
    if depth > MAX_JSON_DEPTH:
        raise MessageError(f"malformed: JSON nests {depth} deep, the limit is {MAX_JSON_DEPTH}")
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"malformed: frame 0 is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MessageError("malformed: frame 0 is not a JSON object")
    return doc


def peek(frames: list[bytes]) -> dict:
    """Frame 0 as a JSON object, or {} where it is none (never raises): to read the
    ``type`` or ``case_id`` of a message that did not decode."""
    try:
        return parse_document(bytes(frames[0]))
    except (MessageError, IndexError, TypeError):
        return {}


def peek_type(frames: list[bytes]) -> str | None:
    """The ``type`` a message that did not decode says it has, if any."""
    kind = peek(frames).get("type")
    return kind if isinstance(kind, str) else None


def peek_case_id(frames: list[bytes]) -> str | None:
    """The case id of an escalation that did not decode, if one can be read (so the edge
    can bury that case rather than resend it)."""
    doc = peek(frames)
    cid = doc.get("case_id") if doc.get("type") == "escalation" else None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None


def error_code(exc: MessageError) -> str:
    """The ErrorReply code for a decode failure (its message starts with the code)."""
    code = str(exc).split(":", 1)[0]
    return code if code in ("too_large", "unknown_type", "bad_version") else "malformed"


def verify_payloads(msg: ReleasePush, payloads: list[bytes]) -> str | None:
    """None if every payload matches its declared size and SHA-256, else the reason."""
    for entry, data in zip(msg.files, payloads, strict=True):
        if len(data) != entry.size:
            return f"{entry.name}: size {len(data)} != declared {entry.size}"
        digest = sha256(data)
        if digest != entry.sha256:
            return f"{entry.name}: sha256 {digest[:12]}… != declared {entry.sha256[:12]}…"
    return None
