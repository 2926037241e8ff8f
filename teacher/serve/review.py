"""Reviewers: who gives the teacher's verdict on an escalated case, and the review workers.

    Reviewer.review(cases) -> [Review | None, ...]     (one entry per case, same order)

``None`` means the reviewer cannot review that case; ``reviewer.reasons[case_id]``
says why and the store marks the case ``unreviewable`` with that reason. Reviewers:

- ``LabelsReviewer``: answers from labelled JSONL a person wrote (``input``,
  ``safety``, ``keywords``, optional ``answer``), matched on normalised input text.
  An input without a label is left unreviewed and said so, never guessed.
- ``BackendReviewer``: asks a model backend (Ollama or embedded, the same interface
  as the student) with the default skill's format, batched via ``generate_many``.
  An answer without a safety verdict is not turned into one.

``ReviewWorker`` threads claim stored unreviewed cases, review them in batches, store
the reviews and hand them to a ``deliver`` function (the server sends them to edges).
This module knows nothing about sockets.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shared.answer import parse_answer
from shared.backend import Backend, GenerateRequest, generate_many
from shared.backend_factory import make_backend
from shared.config import PolicyConfig
from shared.errors import BackendError, ConfigError
from shared.evaluation import LabeledCase, load_labeled
from shared.messages import Review
from shared.skill import Skill, default_skill
from shared.teacher_config import TeacherConfig
from teacher.data.store import CaseStore, StoredCase

logger = logging.getLogger(__name__)


class Reviewer(Protocol):
    name: str
    reasons: dict[str, str]

    def review(self, cases: list[StoredCase]) -> list[Review | None]: ...


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: how labels are matched."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def format_answer(sentence: str, safety: bool, confidence: float = 1.0) -> str:
    """A verdict in the student's three-line format."""
    sentence = " ".join(sentence.split()).removeprefix("Answer:").strip()
    return f"Answer: {sentence}\nSAFETY: {'yes' if safety else 'no'}\nCONFIDENCE: {confidence:.2f}"


def _sentence_from_keywords(keywords: tuple[str, ...], safety: bool) -> str:
    if not keywords:
        things = "nothing notable"
    elif len(keywords) == 1:
        things = keywords[0]
    else:
        things = ", ".join(keywords[:-1]) + " and " + keywords[-1]
    return f"The scene shows {things}" + (" and needs attention." if safety else ".")


class LabelsReviewer:
    """Verdicts from a labelled JSONL file; unlabelled inputs stay unreviewed."""

    def __init__(self, path: Path | str | None = None, cases: list[LabeledCase] | None = None):
        if cases is None:
            if path is None:
                raise ConfigError("reviewer", [("reviewer.labels", None, "no labels file given")])
            cases = load_labeled(path)
        self.source = str(path) if path else "labels"
        self.name = f"labels:{Path(self.source).name}"
        self.labels = {normalise(c.input): c for c in cases}
        self.reasons: dict[str, str] = {}

    def review(self, cases: list[StoredCase]) -> list[Review | None]:
        self.reasons = {}
        out: list[Review | None] = []
        for case in cases:
            label = self.labels.get(normalise(case.input))
            if label is None:
                self.reasons[case.case_id] = f"no label for this input in {self.source}"
                out.append(None)
                continue
            if label.answer and parse_answer(label.answer).format_ok:
                parsed = parse_answer(label.answer)
                answer = format_answer(parsed.text, label.safety, parsed.confidence or 1.0)
            elif label.answer:
                answer = format_answer(label.answer, label.safety)
            else:
                answer = format_answer(
                    _sentence_from_keywords(label.keywords, label.safety), label.safety
                )
            out.append(
                Review(
                    case_id=case.case_id,
                    answer=answer,
                    safety=label.safety,
                    keywords=list(label.keywords),
                    reviewer=self.name,
                )
            )
        return out


