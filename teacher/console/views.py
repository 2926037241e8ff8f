"""The numbers the Fleet and Flywheel pages show, and the flywheel chart's geometry.

The same numbers as ``gemma-teacher report`` (``teacher.serve.report.rows_for``), from the
same definitions: teacher calls per 100 inputs are a release's (an edge's) stored
escalations over the inputs its heartbeats counted; system safety recall is
``shared.scoring.audit_estimate`` of the release's escalations. The report builds an
``Outcome`` per case; here the store counts what the estimate reads in SQL
(``CaseIndex.release_evidence``) and ``shared.scoring.estimate_recall``, the estimate's own
arithmetic, turns the counts into the recall and its interval, so a page stays fast with
100,000 cases. ``tests/teacher/test_console.py`` checks both give the same numbers.

It knows nothing about HTTP or templates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.scoring import estimate_recall


def calls_per_100(calls: int, inputs: int) -> float | None:
    """Teacher calls per 100 inputs (None: no input counted), as ``rows_for`` has it."""
    return 100 * calls / inputs if inputs else None


@dataclass(frozen=True)
class FlywheelRow:
    release: int
    inputs: int
    calls: int
    calls_per_100: float | None
    recall: float | None  # audit-estimated system safety recall
    low: float | None
    high: float | None
    audits: int  # audited inputs (reviewed or not)
    caught: int


def flywheel_rows(
    evidence: dict[int, dict], inputs: dict[tuple[str, int], int]
) -> list[FlywheelRow]:
    """One row per release (all edges), oldest first: ``CaseIndex.release_evidence`` and
    ``EdgeRecords.input_counts``."""
    per_release: dict[int, int] = {}
    for (_, release), n in inputs.items():
        per_release[release] = per_release.get(release, 0) + n
    rows = []
    for release in sorted(set(evidence) | set(per_release)):
        ev = evidence.get(
            release, {"calls": 0, "caught": 0, "passed": 0, "audited": 0, "found": []}
        )
        est = estimate_recall(ev["passed"], ev["audited"], ev["found"], ev["caught"])
        n = per_release.get(release, 0)
        rows.append(
            FlywheelRow(
                release=release,
                inputs=n,
                calls=ev["calls"],
                calls_per_100=calls_per_100(ev["calls"], n),
                recall=est.recall,
                low=est.low,
                high=est.high,
                audits=ev["passed"],
                caught=ev["caught"],
            )
        )
    return rows


def fleet_rows(
    edges: list[dict],
    calls: dict[tuple[str, int], int],
    inputs: dict[tuple[str, int], int],
    active: int,
    silent_after_s: float,
    now: float | None = None,
) -> list[dict]:
    """Each edge's latest heartbeat with its inputs and teacher calls per 100 since the
    release it runs (``EdgeRecords.edges``, ``CaseIndex.calls_by_edge_release``,
    ``EdgeRecords.input_counts``)."""
    now = time.time() if now is None else now
    out = []
    for e in edges:
        key = (e["edge_id"], e["release"])
        n, c = inputs.get(key, 0), calls.get(key, 0)
        out.append(
            {
                **e,
                "age_s": max(0.0, now - e["seen_at"]),
                "online": now - e["seen_at"] <= silent_after_s,
                "behind": e["release"] != active,
                "inputs": n,
                "calls": c,
                "calls_per_100": calls_per_100(c, n),
            }
        )
    return out


# ---------------------------------------------------------------- the chart (inline SVG)
W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 300, 56, 56, 20, 40


def chart(rows: list[FlywheelRow]) -> dict:
    """Geometry of a two-axis chart: calls per 100 (left axis, bars) and the audit-estimated
    recall with its interval (right axis, 0-1, a line with whiskers), per release."""
    shown = [r for r in rows if r.calls_per_100 is not None or r.recall is not None]
    top = max([r.calls_per_100 or 0.0 for r in shown] + [10.0])
    top = float(int(top / 10 + 1) * 10)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / max(len(shown), 1)

    def y_calls(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    def y_recall(v: float) -> float:
        return TOP + plot_h * (1 - v)

    points, bars, whiskers, labels = [], [], [], []
    for i, r in enumerate(shown):
        x = LEFT + step * (i + 0.5)
        labels.append({"x": round(x, 1), "text": f"v{r.release}"})
        if r.calls_per_100 is not None:
            y = y_calls(r.calls_per_100)
            width = min(step * 0.6, 64.0)
            bars.append(
                {
                    "x": round(x - width / 2, 1),
                    "y": round(y, 1),
                    "w": round(width, 1),
                    "h": round(TOP + plot_h - y, 1),
                    "text": f"{r.calls_per_100:.1f}",
                }
            )
        if r.recall is not None:
            points.append((round(x, 1), round(y_recall(r.recall), 1)))
            if r.low is not None and r.high is not None:
                whiskers.append(
                    {
                        "x": round(x, 1),
                        "y1": round(y_recall(r.high), 1),
                        "y2": round(y_recall(r.low), 1),
                    }  # fmt: skip
                )
    ticks = [
        {
            "y": round(y_calls(top * k / 4), 1),
            "calls": f"{top * k / 4:.0f}",
            "recall": f"{k / 4:.2f}",
        }
        for k in range(5)
    ]
    return {
        "w": W,
        "h": H,
        "left": LEFT,
        "right": W - RIGHT,
        "top": TOP,
        "bottom": H - BOTTOM,
        "bars": bars,
        "line": " ".join(f"{x},{y}" for x, y in points),
        "points": [{"x": x, "y": y} for x, y in points],
        "whiskers": whiskers,
        "labels": labels,
        "ticks": ticks,
        "empty": not shown,
    }
