"""An upskill run as a person reads it: a table, a JSON document and a PNG bar chart.

``write_report(result, out_dir, stem)`` writes ``<stem>.md`` (the per-candidate table
with every metric, the held-out comparison and the decision), ``<stem>.json`` and
``<stem>.png`` (selection scores per candidate, coloured by where they came from, with
the current skill's score as a line, and the held-out pair beside). It knows nothing
about models or registries: it renders an ``UpskillResult``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from teacher.improve.upskill import UpskillResult

COLUMNS = [
    ("name", "candidate"),
    ("origin", "from"),
    ("round", "round"),
    ("demos", "demos"),
    ("n", "cases"),
    ("score", "score"),
    ("format_ok", "format"),
    ("safety_agreement", "agree"),
    ("safety_recall", "recall"),
    ("safe_specificity", "specif."),
    ("balanced", "balanced"),
    ("keyword_recall", "keywords"),
    ("mean_tokens", "tokens"),
    ("s_per_case", "s/case"),
]
COLOURS = {
    "default": "#888888",
    "active": "#888888",
    "library": "#4C72B0",
    "writer": "#DD8452",
    "mutation": "#55A868",
}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value <= 1 else f"{value:.1f}"
    return str(value)


def table(result: UpskillResult) -> str:
    rows = [result.baseline.row()] + [s.row() for s in result.scored]
    winner = result.winner.candidate.name
    lines = [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_cell(row[k]) for k, _ in COLUMNS]
        if row["name"] == winner:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def holdout_table(result: UpskillResult) -> str:
    from teacher.improve.scoring import balanced

    d = result.decision
    cols = [(k, h) for k, h in COLUMNS if k in HOLDOUT_KEYS]
    lines = [
        "| held-out | " + " | ".join(h for _, h in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, m in (
        (result.baseline.candidate.name, d.baseline_holdout),
        (result.winner.candidate.name, d.winner_holdout),
    ):
        m = {**m, "balanced": balanced(m)}
        lines.append(f"| {name} | " + " | ".join(_cell(m[k]) for k, _ in cols) + " |")
    return "\n".join(lines)


HOLDOUT_KEYS = (
    "n",
    "score",
    "format_ok",
    "safety_agreement",
    "safety_recall",
    "safe_specificity",
    "balanced",
    "keyword_recall",
    "mean_tokens",
)


def markdown(result: UpskillResult, command: str = "") -> str:
    split = result.evalset.summary()
    parts = [
        "# Upskill run",
        "",
        f"command: `{command}`" if command else "",
        f"cases: demo pool {split['train']['n']} ({split['train']['safety']} safety), "
        f"selection {split['select']['n']} ({split['select']['safety']}), "
        f"held-out {split['holdout']['n']} ({split['holdout']['safety']}); "
        f"held-out hash {split['hashes']['holdout'][:16]}; run took {result.seconds:.0f} s",
        "",
        "## Candidates on the selection split",
        "",
        table(result),
        "",
        "## Held-out comparison (reported; the release gate decides)",
        "",
        holdout_table(result),
        "",
        f"decision: {result.decision.reason}",
    ]
    if result.writer_notes:
        parts += ["", "writer: " + "; ".join(result.writer_notes)]
    return "\n".join(p for p in parts if p is not None) + "\n"


def chart(result: UpskillResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [result.baseline.row()] + [s.row() for s in result.scored]
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(11, 0.35 * len(rows) + 1.8), gridspec_kw={"width_ratios": [3, 1]}
    )
    full_n = result.baseline.report.n
    names = [r["name"] + ("" if r["n"] >= full_n else " (half)") for r in rows][::-1]
    scores = [r["score"] for r in rows][::-1]
    colours = [COLOURS.get(r["origin"], "#999999") for r in rows][::-1]
    bars = ax.barh(names, scores, color=colours)
    for bar, row in zip(bars, rows[::-1], strict=True):
        if row["n"] < full_n:
            bar.set_alpha(0.45)
            bar.set_hatch("//")
        ax.text(
            row["score"] + 0.01,
            bar.get_y() + bar.get_height() / 2,
            f"{row['score']:.3f}",
            va="center",
            fontsize=7,
        )
    ax.axvline(result.baseline.report.score, color="black", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score on the selection split")
    ax.set_title(
        "grey: current skill; blue: library; green: mutation; orange: writer; "
        "hatched: raced out after half the cases",
        fontsize=8,
    )
    for i, name in enumerate(names):
        if name == result.winner.candidate.name:  # a winner is always scored in full
            ax.get_yticklabels()[i].set_fontweight("bold")
    d = result.decision
    pair = [d.baseline_holdout["score"], d.winner_holdout["score"]]
    ax2.bar(
        ["current", "winner"], pair, color=["#888888", "#C44E52" if d.beats_parent else "#BBBBBB"]
    )
    ax2.set_ylim(0, 1.1)
    ax2.set_title(
        "held-out " + ("(beats the active skill)" if d.beats_parent else "(does not beat it)"),
        fontsize=9,
    )
    for i, v in enumerate(pair):
        ax2.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    result: UpskillResult,
    out_dir: Path,
    stem: str = "upskill",
    command: str = "",
    extra: dict | None = None,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "json", "png")}
    paths["md"].write_text(markdown(result, command))
    doc = {"command": command, **result.to_json(), **(extra or {})}
    paths["json"].write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    chart(result, paths["png"])
    return paths
