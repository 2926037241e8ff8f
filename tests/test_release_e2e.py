"""The release round trip with the real Gemma 3 270M and the real commands.

``gemma-teacher train --head-only`` builds a release from labelled scenes (head fit on
the model's own hidden states, thresholds calibrated, gated through the harness);
``gemma-edge run --release DIR`` runs an edge on it with no teacher; and the harness,
answering the same cases in this process, gives the same answers, p(unsafe) and
decisions as the edge did: one scoring path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.config import EdgeConfig
from shared.evaluation import bundled_cases
from shared.release import load_release

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def test_a_head_only_release_is_built_run_by_an_edge_and_scored_identically(tmp_path):
    home = tmp_path / "teacher"
    own = tmp_path / "teacher.yaml"  # these 40 scenes only, not the bundled library
    own.write_text("release:\n  bundled_labels: false\n")
    done = run("teacher", "train", "--no-store", "--labels", "shared/data/dev_scenes.jsonl",
               "--config", str(own), "--home", str(home), "--head-only", "--keep-refused",
               "--no-progress")  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]
    start = done.stdout.index('{\n "version"')
    report = json.loads(done.stdout[start : done.stdout.index("\n}\n", start) + 2])
    assert report["version"] == 1 and 3 <= report["candidate"]["n"] <= 16
    assert report["passed"] or report["reasons"]  # refused releases say why
    cal = report["calibration"]
    assert not cal["guaranteed"] and cal["lower"] == 0.0  # 40 scenes are too few to certify
    assert report["timing"]["fit_s"] < 5
    folder = home / "releases" / "v1"
    release = load_release(folder)
    assert release.head is not None and release.head.kind == "hidden"

    cases = bundled_cases("dev_scenes.jsonl")[:8]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("".join(c.input + "\n" for c in cases))
    config = tmp_path / "edge.yaml"
    model = {"llamacpp": {"threads": 2}}  # the default engine, as the teacher built for
    config.write_text(yaml.safe_dump({"model": model, "state_dir": str(tmp_path / "edge")}))
    events = tmp_path / "events.jsonl"
    done = run("edge", "run", "--release", str(folder), "--source", str(inputs), "--config",
               str(config), "--events", str(events), "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [e for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "answer"]
    assert [e["release"] for e in answers] == [1] * 8
    assert all(e["p_unsafe"] is not None for e in answers)

    from shared.backend_factory import make_backend
    from shared.student import Student
    from teacher.release.harness import answer_cases

    edge_config = EdgeConfig.model_validate({"model": model})
    backend = make_backend(edge_config.model)  # the edge's backend class and engine
    student = Student(
        backend, release, edge_config.model.max_new_tokens, answer=edge_config.model.answer
    )
    results = answer_cases(student, cases, edge_config.policy, progress=False)
    for event, result in zip(answers, results, strict=True):
        assert event["input"] == cases[results.index(result)].input
        assert event["raw"] == result.answer.raw
        assert event["p_unsafe"] == pytest.approx(result.answer.p_unsafe, abs=1e-3)
        assert event["alert"] == result.decision.alert
        assert event["decision"]["escalate"] == result.decision.escalate
        assert event["decision"]["reasons"] == list(result.decision.reasons)
