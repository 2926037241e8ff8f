import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import EdgeConfig, load_config, validate_config
from shared.errors import ConfigError
from shared.teacher_config import TeacherConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name,model",
    [
        ("edge.yaml", EdgeConfig),
        ("teacher.yaml", TeacherConfig),
        ("edge-local.yaml", EdgeConfig),
        ("teacher-local.yaml", TeacherConfig),
    ],
)
def test_example_configs_pass(name, model):
    cfg = load_config(ROOT / "deploy" / "config" / name, model)
    assert isinstance(cfg, model)


def test_defaults_need_no_file():
    cfg = load_config(None, EdgeConfig)
    assert cfg.model.backend == "llamacpp"
    assert cfg.link.teacher is None


def test_torch_names_the_embedded_backend(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("model:\n  backend: torch\n")
    assert load_config(path, EdgeConfig).model.backend == "embedded"


BAD = """\
edge_id: cam
polcy:
  audit_every: 3
policy:
  confidence_threshold: -0.5
gate:
  sample_fps: fast
"""


def test_three_precise_errors(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path, EdgeConfig)
    problems = {p: (v, r) for p, v, r in info.value.problems}
    assert set(problems) == {"polcy", "policy.confidence_threshold", "gate.sample_fps"}
    assert problems["polcy"][1] == "unknown key"
    assert problems["policy.confidence_threshold"][0] == -0.5
    assert "greater than or equal to 0" in problems["policy.confidence_threshold"][1]
    assert problems["gate.sample_fps"][0] == "fast"
    assert "number" in problems["gate.sample_fps"][1]


def test_check_config_cli_prints_errors_without_traceback(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(BAD)
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln.strip() for ln in proc.stderr.splitlines()]
    assert any(ln.startswith("polcy: ") and "unknown key" in ln for ln in lines)
    assert any(ln.startswith("policy.confidence_threshold: -0.5: ") for ln in lines)
    assert any(ln.startswith("gate.sample_fps: 'fast': ") for ln in lines)


def test_teacher_check_config_ok():
    proc = subprocess.run(
        [sys.executable, "-m", "teacher", "check-config", "deploy/config/teacher.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_link_without_keys_is_refused():
    with pytest.raises(ConfigError) as info:
        validate_config({"link": {"teacher": "tcp://127.0.0.1:5555"}}, EdgeConfig)
    assert "insecure" in str(info.value)


def test_labels_reviewer_needs_file():
    with pytest.raises(ConfigError) as info:
        validate_config({"reviewer": {"backend": "labels"}}, TeacherConfig)
    assert "reviewer" in str(info.value)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError):
        validate_config([1, 2], EdgeConfig)
    path = tmp_path / "x.yaml"
    path.write_text("a: [unclosed")
    with pytest.raises(ConfigError) as info:
        load_config(path, EdgeConfig)
    assert "not valid YAML" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", EdgeConfig)
    assert "missing.yaml" in str(info.value)
