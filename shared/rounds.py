"""Round-by-round numbers of a deployment: the table and the plot a person looks at.

    row = round_row("round 1", outcomes)      # one Outcome per input the edge answered
    print(table([row, ...])); plot([row, ...], "report.png")

An ``Outcome`` (``shared.scoring``) is what happened to one input, seen from the whole
system; every number in a row is ``shared.scoring.score``'s. The same columns serve
``gemma-edge demo`` (every input labelled) and ``gemma-teacher report`` (truth from
reviews, a person's correction first).

It knows nothing about events, stores or models: callers turn those into Outcomes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from shared.scoring import Outcome, audit_estimate, missed_hazards, score

# What a teacher call was for, first match wins: the head's band, a safety keyword, a
# broken format, an audit, anything else (no head: low confidence; a judge error).
CALL_REASONS = (
    ("band", "uncertain_safety"),
    ("keyword", "safety_keyword"),
    ("format", "format_error"),
    ("audit", "audit"),
)


def calls_by_reason(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Teacher calls per 100 inputs, split by what each call was for (``CALL_REASONS``)."""
    counts: Counter = Counter()
    for o in outcomes:
        if o.escalated:
            names = [name for name, reason in CALL_REASONS if reason in o.reasons]
            counts[names[0] if names else "other"] += 1
    n = len(outcomes)
    names = [name for name, _ in CALL_REASONS] + ["other"]
    return {k: round(100 * counts[k] / n, 2) if n else 0.0 for k in names}


@dataclass(frozen=True)
class RoundRow:
    label: str
    inputs: int
    labelled: int  # inputs whose truth is known
    teacher_calls_per_100: float | None  # None: the inputs are not known
    system_recall: float | None  # of the known hazards, share alerted or escalated
    student_accuracy: float | None
    format_ok: float
    false_alerts_per_100: float | None
    p50_s: float | None  # None: not seen from here (the teacher's report)
    p95_s: float | None
    release: int
    hazards: int
    missed: int
    # the same inputs answered by the release the edge started with (no loop); None: not
    # measured here. The loop's effect is teacher_calls_per_100 / start_calls_per_100.
    start_calls_per_100: float | None = None
    start_recall: float | None = None
    calls_by_reason: dict = field(default_factory=dict)  # per 100 inputs: band, keyword, ...
    # system recall estimated from the audits alone (shared.scoring.audit_estimate)
    audit_recall: float | None = None
    audit_low: float | None = None
    audit_high: float | None = None
    missed_ids: tuple[str, ...] = ()  # the hazards the system let pass (the demo: their text)
    missed_why: tuple[str, ...] = ()  # for each, what the edge saw when it let it pass

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def round_row(
    label: str, outcomes: Sequence[Outcome], start: Sequence[Outcome] | None = None
) -> RoundRow:
    """One row of the table: ``shared.scoring.score`` of the round's outcomes, and of the
    same inputs' outcomes under the starting release when ``start`` is given."""
    r = score(outcomes)
    s = score(start) if start else None
    est = audit_estimate(outcomes)
    return RoundRow(
        label=label,
        inputs=r.inputs,
        labelled=r.labelled,
        teacher_calls_per_100=r.teacher_calls_per_100,
        system_recall=r.system_recall,
        student_accuracy=r.student_accuracy,
        format_ok=r.format_ok,
        false_alerts_per_100=r.false_alerts_per_100,
        p50_s=r.p50_s,
        p95_s=r.p95_s,
        release=r.release,
        hazards=r.hazards,
        missed=len(r.missed),
        start_calls_per_100=s.teacher_calls_per_100 if s else None,
        start_recall=s.system_recall if s else None,
        calls_by_reason=calls_by_reason(outcomes),
        audit_recall=est.recall,
        audit_low=est.low,
        audit_high=est.high,
        missed_ids=r.missed,
        missed_why=tuple(o.passed_why for o in missed_hazards(outcomes)),  # as missed_ids
    )


