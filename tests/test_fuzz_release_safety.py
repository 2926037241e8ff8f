"""Property-based fuzzing of what reaches an edge: release manifests, heads, wire messages.

The properties, whatever hypothesis generates:
- a pushed release is either refused (``PushRejected``, the old release still active and
  nothing of the new one on disk) or it passes every check the edge makes: finite head
  tensors with std > 0 that fit the model, thresholds in [0, 1] with lower <= upper;
- a release the edge accepted answers every input with an event, and never with a
  p_unsafe that is not a probability;
- ``decode`` raises only ``MessageError`` (or returns a message), and ``peek`` never raises.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge import updates
from edge.daemon import EdgeDaemon
from edge.events import EventLog
from edge.sources import open_source
from shared.config import EdgeConfig
from shared.errors import MessageError, PushRejected
from shared.head import HEAD_FILE
from shared.messages import MAX_JSON_DEPTH, decode, peek
from shared.release import MANIFEST, build_files
from shared.skill import default_skill
from shared.student import head_problem
from tests.fakes import FeatureBackend
from tests.test_release_safety import calibration, good_head, push_of, raw_head_bytes, with_files

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1e-30, 1e30, float("nan"), float("inf")]),
)


def vectors(dim):
    return st.lists(floats, min_size=dim, max_size=dim)


@st.composite
def heads(draw):
    dim = draw(st.sampled_from([0, 4, 8, 12]))
    layers = draw(st.lists(st.integers(-3, 5), min_size=0, max_size=3))
    wdim = draw(st.sampled_from([dim, dim, max(dim - 1, 0)]))
    return raw_head_bytes(
        mean=draw(vectors(dim)),
        std=draw(vectors(dim)),
        weight=draw(vectors(wdim)),
        bias=[draw(floats)],
        layers=layers,
    )


calibration_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2))


@st.composite
def manifests(draw, files):
    doc = json.loads(files[MANIFEST])
    cal = doc["calibration"]
    for key in draw(st.sets(st.sampled_from(["lower", "upper", "delta", "recall_target"]))):
        cal[key] = draw(calibration_values)
    if draw(st.booleans()):
        doc["canary_tolerance"] = draw(calibration_values)
    if draw(st.booleans()):
        doc["canaries"] = [
            {
                "input": draw(st.text(min_size=0, max_size=30)),
                "unsafe": draw(st.booleans()),
                "p_unsafe": draw(st.one_of(st.none(), calibration_values)),
                "decision": draw(st.sampled_from(["alert", "escalate", "pass", "??"])),
            }
            for _ in range(draw(st.integers(0, 3)))
        ]
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["version", "format", "parent"]))] = draw(
            st.one_of(st.integers(-2, 3), st.text(max_size=3), st.none())
        )
    return json.dumps(doc).encode()


def _check_running(release, backend) -> None:
    head, cal = release.head, release.calibration
    if head is not None:
        for tensor in (head.mean, head.std, head.weight):
            assert np.isfinite(tensor).all()
        assert math.isfinite(head.bias) and (np.abs(head.std) > 0).all()
        assert head_problem(backend, head) is None
    if cal is not None:
        assert 0 <= cal.lower <= cal.upper <= 1


@SETTINGS
@given(data=st.data())
def test_no_pushed_release_is_activated_unless_the_edge_can_run_it(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    backend = FeatureBackend()
    texts = tmp / "in.txt"
    texts.write_text("DANGER one\ncalm two\nDANGER fire three\n")
    daemon = EdgeDaemon(EdgeConfig(state_dir=tmp / "state"), backend, open_source(str(texts)),
                        EventLog(tmp / "events.jsonl"))  # fmt: skip
    state = tmp / "state"
    good = build_files(1, default_skill(), good_head(), calibration())
    assert updates.install_release(state, *push_of(good, 1), daemon.prepare_release)
    files = build_files(2, default_skill(), good_head(), calibration())
    if data.draw(st.booleans(), label="fuzz the head"):
        files = with_files(files, **{HEAD_FILE: data.draw(heads(), label="head")})
    if data.draw(st.booleans(), label="fuzz the manifest"):
        files[MANIFEST] = data.draw(manifests(files), label="manifest")
    try:
        release = updates.install_release(state, *push_of(files, 2), daemon.prepare_release)
    except PushRejected as exc:
        event(f"refused: {str(exc)[12:60]}")
        assert updates.active_release(state).version == 1
        assert not (state / "releases" / "v2").exists()
        return
    event("accepted")
    _check_running(release, backend)
    daemon.on_release(release)
    daemon.run(progress=False)
    events = [json.loads(line) for line in (tmp / "events.jsonl").read_text().splitlines()]
    answered = [e for e in events if e["type"] in ("answer", "error")]
    assert len(answered) == 3  # no input dropped
    for e in answered:
        p = e.get("p_unsafe")
        assert p is None or 0 <= p <= 1
        assert e["type"] == "answer" or e["decision"]["escalate"]


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_values = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),  # fmt: skip
    max_leaves=40,
)
types = st.sampled_from(
    ["escalation", "heartbeat", "review", "ack", "error", "release_push", "skill_push", "x"]
)


@st.composite
def documents(draw):
    doc = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
    if draw(st.booleans()):
        doc["type"] = draw(types)
    if draw(st.booleans()):
        doc["schema_version"] = draw(st.sampled_from([1, 1, 2, "1", None]))
    return json.dumps(doc).encode()


def deep(n: int) -> bytes:
    return b'{"type": "heartbeat", "a": ' + b"[" * n + b"]" * n + b"}"


frames = st.one_of(
    documents(),
    st.binary(max_size=200),
    st.integers(MAX_JSON_DEPTH - 2, 5000).map(deep),
    st.text(max_size=60).map(str.encode),
)


@settings(max_examples=300, deadline=None)
@given(head=frames, rest=st.lists(st.binary(max_size=64), max_size=3))
def test_decode_only_ever_raises_message_error_and_peek_never_raises(head, rest):
    msg = None
    try:
        msg, payloads = decode([head, *rest])
    except MessageError as exc:
        assert str(exc).split(":", 1)[0] in (
            "malformed", "too_large", "unknown_type", "bad_version"
        )  # fmt: skip
    else:
        assert msg.type in {"escalation", "heartbeat", "review", "ack", "error", "release_push",
                            "skill_push", "adapter_push", "push_result"}  # fmt: skip
    assert isinstance(peek([head, *rest]), dict)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 1, 100_000])
def test_nesting_at_and_over_the_limit(depth):
    with pytest.raises(MessageError) as refused:
        decode([deep(depth)])  # a heartbeat has no field "a": refused either way
    over = depth + 1 > MAX_JSON_DEPTH
    assert ("nests" in str(refused.value)) is over, str(refused.value)
