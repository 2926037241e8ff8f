"""A running edge (real process, real Gemma 3 270M) takes pushed releases live.

The teacher server and the edge daemon run as real subprocesses linked over ZeroMQ on
loopback. The test activates releases in the teacher's registry (a new skill, then that
skill with a LoRA, then a head) and checks that the very next input the edge answers
uses each, without the edge restarting (same pid, one model load).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from shared.config import EmbeddedModelConfig
from shared.models import ensure_cache
from shared.skill import default_skill
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def answers(path: Path) -> list[dict]:
    return [e for e in events(path) if e.get("type") == "answer"]


def wait_for(cond, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def random_lora(folder: Path, r: int = 4) -> None:
    """A PEFT LoRA adapter (safetensors) for the bundled model's shapes, with strong weights."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads(
        (ensure_cache(None, EmbeddedModelConfig().cache_dir) / "config.json").read_text()
    )
    cfg = cfg.get("text_config", cfg)
    hidden, heads, head_dim = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out in (
            ("q_proj", heads * head_dim),
            ("v_proj", cfg["num_key_value_heads"] * head_dim),
        ):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, hidden, generator=gen) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, r, generator=gen) * 0.5
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": r,
                "lora_alpha": 2 * r,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "bias": "none",
                "inference_mode": True,
                "base_model_name_or_path": None,
            }
        )
    )


@pytest.fixture
def stack(tmp_path):
    port = free_port()
    home = tmp_path / "teacher"
    teacher_cfg = tmp_path / "teacher.yaml"
    teacher_cfg.write_text(
        yaml.safe_dump(
            {
                "home": str(home),
                "server": {"bind": f"tcp://127.0.0.1:{port}", "insecure": True, "heartbeat_s": 0.5},
                "reviewer": {
                    "backend": "labels",
                    "labels": str(ROOT / "shared/data/dev_scenes.jsonl"),
                },
            }
        )
    )
    edge_cfg = tmp_path / "edge.yaml"
    edge_cfg.write_text(
        yaml.safe_dump(
            {
                "edge_id": "rollout-edge",
                "state_dir": str(tmp_path / "edge"),
                "model": {"embedded": {"threads": 2}},
                "policy": {"audit_every": 1},  # every input escalates: the link carries traffic too
                "link": {
                    "teacher": f"tcp://127.0.0.1:{port}",
                    "insecure": True,
                    "heartbeat_s": 0.5,
                    "outbox": str(tmp_path / "edge" / "outbox.sqlite"),
                },
            }
        )
    )
    teacher = subprocess.Popen(
        [sys.executable, "-m", "teacher", "serve", "--config", str(teacher_cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "teacher.log").open("w"),
        text=True,
    )
    procs = [teacher]
    try:
        assert "serving" in teacher.stdout.readline()
        events_file = tmp_path / "events.jsonl"
        edge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge",
                "run",
                "--config",
                str(edge_cfg),
                "--source",
                "-",
                "--events",
                str(events_file),
                "--no-progress",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stderr=(tmp_path / "edge.log").open("w"),
            text=True,
        )
        procs.insert(0, edge)
        yield home, edge, events_file, tmp_path
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def ask(edge, events_file: Path, text: str, timeout: float = 300) -> dict:
    before = len(answers(events_file))
    edge.stdin.write(text + "\n")
    edge.stdin.flush()
    wait_for(lambda: len(answers(events_file)) > before, timeout, f"an answer to {text!r}", edge)
    return answers(events_file)[before]


def test_a_live_edge_uses_pushed_releases_for_its_next_input_and_rolls_back(stack):
    home, edge, events_file, tmp_path = stack
    scene = "A cat is sleeping on a sofa."
    first = ask(edge, events_file, scene)
    assert (first["skill_version"], first["adapter_version"]) == (0, 0)
    assert first["release"] == 0 and first["p_unsafe"] is not None  # the bundled release

    # A release of a new skill alone (no head) is pushed whole and answers the next input.
    from shared.release import build_files, default_release
    from teacher.release.registry import ReleaseRegistry

    releases = ReleaseRegistry(home)
    installed = tmp_path / "edge" / "releases" / "active"

    def push(version: int, files: dict[str, bytes], what: str) -> None:
        releases.add(files, {"passed": True})
        releases.activate(version)
        wait_for(lambda: installed.exists() and installed.read_text().strip() == str(version),
                 60, f"the {what} to be installed", edge)  # fmt: skip

    skill = default_skill().model_copy(
        update={"instructions": "You describe what a home camera sees, then judge safety."}
    )
    push(1, build_files(1, skill, None, None), "release of a new skill")
    second = ask(edge, events_file, scene)
    assert (second["release"], second["skill_version"], second["adapter_version"]) == (1, 1, 0)
    assert second["p_unsafe"] is None  # no head in that release: the confidence rules decide

    source = tmp_path / "adapter-src"
    random_lora(source)
    adapter = {p.name: p.read_bytes() for p in source.iterdir()}
    push(2, build_files(2, skill, None, None, adapter), "release with a LoRA")
    third = ask(edge, events_file, scene)
    assert third["adapter_version"] == 2 and third["release"] == 2
    # Same skill and input, a strong random adapter: the model's answer changed.
    assert third["raw"] != second["raw"]
    assert edge.poll() is None  # never restarted
    # A release (skill + adapter + head + thresholds) is used by the very next input;
    # rolling back to v0 sends the bundled release back out.
    bundled = default_release()
    push(3, build_files(3, bundled.skill, bundled.head, bundled.calibration, adapter),
         "release with a head")  # fmt: skip
    fourth = ask(edge, events_file, scene)
    assert fourth["release"] == 3 and fourth["p_unsafe"] is not None
    assert fourth["adapter_version"] == 3  # the release's own adapter
    releases.activate(0)
    wait_for(lambda: installed.read_text().strip() == "0", 60, "the rollback to v0", edge)
    fifth = ask(edge, events_file, scene)
    assert fifth["release"] == 0 and fifth["adapter_version"] == 0
    assert fifth["raw"] == first["raw"] and fifth["p_unsafe"] is not None
    assert edge.poll() is None  # never restarted