COLUMNS = (
    ("label", "", "{}"),
    ("inputs", "inputs", "{}"),
    ("teacher_calls_per_100", "teacher calls/100", "{:.1f}"),
    ("start_calls_per_100", "(start release)", "{:.1f}"),
    ("system_recall", "system recall", "{:.3f}"),
    ("start_recall", "(start release)", "{:.3f}"),
    ("student_accuracy", "student acc", "{:.2f}"),
    ("format_ok", "format", "{:.2f}"),
    ("false_alerts_per_100", "false alerts/100", "{:.1f}"),
    ("p50_s", "p50 s", "{:.2f}"),
    ("p95_s", "p95 s", "{:.2f}"),
    ("release", "release", "v{}"),
)


def _reasons(row: RoundRow) -> str:
    c = row.calls_by_reason
    return " ".join(f"{k[0]}{v:.0f}" for k, v in c.items() if v) or "-" if c else "-"


def _audit(row: RoundRow) -> str:
    if row.audit_recall is None:
        return "-"
    return f"{row.audit_recall:.2f} [{row.audit_low:.2f}-{row.audit_high:.2f}]"


EXTRA = (("calls by reason", _reasons), ("audit est. recall", _audit))


def table(rows: Sequence[RoundRow]) -> str:
    """The rows as text; "calls by reason" reads b(and) k(eyword) f(ormat) a(udit) o(ther)
    per 100 inputs, "audit est. recall" is the audits' estimate [its 95% interval]."""
    lines = [[title for _, title, _ in COLUMNS] + [title for title, _ in EXTRA]]
    for row in rows:
        doc = asdict(row)
        cells = ["-" if doc[k] is None else fmt.format(doc[k]) for k, _, fmt in COLUMNS]
        lines.append(cells + [show(row) for _, show in EXTRA])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


def plot(rows: Sequence[RoundRow], path, title: str = "") -> None:
    """Teacher calls per 100 inputs (bars) and system safety recall (line) per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.label}\n(v{r.release})" for r in rows]
    fig, left = plt.subplots(figsize=(max(8, 1.6 * len(rows) + 3), 4.5))
    calls = [r.teacher_calls_per_100 or 0.0 for r in rows]
    start = [r.start_calls_per_100 for r in rows]
    x = list(range(len(rows)))
    width = 0.4 if any(v is not None for v in start) else 0.8
    bars = left.bar(
        [i - (width / 2 if width < 0.8 else 0) for i in x],
        calls,
        width,
        color="#4a90d9",
        label="teacher calls per 100 inputs",
    )
    left.bar_label(bars, fmt="%.0f")
    if width < 0.8:
        ghost = left.bar(
            [i + width / 2 for i in x],
            [v or 0.0 for v in start],
            width,
            color="#bbbbbb",
            label="the same inputs on the starting release",
        )
        left.bar_label(ghost, fmt="%.0f", color="#777777")
    left.set_xticks(x, labels)
    left.set_ylabel("teacher calls per 100 inputs")
    left.set_ylim(0, max(100, max(calls, default=0) * 1.15))
    right = left.twinx()
    recall = [r.system_recall if r.system_recall is not None else float("nan") for r in rows]
    right.plot(x, recall, "o-", color="#2e7d32", label="system safety recall")
    right.axhline(
        0.95, color="#c62828", linestyle="--", linewidth=1, label="recall target 0.95 (right axis)"
    )
    right.set_ylim(0, 1.05)
    right.set_ylabel("system safety recall")
    handles = [h for h in left.containers] + right.get_lines()
    left.legend(
        handles,
        [h.get_label() for h in handles],
        loc="upper center",
        fontsize=8,
        bbox_to_anchor=(0.5, -0.18),
        ncol=3,
        frameon=False,
    )
    left.set_title(title or "teacher calls per 100 inputs and system safety recall, round by round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
