"""Reviewers and review workers over a real SQLite store (ScriptedBackend for the model)."""

from __future__ import annotations

import time
import uuid

import pytest

from shared.errors import BackendUnavailable
from shared.evaluation import LabeledCase
from shared.messages import Escalation
from teacher.data.store import CaseStore
from teacher.serve.review import BackendReviewer, LabelsReviewer, ReviewWorker, normalise
from tests.fakes import ScriptedBackend


def stored(store: CaseStore, *texts: str, frame: bytes | None = None):
    cases = [
        Escalation(
            case_id=uuid.uuid4().hex,
            edge_id="e1",
            created_at=time.time(),
            source="t",
            input=t,
            has_frame=frame is not None,
        )
        for t in texts
    ]
    store.add_cases([(c, frame) for c in cases])
    return store.claim_unreviewed(100)


LABELS = [
    LabeledCase("a", "Smoke is rising from a pan.", True, ("smoke", "pan")),
    LabeledCase(
        "b",
        "A cat sleeps on a sofa.",
        False,
        ("cat",),
        "Answer: A cat is asleep on a sofa.\nSAFETY: no\nCONFIDENCE: 0.97",
    ),
    LabeledCase("c", "A man lies on the floor.", True, ("man",), "A man has collapsed."),
]


def test_labels_reviewer_matches_normalised_text_and_never_guesses(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    cases = stored(
        store,
        "  smoke IS rising from a pan ",
        "A cat sleeps on a sofa.",
        "A man lies on the floor",
        "A dog barks.",
    )
    reviewer = LabelsReviewer(cases=LABELS)
    smoke, cat, man, dog = reviewer.review(cases)
    assert normalise("  Smoke is rising, from a pan!") == "smoke is rising from a pan"
    assert smoke.safety is True and smoke.keywords == ["smoke", "pan"]
    assert smoke.answer == (
        "Answer: The scene shows smoke and pan and needs attention.\nSAFETY: yes\nCONFIDENCE: 1.00"
    )
    assert cat.answer == "Answer: A cat is asleep on a sofa.\nSAFETY: no\nCONFIDENCE: 0.97"
    assert man.answer == "Answer: A man has collapsed.\nSAFETY: yes\nCONFIDENCE: 1.00"
    assert dog is None
    assert "no label for this input" in reviewer.reasons[cases[3].case_id]


def test_labels_reviewer_reads_jsonl(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"input": "A cat sleeps on a sofa.", "safety": false, "keywords": ["cat"]}\n')
    store = CaseStore(tmp_path / "s.sqlite")
    [review] = LabelsReviewer(path).review(stored(store, "a cat sleeps on a sofa"))
    assert review.safety is False and review.reviewer == "labels:labels.jsonl"


class BatchingBackend(ScriptedBackend):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: list[int] = []

    def generate_batch(self, requests):
        self.batches.append(len(requests))
        return [self.generate(r) for r in requests]


def test_backend_reviewer_batches_prompts_with_the_skill_and_parses(tmp_path):
    def answer(request):
        if "fire" in request.input:
            return " A pan is on fire.\nSAFETY: yes\nCONFIDENCE: 0.8"
        if "cat" in request.input:
            return " A cat.\nCONFIDENCE: 0.9"  # no verdict
        return "Answer: A quiet room.\nSAFETY: no\nCONFIDENCE: 0.9"

    backend = BatchingBackend(answer)
    store = CaseStore(tmp_path / "s.sqlite")
    cases = stored(store, "fire in a pan", "a cat", "a room", frame=b"jpeg")
    reviewer = BackendReviewer(backend, frames=store.frame)
    fire, cat, room = reviewer.review(cases)
    assert backend.batches == [3]
    request = backend.requests[0]
    assert "describe each scene" in request.system and request.demos and request.image == b"jpeg"
    assert fire.safety is True and fire.keywords == ["fire"]
    assert fire.answer == "Answer: A pan is on fire.\nSAFETY: yes\nCONFIDENCE: 0.80"
    assert cat is None and "no verdict" in reviewer.reasons[cases[1].case_id]
    assert room.safety is False and fire.reviewer == "backend:scripted"


def test_worker_stores_reviews_marks_unreviewable_and_delivers(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    stored(store)  # nothing
    texts = ["Smoke is rising from a pan.", "A dog barks.", "A cat sleeps on a sofa."]
    cases = [
        Escalation(case_id=f"case-{i:04d}", edge_id="e1", created_at=1.0, source="t", input=t)
        for i, t in enumerate(texts)
    ]
    store.add_cases([(c, None) for c in cases])
    delivered = []
    worker = ReviewWorker(store, LabelsReviewer(cases=LABELS), delivered.extend, batch_size=2)
    assert worker.step() == 2 and worker.step() == 1 and worker.step() == 0
    assert [r.case_id for r in delivered] == ["case-0000", "case-0002"]
    assert store.count("reviewed") == 2 and store.count("unreviewable") == 1
    dog = store.get("case-0001")
    assert dog["status"] == "unreviewable" and "no label" in dog["status_detail"]
    unsent = store.unsent_reviews(["e1"])
    assert [r.case_id for _, r in unsent] == ["case-0000", "case-0002"]
    store.mark_reviews_sent(["case-0000"])
    assert [r.case_id for _, r in store.unsent_reviews(["e1"])] == ["case-0002"]


def test_worker_gives_cases_back_when_the_backend_is_down(tmp_path):
    store = CaseStore(tmp_path / "s.sqlite")
    store.add_cases(
        [(Escalation(case_id="case-0001", edge_id="e1", created_at=1, source="t", input="x"), None)]
    )
    backend = ScriptedBackend(fail_on="x", error=BackendUnavailable("ollama is down"))
    worker = ReviewWorker(store, BackendReviewer(backend), lambda r: None)
    worker._stop.set()  # no back-off sleep in the test
    assert worker.step() == 0
    assert store.count("new") == 1


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_teacher_reviews_with_the_real_gemma(tmp_path):
    """The bundled 270M base model as teacher: a verdict where it follows the format,
    an honest 'unreviewable' where it does not; never a made-up verdict."""
    import torch

    from shared.embedded import EmbeddedBackend
    from shared.models import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model(dtype="float32", device="cpu")
    backend = EmbeddedBackend(model=model, tokenizer=tokenizer)
    store = CaseStore(tmp_path / "s.sqlite")
    cases = stored(store, "Flames are coming out of a kitchen pan.", "A laptop is on a desk.")
    reviewer = BackendReviewer(backend, max_new_tokens=32)
    results = reviewer.review(cases)
    assert len(results) == 2
    for case, result in zip(cases, results, strict=True):
        if result is None:
            assert reviewer.reasons[case.case_id].startswith("teacher answer has no verdict")
        else:
            assert result.answer.startswith("Answer: ") and "\nSAFETY: " in result.answer
            assert result.reviewer.startswith("backend:embedded")
    assert any(r is not None for r in results)
