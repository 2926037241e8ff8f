"""Scoring a skill: run the student with it over labelled cases and evaluate the answers.

``score_skill`` answers every case through ``shared.student.Student`` running the skill
as a bare release (no head yet: it is fit on the winner's prompt in the release build),
so the prompt is assembled and the answer parsed exactly as an edge does; the lot is
evaluated (``shared.evaluation.evaluate``: format, safety agreement and recall,
keywords, brevity). A backend failure is a ``TrainingError`` naming the skill. It knows
nothing about candidates, splits or registries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm import tqdm

from shared.answer import Answer
from shared.backend import Backend
from shared.errors import BackendError, TrainingError
from shared.evaluation import EvalReport, LabeledCase, evaluate
from shared.release import skill_release
from shared.skill import Skill
from shared.student import Student
from teacher.improve.candidates import Candidate


@dataclass
class Scored:
    candidate: Candidate
    report: EvalReport
    seconds: float
    answers: list[Answer] = field(default_factory=list, repr=False)
    full: bool = True  # False: raced out after half the selection split

    def row(self) -> dict:
        m = self.report.summary()
        return {
            "name": self.candidate.name,
            "origin": self.candidate.origin,
            "round": self.candidate.round,
            "demos": len(self.candidate.skill.demos),
            **{k: m[k] for k in METRICS},
            "balanced": balanced(m),
            "n": self.report.n,
            "s_per_case": round(self.seconds / max(1, self.report.n), 2),
            "note": self.candidate.note,
            "verdicts": "".join(VERDICT_CHAR[a.safety] for a in self.answers),
        }


VERDICT_CHAR = {True: "y", False: "n", None: "?"}


def balanced(summary: dict) -> float:
    """Balanced safety agreement: the mean of recall and specificity."""
    return round((summary["safety_recall"] + summary["safe_specificity"]) / 2, 4)


def tradeoff(win: dict, base: dict) -> str:
    """What moved between two evaluation summaries, in words a person checks first."""
    bw, bb = balanced(win), balanced(base)
    text = (
        f"safety recall {base['safety_recall']:.2f}->{win['safety_recall']:.2f}, specificity "
        f"{base['safe_specificity']:.2f}->{win['safe_specificity']:.2f}, balanced agreement "
        f"{bb:.2f}->{bw:.2f}, format {base['format_ok']:.2f}->{win['format_ok']:.2f}, "
        f"keywords {base['keyword_recall']:.2f}->{win['keyword_recall']:.2f}"
    )
    if win["safety_recall"] > base["safety_recall"] and bw <= bb + 0.05:
        text += (
            "; the gain comes from flagging more scenes (recall bought with false alarms), "
            "not from better judgement"
        )
    return text


METRICS = (
    "score",
    "format_ok",
    "safety_agreement",
    "safety_recall",
    "safe_specificity",
    "keyword_recall",
    "mean_tokens",
)


@dataclass
class Run:
    """The student's parsed answers to some cases under one skill."""

    answers: list[Answer] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def __add__(self, other: Run) -> Run:
        return Run(
            self.answers + other.answers, self.tokens + other.tokens, self.seconds + other.seconds
        )


def run_student(
    student: Backend,
    skill: Skill,
    cases: list[LabeledCase],
    max_new_tokens: int,
    bar: tqdm | None = None,
) -> Run:
    """Run the student with ``skill`` on every case, as an edge would, and parse its answers."""
    runner = Student(student, skill_release(skill), max_new_tokens)
    run = Run()
    start = time.perf_counter()
    for case in cases:
        try:
            answered = runner.answer(case.input)
        except BackendError as exc:
            raise TrainingError(f"the student failed while scoring {skill.name!r}: {exc}") from exc
        run.answers.append(answered.answer)
        run.tokens.append(answered.generation.tokens)
        if bar is not None:
            bar.update(1)
    run.seconds = time.perf_counter() - start
    return run


def score_skill(
    student: Backend,
    skill: Skill,
    cases: list[LabeledCase],
    max_new_tokens: int,
    bar: tqdm | None = None,
) -> tuple[EvalReport, Run]:
    """The student's answers with ``skill`` on ``cases``, evaluated."""
    run = run_student(student, skill, cases, max_new_tokens, bar)
    return evaluate(cases, run.answers, run.tokens, max_tokens=max_new_tokens), run


def progress_bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="case", disable=not progress, leave=False)
