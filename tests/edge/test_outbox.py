import time

from edge.outbox import Outbox
from shared.messages import Escalation


def esc(i: int, safety_keyword: bool = False, **kw) -> Escalation:
    return Escalation(
        case_id=f"case-{i:06d}",
        edge_id="e1",
        created_at=time.time(),
        source="test",
        input=f"scene {i}",
        safety_keyword=safety_keyword,
        **kw,
    )


def test_put_survives_reopen_and_remove_forgets(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.put(esc(1)) is True
    assert box.put(esc(2), b"jpeg") is True
    assert box.put(esc(1)) is False  # same case id: queued once
    box.close()  # no explicit flush: put already committed
    box = Outbox(tmp_path / "o.sqlite")
    assert box.depth() == 2
    items = box.after(0, 10)
    assert [p.case_id for p in items] == ["case-000001", "case-000002"]
    assert items[1].frame == b"jpeg"
    assert Escalation.model_validate_json(items[0].doc) == esc(1).model_copy(
        update={"created_at": Escalation.model_validate_json(items[0].doc).created_at}
    )
    assert box.after(items[0].seq, 10)[0].case_id == "case-000002"
    assert box.remove(["case-000001", "not-there-0"]) == 1
    assert box.depth() == 1
    box.close()
    assert Outbox(tmp_path / "o.sqlite").depth() == 1


def test_full_outbox_drops_oldest_non_safety_first_and_counts(tmp_path, caplog):
    box = Outbox(tmp_path / "o.sqlite", max_cases=10)
    box.put(esc(0, safety_keyword=True))
    box.put(esc(1, safety=True))
    for i in range(2, 10):
        box.put(esc(i))
    assert box.depth() == 10
    box.put(esc(10))
    box.put(esc(11, safety_keyword=True))
    ids = [p.case_id for p in box.after(0, 100)]
    assert box.depth() == len(ids) == 10
    assert "case-000000" in ids and "case-000001" in ids  # safety cases kept
    assert "case-000002" not in ids and "case-000003" not in ids  # oldest non-safety went
    assert box.dropped == 2
    assert "dropped the oldest non-safety case case-000002" in caplog.text


def test_only_safety_cases_left_drops_the_oldest_safety_case(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_cases=10)
    for i in range(11):
        box.put(esc(i, safety_keyword=True))
    ids = [p.case_id for p in box.after(0, 100)]
    assert ids[0] == "case-000001" and len(ids) == 10
    assert box.dropped == 1


def test_bury_moves_a_refused_case_out_of_the_queue(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.put(esc(1))
    box.put(esc(2))
    assert box.bury("case-000001", "malformed: input too long") is True
    assert box.depth() == 1
    assert box.dead() == [("case-000001", "malformed: input too long")]
    assert box.bury("case-000001", "again") is False


def test_put_many_is_one_transaction_and_respects_the_bound(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", max_cases=50)
    assert box.put_many([(esc(i), None) for i in range(60)]) == 60
    assert box.depth() == 50 and box.dropped == 10
    assert box.after(0, 1)[0].case_id == "case-000010"
    assert box.put_many([(esc(59), None)]) == 0
