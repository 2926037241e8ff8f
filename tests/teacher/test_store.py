import uuid

import pytest

from shared.errors import StoreError
from shared.messages import Escalation, Review
from teacher.data.store import CaseStore


def esc(text="a scene", **kw):
    return Escalation(
        case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0, source="s", input=text, **kw
    )


def test_duplicates_are_stored_once_and_survive_reopen(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    a, b = esc(), esc()
    assert store.add_cases([(a, None), (b, b"jpeg")]) == [True, True]
    assert store.add_case(a) is False
    store.close()
    again = CaseStore(tmp_path / "s.sqlite")
    assert again.count() == 2
    assert again.frame(b.case_id) == b"jpeg"


def test_claim_review_and_crash_recovery(tmp_path):
    path = tmp_path / "s.sqlite"
    store = CaseStore(path)
    cases = [esc(f"scene {i}") for i in range(3)]
    store.add_cases([(c, None) for c in cases])
    claimed = store.claim_unreviewed(2)
    assert [c.case_id for c in claimed] == [c.case_id for c in cases[:2]]
    store.add_review(
        Review(
            case_id=claimed[0].case_id,
            answer="Answer: x\nSAFETY: yes\nCONFIDENCE: 0.9",
            safety=True,
            keywords=["x"],
            reviewer="t",
        )
    )
    store.close()
    reopened = CaseStore(path)  # the second claim was never finished: back to new
    assert reopened.count("reviewed") == 1
    assert reopened.count("new") == 2


def test_person_correction_outranks_teacher(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    c = esc("smoke from a toaster")
    store.add_case(c)
    store.add_review(
        Review(
            case_id=c.case_id,
            answer="Answer: toast\nSAFETY: no\nCONFIDENCE: 0.9",
            safety=False,
            keywords=["toaster"],
            reviewer="t",
        )
    )
    assert store.labeled_cases()[0].safety is False
    store.correct(c.case_id, True, note="smoke is smoke")
    (label,) = store.labeled_cases()
    assert label.safety is True and label.origin == "person"
    assert label.answer is None  # the teacher's answer contradicts the person: not used
    assert label.keywords == ("toaster",)
    with pytest.raises(StoreError):
        store.correct("nope-nope-nope", True)


def test_report_rows_per_release_and_edge_from_counts_audits_and_reviews(tmp_path):
    import uuid

    from shared.messages import Escalation, Review
    from teacher.serve.report import rows_for

    store = CaseStore(tmp_path / "store.sqlite")

    def case(release, reasons, alert=False, p=0.1, edge="e1", audit_p=None):
        esc = Escalation(case_id=uuid.uuid4().hex, edge_id=edge, created_at=1.0, source="s",
                         input="x", answer="Answer: x.\nSAFETY: no\nCONFIDENCE: 0.9",
                         reasons=reasons, release_version=release, p_unsafe=p, alert=alert,
                         audit_p=audit_p)  # fmt: skip
        store.add_case(esc)
        return esc.case_id

    def review(case_id, unsafe):
        store.add_review(Review(case_id=case_id, answer="Answer: x.", safety=unsafe, reviewer="t"))

    review(case(0, ["uncertain_safety"]), True)
    # a hazard the release let pass: only the audit saw it, and it stands for 1/0.04 = 25
    review(case(0, ["audit"], p=0.01, audit_p=0.04), True)
    review(case(0, ["audit"], p=0.02, audit_p=0.05), False)
    review(case(1, ["audit", "uncertain_safety"], p=0.4), True)  # caught (not only audited)
    review(case(1, ["audit"], alert=True, p=0.9), True)  # caught: the student alerted
    store.record_counts("e1", 100.0, {"0": 50, "1": 40})
    store.record_counts("e1", 100.0, {"0": 40})  # an older heartbeat: counts only grow
    store.record_counts("e1", 200.0, {"1": 10})  # the edge restarted
    rows = {r.label: r for r in rows_for(store.report_rows(), store.input_counts())}
    assert set(rows) == {"v0 (all edges)", "v0 e1", "v1 (all edges)", "v1 e1"}
    v0, v1 = rows["v0 (all edges)"], rows["v1 (all edges)"]
    assert (v0.inputs, v1.inputs) == (50, 50)
    assert v0.teacher_calls_per_100 == 6.0 and v1.teacher_calls_per_100 == 4.0
    assert v0.system_recall == 1 / 26 and v0.hazards == 1 and v0.missed == 1
    assert v0.calls_by_reason == {"band": 2.0, "keyword": 0.0, "format": 0.0, "audit": 4.0,
                                  "other": 0.0}  # fmt: skip
    assert v0.audit_low < v0.system_recall < v0.audit_high
    assert v1.system_recall is None and v1.labelled == 0  # no audit of a passed input
    store.close()
