"""The one evaluation harness: a release answers labelled cases exactly as an edge would.

    student = Student(backend, release, max_new_tokens)          # shared.student
    report = evaluate_release(student, cases, policy_config)      # HarnessReport

Each case goes through ``Student.answer`` (the backend class, the release's prompt
assembly, adapter, parse and safety head) and ``shared.policy.EscalationPolicy.decide``
with the release's calibration, on a clock that advances ``pace_s`` per case, the
same classes ``gemma-edge run`` uses. Upskill, train, the release gate and ``gemma-teacher
eval`` all score through here; nothing else generates answers to score.

It reports:

- student metrics: format, safety accuracy, recall and specificity of the student's own
  verdict (the head's p(unsafe) >= 0.5 where the release has a head, else the SAFETY
  line), the SAFETY line's accuracy, and the AUC of p(unsafe);
- system metrics: system safety recall (the student alerts locally, or the case is
  escalated to the teacher), teacher calls, false local alerts and missed hazards per
  100 inputs;
- latency p50/p95 of the student's answers.

It knows nothing about registries, training or sockets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from shared.answer import Answer
from shared.config import PolicyConfig
from shared.errors import TrainingError
from shared.evaluation import LabeledCase, evaluate
from shared.head import auc
from shared.policy import Decision, EscalationPolicy, text_scene_key
from shared.scoring import Outcome, score, student_verdict
from shared.student import Student


@dataclass(frozen=True)
class CaseResult:
    id: str
    label: bool
    answer: Answer
    decision: Decision
    tokens: int
    latency_s: float

    @property
    def verdict(self) -> bool | None:
        """The student's own safety verdict (``shared.scoring.student_verdict``)."""
        return student_verdict(self.answer.p_unsafe, self.answer.safety)

    @property
    def caught(self) -> bool:
        """The system caught it: the student alerted, or the teacher was called."""
        return self.decision.alert or self.decision.escalate

    def outcome(self, release: int) -> Outcome:
        """This case as ``shared.scoring`` scores every deployment and release."""
        return Outcome(
            self.label,
            self.decision.alert,
            self.decision.escalate,
            self.verdict,
            self.answer.format_ok,
            self.latency_s,
            release,
            self.id,
            self.decision.reasons if self.decision.escalate else (),
            self.decision.audit_p,
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "answer": self.answer.raw,
            "safety": self.answer.safety,
            "p_unsafe": self.answer.p_unsafe,
            "format_ok": self.answer.format_ok,
            "decision": self.decision.to_json(),
            "latency_s": round(self.latency_s, 4),
        }


@dataclass
class HarnessReport:
    release: int
    n: int
    # student
    format_ok: float
    accuracy: float
    recall: float
    specificity: float
    words_accuracy: float
    auc: float | None
    keyword_recall: float
    # system
    system_recall: float
    teacher_calls_per_100: float
    false_alerts_per_100: float
    missed_per_100: float
    alerts_per_100: float
    # speed
    latency_p50_s: float
    latency_p95_s: float
    hazards: int = 0  # unsafe cases among the n
    missed: list[str] = field(default_factory=list)  # ids of hazards the system let pass
    escalated: list[str] | None = None  # ids the system escalated (None: not recorded)
    reasons: dict = field(default_factory=dict)  # escalation reasons -> count
    cases: list[CaseResult] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        doc = asdict(self)
        doc.pop("cases")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in doc.items()}


def answer_cases(
    student: Student,
    cases: list[LabeledCase],
    policy_config: PolicyConfig,
    pace_s: float = 2.0,
    progress: bool = True,
    desc: str = "evaluating",
) -> list[CaseResult]:
    """Answer and decide every case in order, as ``gemma-edge run`` would on a text file."""
    policy = EscalationPolicy(policy_config)
    calibration = student.release.calibration
    out: list[CaseResult] = []
    for i, case in enumerate(
        tqdm(cases, desc=desc, unit="case", disable=not progress, leave=False)
    ):
        key = text_scene_key(case.input)
        t0 = time.perf_counter()
        answered = student.answer(
            case.input, None, policy.needs_sentence(case.input, key, i * pace_s, calibration)
        )
        latency = time.perf_counter() - t0
        decision = policy.decide(answered.answer, case.input, key, i * pace_s, calibration)
        out.append(
            CaseResult(
                case.id, case.safety, answered.answer, decision, answered.generation.tokens, latency
            )
        )
    return out


def report(release: int, cases: list[LabeledCase], results: list[CaseResult]) -> HarnessReport:
    """Student and system metrics of ``results`` against the cases' labels."""
    n = len(results)
    if n == 0:
        raise TrainingError("no labelled cases to evaluate the release on")
    words = evaluate(cases, [r.answer for r in results], [r.tokens for r in results])
    rates = score([r.outcome(release) for r in results])  # the one definition of each rate
    scores = [r.answer.p_unsafe for r in results]
    have_scores = all(s is not None for s in scores)
    reasons: dict[str, int] = {}
    for r in results:
        if r.decision.escalate:
            for reason in r.decision.reasons:
                reasons[reason] = reasons.get(reason, 0) + 1
    nothing_to_miss = 1.0  # no hazard (or no safe case) among the cases: none was missed
    return HarnessReport(
        release=release,
        n=n,
        format_ok=words.format_ok,
        accuracy=rates.student_accuracy,
        recall=_or(rates.student_recall, nothing_to_miss),
        specificity=_or(rates.student_specificity, nothing_to_miss),
        words_accuracy=words.safety_agreement,
        auc=auc(scores, [r.label for r in results]) if have_scores else None,
        keyword_recall=words.keyword_recall,
        system_recall=_or(rates.system_recall, nothing_to_miss),
        hazards=rates.hazards,
        teacher_calls_per_100=rates.teacher_calls_per_100,
        false_alerts_per_100=rates.false_alerts_per_100,
        missed_per_100=rates.missed_per_100,
        alerts_per_100=rates.alerts_per_100,
        latency_p50_s=rates.p50_s,
        latency_p95_s=rates.p95_s,
        missed=list(rates.missed),
        escalated=[r.id for r in results if r.decision.escalate],
        reasons=reasons,
        cases=results,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def evaluate_release(
    student: Student,
    cases: list[LabeledCase],
    policy_config: PolicyConfig,
    pace_s: float = 2.0,
    progress: bool = True,
    desc: str | None = None,
) -> HarnessReport:
    """The release ``student`` runs, scored on ``cases`` through the edge's code."""
    version = student.release.version
    results = answer_cases(
        student, cases, policy_config, pace_s, progress, desc or f"release v{version}"
    )
    return report(version, cases, results)


TABLE = (
    ("release", "release", "{}"),
    ("n", "n", "{}"),
    ("format_ok", "format", "{:.2f}"),
    ("accuracy", "accuracy", "{:.2f}"),
    ("recall", "recall", "{:.2f}"),
    ("specificity", "specif.", "{:.2f}"),
    ("auc", "AUC", "{:.3f}"),
    ("words_accuracy", "words acc", "{:.2f}"),
    ("system_recall", "sys recall", "{:.3f}"),
    ("teacher_calls_per_100", "calls/100", "{:.1f}"),
    ("false_alerts_per_100", "false al/100", "{:.1f}"),
    ("latency_p50_s", "p50 s", "{:.2f}"),
)


def table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table of (label, HarnessReport.summary()) rows."""
    head = ["", *[h for _, h, _ in TABLE]]
    lines = [head]
    for label, doc in rows:
        cells = [label]
        for key, _, fmt in TABLE:
            value = doc.get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    )
