"""Self-training: the inputs an edge settled on its own become the safety head's extra cases.

    traffic = load_traffic([Path("events.jsonl")])        # the edge's answer events
    splits = make_splits(cfg, cases, skill, traffic)       # teacher.release.head_fit

Most of what an edge sees never reaches the teacher: its release alerts (``p_unsafe >=
upper``) or rules the input out (``p_unsafe < lower``) by itself. Those inputs are the
site's own distribution, and each carries the decision of a calibrated policy. Read from
the edge's event log (``gemma-edge run --events FILE``), every answer that was *not*
escalated and has a ``p_unsafe`` becomes a case labelled with what the edge did: alerted
→ unsafe, passed → safe (origin ``self``). They train the next head (self-training,
"pseudo-labelling"), next to the reviewed cases, so that it adapts to the site's scenes
from more than the few dozen the teacher saw.

They never calibrate and never gate: the thresholds are certified on reviewed labels
only (``teacher.release.head_fit``), and an input that has a reviewed or bundled label, or that
the frozen split holds, is dropped here. Escalated inputs are left out: the teacher's
review of them is in the store. Inputs are redacted like every other case.

Edges send a sampled share of those inputs over the link (``Settled``, ``edge.settled``);
``stored_traffic`` reads them from the store the same way, so `train` uses them without
``--traffic``. It knows nothing about models or heads: it turns events into labelled cases.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.evaluation import LabeledCase, bad_line, jsonl_lines
from shared.redact import redact
from teacher.data.dataset import case_key

ORIGIN = "self"


def traffic_case(event: dict) -> LabeledCase | None:
    """The self-labelled case of one answer event, or None when it does not make one."""
    if event.get("type") != "answer":
        return None
    decision = event.get("decision")
    p_unsafe = event.get("p_unsafe")
    text = event.get("input")
    if not isinstance(decision, dict) or decision.get("escalate", True):
        return None  # escalated: the teacher's review is the label
    if not isinstance(p_unsafe, (int, float)) or not isinstance(text, str) or not text.strip():
        return None  # no calibrated head decided it
    text = redact(" ".join(text.split()))
    digest = hashlib.sha256(case_key(text).encode()).hexdigest()[:16]
    return LabeledCase(f"self-{digest}", text, bool(event.get("alert")), (), None, ORIGIN)


def load_traffic(paths: list[Path], limit: int | None = None) -> list[LabeledCase]:
    """Self-labelled cases from edge event logs, one per input (its latest decision), the
    ``limit`` most recently seen (every build computes their features again, and an
    edge's log only grows).

    A line that is not JSON is an error naming the file and line, except the last line of
    a file, which the edge may still be writing.
    """
    cases: dict[str, LabeledCase] = {}
    for path in paths:
        lines = jsonl_lines(Path(path))
        for index, (number, line) in enumerate(lines):
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                if index == len(lines) - 1:
                    break  # a line being written
                raise bad_line(Path(path), number, line, exc) from None
            case = traffic_case(event) if isinstance(event, dict) else None
            if case is not None:
                key = case_key(case.input)
                cases.pop(key, None)  # seen again: it moves to the end, as the newest
                cases[key] = case
    kept = list(cases.values())
    return kept if limit is None else kept[max(0, len(kept) - limit) :]


def stored_traffic(home: Path, limit: int | None = None) -> list[LabeledCase]:
    """Self-labelled cases from the settled inputs edges sent over the link (``Settled``
    messages in the store, kept apart from reviewed cases), the ``limit`` latest."""
    from teacher.data.store import CaseStore, default_store_path

    path = default_store_path(home)
    if not Path(path).is_file():
        return []
    store = CaseStore(path, recover=False)  # the server may be writing
    try:
        rows = store.settled_rows(limit)
    finally:
        store.close()
    cases: dict[str, LabeledCase] = {}
    for row in rows:
        event = {"type": "answer", "decision": {"escalate": False}}
        event.update(input=row["input"], alert=row["alert"], p_unsafe=row["p_unsafe"])
        case = traffic_case(event)
        if case is not None:
            key = case_key(case.input)
            cases.pop(key, None)
            cases[key] = case
    return list(cases.values())


def self_labels(traffic: list[LabeledCase], which: str) -> list[LabeledCase]:
    """The settled inputs that train the head (``release.self_labels``): all, passed
    (what the edge ruled out; its alerts at a new site include false alerts), or off."""
    if which == "off":
        return []
    return [c for c in traffic if not c.safety] if which == "passed" else traffic


def unlabelled_only(traffic: list[LabeledCase], labelled: list[LabeledCase]) -> list[LabeledCase]:
    """``traffic`` without the inputs that have a real label (reviewed, bundled, frozen)."""
    known = {case_key(c.input) for c in labelled}
    return [c for c in traffic if case_key(c.input) not in known]
