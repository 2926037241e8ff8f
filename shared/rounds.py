"""Round-by-round numbers of a deployment: the table and the plot a person looks at.

    row = round_row("round 1", outcomes)      # one Outcome per input the edge answered
    print(table([row, ...])); plot([row, ...], "report.png")

An ``Outcome`` is what happened to one input, seen from the whole system: the truth
(None where nobody knows it), whether the student alerted locally, whether the teacher
was called, the student's own verdict and format, its latency and release. The same
columns serve ``gemma-edge demo`` (every input labelled) and ``gemma-teacher report``
(truth from reviews, a person's correction first).

It knows nothing about events, stores or models: callers turn those into Outcomes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def student_verdict(p_unsafe: float | None, safety: bool | None) -> bool | None:
    """The student's own judgement: its safety head at 0.5 where it has one, else the
    answer's SAFETY line (None when neither said anything)."""
    return p_unsafe >= 0.5 if p_unsafe is not None else safety


@dataclass(frozen=True)
class Outcome:
    truth: bool | None  # unsafe? None: unknown
    alert: bool  # the student alerted locally
    escalated: bool  # the teacher was called
    verdict: bool | None  # the student's own judgement (head at 0.5, else its SAFETY line)
    format_ok: bool
    latency_s: float
    release: int


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

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def quantile_of(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def round_row(label: str, outcomes: Sequence[Outcome]) -> RoundRow:
    n = len(outcomes)
    known = [o for o in outcomes if o.truth is not None]
    hazards = [o for o in known if o.truth]
    safe = [o for o in known if not o.truth]
    missed = sum(1 for o in hazards if not (o.alert or o.escalated))
    judged = [o for o in known if o.verdict is not None]
    releases = Counter(o.release for o in outcomes)
    return RoundRow(
        label=label,
        inputs=n,
        labelled=len(known),
        teacher_calls_per_100=100 * sum(o.escalated for o in outcomes) / n if n else 0.0,
        system_recall=(len(hazards) - missed) / len(hazards) if hazards else None,
        student_accuracy=(
            sum(o.verdict == o.truth for o in judged) / len(known) if known else None
        ),
        format_ok=sum(o.format_ok for o in outcomes) / n if n else 0.0,
        false_alerts_per_100=100 * sum(o.alert for o in safe) / len(known) if known else None,
        p50_s=quantile_of([o.latency_s for o in outcomes], 0.5),
        p95_s=quantile_of([o.latency_s for o in outcomes], 0.95),
        release=releases.most_common(1)[0][0] if releases else 0,
        hazards=len(hazards),
        missed=missed,
    )


COLUMNS = (
    ("label", "", "{}"),
    ("inputs", "inputs", "{}"),
    ("teacher_calls_per_100", "teacher calls/100", "{:.1f}"),
    ("system_recall", "system recall", "{:.3f}"),
    ("student_accuracy", "student acc", "{:.2f}"),
    ("format_ok", "format", "{:.2f}"),
    ("false_alerts_per_100", "false alerts/100", "{:.1f}"),
    ("p50_s", "p50 s", "{:.2f}"),
    ("p95_s", "p95 s", "{:.2f}"),
    ("release", "release", "v{}"),
)


def table(rows: Sequence[RoundRow]) -> str:
    lines = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        doc = asdict(row)
        lines.append(["-" if doc[k] is None else fmt.format(doc[k]) for k, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )  # fmt: skip
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
    bars = left.bar(labels, calls, color="#4a90d9", label="teacher calls per 100 inputs")
    left.bar_label(bars, fmt="%.0f")
    left.set_ylabel("teacher calls per 100 inputs")
    left.set_ylim(0, max(100, max(calls, default=0) * 1.15))
    right = left.twinx()
    recall = [r.system_recall if r.system_recall is not None else float("nan") for r in rows]
    right.plot(labels, recall, "o-", color="#2e7d32", label="system safety recall")
    right.axhline(0.95, color="#c62828", linestyle="--", linewidth=1,
                  label="recall target 0.95 (right axis)")  # fmt: skip
    right.set_ylim(0, 1.05)
    right.set_ylabel("system safety recall")
    handles = [bars, *right.get_lines()]
    left.legend(handles, [h.get_label() for h in handles], loc="upper center", fontsize=8,
                bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)  # fmt: skip
    left.set_title(title or "teacher calls per 100 inputs and system safety recall, round by round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
