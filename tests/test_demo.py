"""``gemma-edge demo --quick``: the loop closes, with real processes, sockets, keys and model.

A real teacher server and a real edge (CurveZMQ on loopback, the bundled Gemma 3 270M)
play two rounds; the test checks what a person would: every escalation reached the
teacher's store exactly once and was reviewed, the review came back to the edge, a
release was built, pushed and used by the edge in the next round, and the report has
one row per round.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_quick_demo_closes_the_loop(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--quick", "--work", str(work), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "labels stand in for the teacher" in done.stderr

    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    answers = [e for e in events if e["type"] == "answer"]
    assert len(answers) == 48  # 2 rounds of 24 scenes
    escalated = [e["case_id"] for e in answers if e["decision"]["escalate"]]
    assert escalated and len(set(escalated)) == len(escalated)
    reviews = {e["case_id"] for e in events if e["type"] == "review"}
    assert reviews == set(escalated)  # every case was reviewed and the review came back

    db = sqlite3.connect(work / "teacher" / "store.sqlite")
    stored = [row[0] for row in db.execute("SELECT case_id FROM cases")]
    reviewed = {row[0] for row in db.execute("SELECT case_id FROM reviews")}
    db.close()
    assert sorted(stored) == sorted(escalated)  # each exactly once
    assert reviewed == set(escalated)

    active = (work / "teacher" / "releases" / "active").read_text().strip()
    pointer = work / "edge" / "releases" / "active"  # absent: the edge still runs bundled v0
    installed = pointer.read_text().strip() if pointer.exists() else "0"
    round0, round1 = answers[:24], answers[24:]
    assert {e["release"] for e in round0} == {0}
    report = json.loads((out / "report.json").read_text())
    build = report["builds"][0]
    train = (work / "round0-train.out").read_text()
    if active == "1":
        # The release built from round 0's reviews passed the gate: it was pushed, installed
        # and used from round 1's first input, with no restart.
        assert installed == "1" and build["steps"][-1]["outcome"] == "built"
        assert {e["release"] for e in round1} == {1}
    else:
        # It was built, scored against v0 through the edge's code and refused: the rule is
        # named and the edge kept what it had (tests/test_rollout.py pushes one live).
        assert active == "0" and build["steps"][-1]["outcome"] == "refused by the gate"
        assert "refused" in train and (work / "teacher" / "releases" / "v1").exists() is False
        assert {e["release"] for e in round1} == {0}
    assert '"candidate"' in train and '"active"' in train  # both scored on the frozen split
    # A share of the inputs round 0's edge settled by itself reached the teacher over the
    # link (stored apart from the cases) and trained the head (self-labelled).
    sent = [e["input"] for e in round0 if e.get("settled_sent")]
    assert sent and all(not e["decision"]["escalate"] for e in round0 if e.get("settled_sent"))
    db = sqlite3.connect(work / "teacher" / "store.sqlite")
    kept = [row[0] for row in db.execute("SELECT input FROM settled")]
    db.close()
    assert set(sent) <= set(kept)
    sizes = json.loads(train.splitlines()[0])["splits"]
    assert 0 < sizes["self_labelled"] <= len(sent)
    assert all(e["p_unsafe"] is not None for e in answers)

    assert [r["label"] for r in report["rounds"]] == ["round 0", "round 1"]
    from shared.llamacpp_native import engine_build

    assert report["engine"] == engine_build()  # the build its numbers came from
    for row in report["rounds"]:
        for key in ("teacher_calls_per_100", "system_recall", "student_accuracy", "format_ok",
                    "release"):  # fmt: skip
            assert key in row
    assert report["rounds"][1]["release"] == int(active)
    # The loop against no loop: each round's inputs answered by the starting release too,
    # through the harness. Round 0 ran v0 on the edge as well: the same code path gives
    # the same calls and recall.
    r0 = report["rounds"][0]
    assert all(r["start_calls_per_100"] is not None for r in report["rounds"])
    assert r0["start_calls_per_100"] == r0["teacher_calls_per_100"]
    assert r0["start_recall"] == r0["system_recall"]
    assert "for the same inputs on the starting release" in done.stdout
    assert (out / "report.png").stat().st_size > 10_000
    assert "teacher calls per 100 inputs" in done.stdout


def test_the_demo_reads_why_its_edge_refused_a_release(tmp_path):
    """A refused push ends the wait at once with the edge's reason, not after a timeout."""
    from edge.demo_pair import DemoProcesses

    pair = DemoProcesses(tmp_path, tmp_path / "scenes.jsonl", "llamacpp", "when_needed", 2)
    assert pair.refused(4) is None  # no edge log yet
    (tmp_path / "edge.log").write_text(
        "2026-12-07 10:17:01,283 WARNING edge.link: refused release push v4: release v4 "
        "cannot run here: canary 1: a hazard would pass here\n"
    )
    assert pair.refused(4) == "release v4 cannot run here: canary 1: a hazard would pass here"
    assert pair.refused(3) is None
