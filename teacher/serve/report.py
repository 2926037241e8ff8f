"""``gemma-teacher report``: how a real deployment is doing, per release and per edge.

    gemma-teacher report --home ~/.cache/gemma-edge/teacher --out report/

The same table as ``gemma-edge demo``, from what the teacher knows:

- inputs per release and edge: the counts every edge reports in its heartbeats;
- teacher calls per 100 inputs: the escalations stored for that release and edge;
- system safety recall: estimated from the AUDITS (``shared.scoring.audit_estimate``:
  each audited input the release passed counts 1/``audit_p`` times, Horvitz-Thompson)
  with its 95% interval. Caught hazards are the reviewed hazards among the other
  escalations; alerts the edge did not escalate are not seen here, so it is a lower
  bound where edges alert on their own. Truth is the review, a person's correction first;
- student accuracy, format and false alerts: on the audited inputs (a sample weighted
  towards the head's band, not a uniform one);
- latency is the edges' own (their events and metrics); the teacher does not see it;
- every edge whose latest heartbeat says its release's safety head is not live (it runs
  the release on confidence rules, not the certified thresholds) is named first.

Writes report.json and report.png into ``--out``. It knows nothing about sockets or
models: it reads the store.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from shared.answer import parse_answer
from shared.errors import StoreError
from shared.rounds import RoundRow, calls_by_reason, plot, round_row, table
from shared.scoring import Outcome, audit_estimate, student_verdict
from shared.teacher_config import load_teacher_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument("--out", default="gemma-teacher-report", help="where report.json/png go")


def outcome(case: dict) -> Outcome:
    """A stored escalation as the system saw it (every one is a teacher call)."""
    return Outcome(
        truth=case["truth"],
        alert=case["alert"],
        escalated=True,
        verdict=student_verdict(case["p_unsafe"], case["safety"]),
        format_ok=parse_answer(case["answer"]).format_ok,
        latency_s=0.0,
        release=case["release"],
        reasons=tuple(case["reasons"]),
        audit_p=case.get("audit_p"),
    )


def rows_for(cases: list[dict], counts: dict[tuple[str, int], int]) -> list[RoundRow]:
    """One row per release (all edges), then one per release and edge."""
    groups: dict[tuple[int, str | None], list[dict]] = defaultdict(list)
    inputs: dict[tuple[int, str | None], int] = defaultdict(int)
    for (edge, release), n in counts.items():
        inputs[(release, None)] += n
        inputs[(release, edge)] += n
    for case in cases:
        groups[(case["release"], None)].append(case)
        groups[(case["release"], case["edge_id"])].append(case)
    keys = sorted(set(groups) | set(inputs), key=lambda k: (k[0], k[1] is not None, k[1] or ""))
    rows = []
    for release, edge in keys:
        group = groups.get((release, edge), [])
        outcomes = [outcome(c) for c in group]
        audits = [o for o in outcomes if o.audited]
        label = f"v{release}" + (f" {edge}" if edge else " (all edges)")
        row = round_row(label, audits)
        est = audit_estimate(outcomes)
        n = inputs.get((release, edge), 0)
        calls = 100 * len(group) / n if n else None
        rows.append(
            RoundRow(
                label=label,
                inputs=n,
                labelled=row.labelled,
                teacher_calls_per_100=calls,
                system_recall=est.recall,
                student_accuracy=row.student_accuracy,
                format_ok=row.format_ok,
                false_alerts_per_100=row.false_alerts_per_100,
                p50_s=None,
                p95_s=None,
                release=release,
                hazards=row.hazards,
                missed=est.found,  # hazards the release passed, found by audits
                calls_by_reason={
                    k: round(v * len(outcomes) / n, 2) if n else 0.0
                    for k, v in calls_by_reason(outcomes).items()
                },
                audit_recall=est.recall,
                audit_low=est.low,
                audit_high=est.high,
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from teacher.data.store import CaseStore, default_store_path

    home = load_teacher_config(args.config, args.home).home
    path = default_store_path(home)
    if not path.is_file():
        raise StoreError(f"no store at {path}: has a teacher served from {home}?")
    store = CaseStore(path, recover=False)
    try:
        rows = rows_for(store.report_rows(), store.input_counts())
        edges = store.edges()
    finally:
        store.close()
    blind = [e for e in edges if e["head_live"] is False]
    for e in blind:
        print(
            f"WARNING: edge {e['edge_id']} runs release v{e['release']} without its safety "
            "head (its heartbeat says head_live: false): the certified thresholds do not "
            "decide there"
        )
    if not rows:
        print(f"nothing to report yet: no edge has reported inputs to {path}")
        return 0
    print(table(rows))
    print("rates on the audit sample (labelled = audited and reviewed); latency: see the edges")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"home": str(home), "rows": [r.to_json() for r in rows], "edges": edges}
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    plot(
        [r for r in rows if r.label.endswith("(all edges)")],
        out / "report.png",
        "per release, all edges (rates on the audit sample)",
    )
    print(f"report: {out / 'report.json'} {out / 'report.png'}")
    return 0
