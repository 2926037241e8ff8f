"""A person's decisions: delivered to the edge, logged with who and when, undoable; the
review queue puts what a verdict is worth most first. Real SQLite files."""

import uuid

import pytest

from shared.errors import StoreError
from shared.messages import Escalation, Review
from teacher.data.decisions import Band
from teacher.data.store import CaseStore


def add(store, text, p=None, safety=None, alert=False, audit_p=None, teacher=None):
    e = Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0, source="s",
                   input=text, p_unsafe=p, safety=safety, alert=alert, audit_p=audit_p)  # fmt: skip
    store.add_case(e)
    if teacher is not None:
        verdict = "yes" if teacher else "no"
        store.add_review(Review(case_id=e.case_id, answer=f"Answer: t\nSAFETY: {verdict}",
                                safety=teacher, keywords=[], reviewer="teacher"))  # fmt: skip
        store.mark_review_sent(e.case_id)
    return e.case_id


def test_a_decision_reaches_the_edge_and_undo_puts_the_teacher_back(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    cid = add(store, "smoke from a toaster", p=0.2, safety=False, teacher=False)
    assert store.unsent_reviews(["e1"]) == []
    decision = store.decide(cid, True, "ana", note="smoke is smoke")
    ((edge, review),) = store.unsent_corrections(["e1"])
    assert edge == "e1" and review.safety is True and review.reviewer == "person:ana"
    assert "SAFETY: yes" in review.answer  # no sentence typed: one that says a person decided
    store.mark_corrections_sent([cid])
    assert store.unsent_corrections(["e1"]) == []
    (logged,) = store.decisions(cid)
    assert logged["who"] == "ana" and logged["decided_at"] > 0 and logged["undone_at"] is None
    assert store.undo(decision, "bo") == cid
    assert store.labeled_cases()[0].origin == "teacher"
    ((_, again),) = store.unsent_reviews(["e1"])  # the teacher's verdict stands again
    assert again.safety is False
    with pytest.raises(StoreError, match="undone already"):
        store.undo(decision, "bo")
    assert store.decisions(cid)[0]["undone_by"] == "bo"


def test_only_the_latest_decision_on_a_case_can_be_undone(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    cid = add(store, "a pan on fire", teacher=True)
    first = store.decide(cid, False, "ana")
    second = store.decide(cid, True, "bo", answer="Answer: fire\nSAFETY: yes")
    with pytest.raises(StoreError, match=f"undo decision {second} first"):
        store.undo(first, "ana")
    store.undo(second, "ana")
    (label,) = store.labeled_cases()
    assert label.origin == "person" and label.safety is False  # ana's verdict is back


def test_bulk_confirm_never_buries_what_the_edge_flagged(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    agree = add(store, "an empty hall", p=0.1, teacher=False)
    flagged = add(store, "steam or smoke", p=0.8, alert=True, teacher=False)
    unreviewed = add(store, "a dark room", p=0.5)
    decided, skipped = store.confirm_teacher([agree, flagged, unreviewed, "nope"], "ana")
    assert len(decided) == 1 and set(skipped) == {flagged, unreviewed, "nope"}
    assert "flagged" in skipped[flagged]
    assert store.queue_counts()["decided"] == 1


def test_the_queue_puts_a_missed_hazard_first_then_unreviewed_then_band(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    settled = add(store, "agreed, far from the band", p=0.01, teacher=False)
    near = add(store, "agreed, inside the band", p=0.3, teacher=False)
    unreviewed = add(store, "no verdict yet", p=0.01)
    missed = add(store, "the student passed a hazard", p=0.1, teacher=True)
    flagged = add(store, "the student flagged a safe scene", p=0.9, teacher=False)
    bands = [Band(0, 0.2, 0.6)]
    order = [c["case_id"] for c in store.queue(bands)]
    assert order == [missed, flagged, unreviewed, near, settled]
    assert [c["case_id"] for c in store.queue(bands, state="disagreed")] == [missed, flagged]
    store.decide(missed, True, "ana")
    assert missed not in [c["case_id"] for c in store.queue(bands)]
    assert store.queue(bands, state="decided")[0]["person"]["who"] == "ana"
    counts = store.queue_counts()
    assert counts == {"all": 5, "todo": 4, "disagreed": 1, "unreviewed": 1, "audit": 0,
                      "decided": 1}  # fmt: skip
    with pytest.raises(StoreError, match="unknown queue state"):
        store.queue(bands, state="bogus")
