"""``gemma-teacher skills list|show|rollback`` through the real CLI on a real registry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.skill import Demo, default_skill
from teacher.registry import Registry
from teacher.upskill import SKILL_FILE

ROOT = Path(__file__).resolve().parents[2]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "teacher", "skills", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture
def home(tmp_path):
    registry = Registry(tmp_path, "skills")
    for n, name in ((1, "first"), (2, "second")):
        skill = default_skill().model_copy(
            update={
                "version": n,
                "name": name,
                "parent": n - 1,
                "score": 0.5 + n / 10,
                "eval_hash": "ab" * 32,
                "instructions": f"Instructions of {name}.",
                "demos": (
                    Demo(input="A cat.", answer="Answer: A cat.\nSAFETY: no\nCONFIDENCE: 0.9"),
                ),
            }
        )
        meta = {"name": name, "score": skill.score, "parent": n - 1, "eval_hash": "ab" * 32}
        registry.add({SKILL_FILE: skill.to_bytes()}, {**meta, "activated": n == 2})
    registry.activate(2)
    config = tmp_path / "teacher.yaml"
    config.write_text(f"home: {tmp_path}\n")
    return tmp_path, config


def test_list_marks_the_active_version(home):
    path, config = home
    proc = cli(config, "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    active = [ln for ln in lines if ln.startswith("*")]
    assert len(active) == 1 and "second" in active[0]
    assert any("first" in ln for ln in lines) and any("default" in ln for ln in lines)


def test_show_prints_the_skill_and_its_prompt(home):
    path, config = home
    proc = cli(config, "show")  # the active one
    assert proc.returncode == 0, proc.stderr
    assert "skill v2 (second)  [active]" in proc.stdout
    assert "Instructions of second." in proc.stdout and "Scene: A cat." in proc.stdout
    proc = cli(config, "show", "1", "--prompt")
    assert proc.stdout.startswith("Instructions of first.") and "Scene: A cat." in proc.stdout
    doc = json.loads(cli(config, "show", "1", "--json").stdout)
    assert doc["version"] == 1 and doc["name"] == "first"
    assert "You watch a camera" in cli(config, "show", "0").stdout


def test_rollback_moves_the_active_pointer(home):
    path, config = home
    proc = cli(config, "rollback", "1")
    assert proc.returncode == 0, proc.stderr
    assert "v1 is active (was v2)" in proc.stdout
    assert Registry(path, "skills").active().number == 1


def test_bad_versions_are_clear_errors_and_change_nothing(home):
    path, config = home
    for args in (("rollback", "7"), ("show", "9"), ("rollback", "0")):
        proc = cli(config, *args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr and "version" in proc.stderr
    assert Registry(path, "skills").active().number == 2


def test_help_has_examples():
    proc = subprocess.run(
        [sys.executable, "-m", "teacher", "skills", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "gemma-teacher skills rollback 2" in proc.stdout
