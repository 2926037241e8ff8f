"""Settled inputs travel: sampled and redacted on the edge, through the outbox and a real
CurveZMQ link, stored apart from the cases, and read by train as self-labelled traffic."""

from __future__ import annotations

import time

import zmq

from edge.settled import SettledSampler
from shared.messages import ErrorReply, Heartbeat, Settled, decode, encode
from shared.policy import Decision
from teacher.data.traffic import stored_traffic
from tests.teacher.test_server import edge_link, secure, wait_for  # noqa: F401 (fixture)


class R:  # the release's version is all a Settled message needs of it
    version = 3


def settled(i: int, alert: bool = False) -> Settled:
    return Settled(case_id=f"settled-{i:08d}", edge_id="e1", created_at=time.time(),
                   input=f"Lane {i} of the pool is calm.", alert=alert, p_unsafe=0.01)  # fmt: skip


def test_a_share_is_drawn_at_a_bounded_rate_redacted_and_never_an_escalation():
    sampler = SettledSampler(share=0.25, per_minute=1000)
    passed = Decision(False, (), p_unsafe=0.01)
    picks = [sampler.pick("e1", 0.0, i, f"scene {i}", "text", passed, R) for i in range(2000)]
    assert 0.2 < sum(p is not None for p in picks) / 2000 < 0.3
    assert (
        sampler.pick("e1", 0.0, 1, "x", "text", Decision(True, ("audit",), p_unsafe=0.01), R)
        is None
    )
    assert sampler.pick("e1", 0.0, 1, "x", "text", Decision(False, ()), R) is None  # no head
    everything = SettledSampler(share=1.0, per_minute=2)
    got = [everything.pick("e1", 100.0, i, "Call 555-123-4567 now.", "text", passed, R)
           for i in range(5)]  # fmt: skip
    assert sum(g is not None for g in got) == 2 and everything.capped == 3  # the rate bound
    assert got[0].input == "Call [PHONE] now." and got[0].release_version == 3
    later = everything.pick("e1", 160.0, 9, "A calm pool.", "text", Decision(False, (), alert=True,
                            p_unsafe=0.9), R)  # fmt: skip
    assert later is not None and later.alert  # the bucket refills over a minute


def test_settled_inputs_are_stored_apart_acked_and_become_train_traffic(secure, tmp_path):  # noqa: F811
    server, keys = secure
    link = edge_link(tmp_path, server, keys, "e1", keys / "edges" / "e1.key_secret")
    link.start()
    try:
        for i in range(5):
            assert link.settle(settled(i, alert=i == 0))
        wait_for(lambda: link.depth() == 0)
    finally:
        link.stop()
    assert server.store.count() == 0  # not a case: never reviewed
    rows = server.store.settled_rows()
    assert [r["case_id"] for r in rows] == [f"settled-{i:08d}" for i in range(5)]
    traffic = stored_traffic(server.config.home)
    assert len(traffic) == 5 and [c.safety for c in traffic] == [True] + [False] * 4
    assert {c.origin for c in traffic} == {"self"}
    assert len(stored_traffic(server.config.home, limit=2)) == 2


def test_an_edge_stops_sending_settled_inputs_to_a_teacher_that_does_not_know_them(tmp_path):
    from edge.link import LinkClient
    from shared.config import LinkConfig

    ctx = zmq.Context.instance()
    old = ctx.socket(zmq.ROUTER)  # answers as a teacher before 0.3.0 does
    old.linger = 0
    port = old.bind_to_random_port("tcp://127.0.0.1")
    config = LinkConfig(teacher=f"tcp://127.0.0.1:{port}", insecure=True, heartbeat_s=0.1,
                        timeout_s=5.0, outbox=tmp_path / "outbox.sqlite")  # fmt: skip
    link = LinkClient(config, "e1", tmp_path / "state")
    link.start()
    try:
        link.settle(settled(1))
        deadline = time.monotonic() + 10
        while link.takes_settled and time.monotonic() < deadline:
            if old.poll(100):
                identity, *frames = old.recv_multipart()
                if b'"type":"settled"' in frames[0]:  # an old teacher cannot decode it
                    detail = "unknown_type: 'settled' is not a message type (escalation, ...)"
                    reply = ErrorReply(code="unknown_type", detail=detail)
                else:
                    assert decode(frames)[0].type == "heartbeat"
                    reply = Heartbeat(sender="teacher")
                old.send_multipart([identity, *encode(reply)])
        assert not link.takes_settled and link.depth() == 0
        assert not link.settle(settled(2)) and link.depth() == 0
    finally:
        link.stop()
        old.close()