class BackendReviewer:
    """Verdicts from a model backend prompted with the default skill's format."""

    def __init__(
        self,
        backend: Backend,
        skill: Skill | None = None,
        max_new_tokens: int = 96,
        frames: Callable[[str], bytes | None] | None = None,
        keywords: list[str] | None = None,
    ):
        self.backend = backend
        self.skill = skill or default_skill()
        self.max_new_tokens = max_new_tokens
        self.frames = frames
        self.keywords = keywords if keywords is not None else PolicyConfig().safety_keywords
        self.name = f"backend:{getattr(backend, 'name', type(backend).__name__)}"
        self.reasons: dict[str, str] = {}
        self.retry: set[str] = set()  # cases whose request failed: back to the store

    def review(self, cases: list[StoredCase]) -> list[Review | None]:
        self.reasons, self.retry = {}, set()
        requests = [
            GenerateRequest(
                system=self.skill.instructions,
                input=case.input,
                demos=self.skill.demos,
                image=self.frames(case.case_id) if self.frames and case.has_frame else None,
                max_new_tokens=self.max_new_tokens,
            )
            for case in cases
        ]
        try:
            generations = generate_many(self.backend, requests)
        except BackendError as exc:
            partial = getattr(exc, "generations", None)  # shared.openai_backend.PartialBatch
            if partial is None or len(partial) != len(cases) or not any(partial):
                raise
            generations = partial
        out: list[Review | None] = []
        for case, gen in zip(cases, generations, strict=True):
            if gen is None:  # this request failed: the case goes back to the store
                self.retry.add(case.case_id)
                out.append(None)
                continue
            answer = parse_answer(
                gen.text if gen.text.lstrip().startswith("Answer") else "Answer:" + gen.text
            )
            if answer.safety is None or not answer.text:
                self.reasons[case.case_id] = f"teacher answer has no verdict: {gen.text[:200]!r}"
                out.append(None)
                continue
            words = set(re.findall(r"[a-z]+", answer.text.lower()))
            out.append(
                Review(
                    case_id=case.case_id,
                    answer=format_answer(answer.text, answer.safety, answer.confidence or 1.0),
                    safety=answer.safety,
                    keywords=[k for k in self.keywords if k in words],
                    reviewer=self.name,
                )
            )
        return out


def make_reviewer(config: TeacherConfig, store: CaseStore | None = None) -> Reviewer:
    """The reviewer ``config.reviewer`` names."""
    rc = config.reviewer
    if rc.backend == "labels":
        return LabelsReviewer(rc.labels)
    model = rc.model.model_copy(update={"backend": rc.backend})
    frames = store.frame if store is not None else None
    return BackendReviewer(make_backend(model), max_new_tokens=model.max_new_tokens, frames=frames)


class ReviewWorker:
    """A thread that reviews stored cases in batches and delivers the reviews."""

    def __init__(
        self,
        store: CaseStore,
        reviewer: Reviewer,
        deliver: Callable[[list[Review]], None],
        batch_size: int = 8,
        idle_s: float = 0.2,
        name: str = "review",
    ):
        self.store, self.reviewer, self.deliver = store, reviewer, deliver
        self.batch_size, self.idle_s = batch_size, idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.step():
                    self._stop.wait(self.idle_s)
            except Exception:
                logger.exception("review worker failed; going on")
                self._stop.wait(1.0)

    def step(self) -> int:
        """Review one batch; returns how many cases it took (0: nothing to do)."""
        cases = self.store.claim_unreviewed(self.batch_size)
        if not cases:
            return 0
        try:
            results = self.reviewer.review(cases)
        except BackendError as exc:
            logger.warning(
                "reviewer %s failed on %s case(s): %s", self.reviewer.name, len(cases), exc
            )
            for case in cases:
                self.store.release(case.case_id)
            self._stop.wait(2.0)
            return 0
        except BaseException:
            for case in cases:  # not left claimed until the next restart
                self.store.release(case.case_id)
            raise
        reviews = [r for r in results if r is not None]
        retry = getattr(self.reviewer, "retry", set())
        for case in cases:  # their request failed: they wait in the store for a later batch
            if case.case_id in retry:
                self.store.release(case.case_id)
        skipped = [
            (c.case_id, self.reviewer.reasons.get(c.case_id, "reviewer gave no answer"))
            for c, r in zip(cases, results, strict=True)
            if r is None and c.case_id not in retry
        ]
        self.store.add_reviews(reviews, skipped)
        for cid, reason in skipped:
            logger.info("case %s left unreviewed: %s", cid, reason)
        if reviews:
            self.deliver(reviews)
        return len(cases)


class Serialised:
    """One reviewer shared by several workers, one batch at a time."""

    def __init__(self, reviewer: Reviewer, lock: threading.Lock):
        self.inner, self.lock, self.name = reviewer, lock, reviewer.name
        self.reasons: dict[str, str] = {}
        self.retry: set[str] = set()

    def review(self, cases):
        with self.lock:
            out = self.inner.review(cases)
            self.reasons = dict(self.inner.reasons)
            self.retry = set(getattr(self.inner, "retry", ()))
        return out
