"""An Ollama edge takes a pushed release whole: its adapter becomes an Ollama model.

Against the project's Ollama test server (``tests/ollama_server.py``, which answers
``/api/blobs/<digest>``, ``/api/create`` and ``/api/delete`` as Ollama's docs/api.md
describes): the adapter arrives as a GGUF blob with the right digest, the create names
FROM, ADAPTER, SYSTEM and the student template, the next answer comes from the new
model, and a failed create leaves the old model in use. The last test runs it all with a
real teacher process and a real edge process over ZeroMQ.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from shared.config import OllamaModelConfig
from shared.errors import ModelError
from shared.gguf_adapter import ADAPTER_GGUF, STUDENT_TEMPLATE, write_gguf_adapter
from shared.ollama_backend import OllamaBackend
from shared.release import build_files, write_release
from shared.skill import default_skill, render_input, render_prefix
from shared.student import Student
from tests.ollama_server import FakeOllama

ROOT = Path(__file__).resolve().parents[2]
BASE = "gemma3:270m"
REPLY = "Answer: A pan is smoking on a stove.\nSAFETY: yes\nCONFIDENCE: 0.8"


def lora_files(seed: int = 0, layers: int = 2, hidden: int = 16, rank: int = 2) -> dict:
    """A PEFT LoRA (q_proj and v_proj of ``layers`` layers) as release files."""
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(size=(rank, hidden)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(size=(hidden, rank)).astype(np.float32)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": save(tensors),
    }


def release(tmp_path: Path, version: int, seed: int = 0, adapter: bool = True):
    skill = default_skill().model_copy(update={"instructions": f"Judge the scene (r{version})."})
    files = build_files(version, skill, None, None, lora_files(seed) if adapter else None)
    return write_release(tmp_path / f"v{version}", files)


def gguf_digest(release, tmp_path: Path) -> str:
    path = tmp_path / f"expected-{release.version}.gguf"
    write_gguf_adapter(release.adapter_dir, path, f"r{release.version}")
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server():
    with FakeOllama(models={BASE}, reply=REPLY) as fake:
        yield fake


def backend_for(server) -> OllamaBackend:
    return OllamaBackend(OllamaModelConfig(host=server.url, model=BASE, keep_release_models=2))


def test_a_release_adapter_becomes_an_ollama_model_and_answers_next(server, tmp_path):
    backend = backend_for(server)
    student = Student(backend, release(tmp_path, 0, adapter=False))
    assert student.answer("A cat sleeps.").generation.text == REPLY
    assert server.requests[-1]["model"] == BASE

    r7 = release(tmp_path, 7)
    student.use(r7)
    digest = gguf_digest(r7, tmp_path)
    assert list(server.blobs) == [digest]  # the GGUF adapter, under its own SHA-256
    create = server.created[-1]
    assert create["model"] == "gemma-edge-student:r7" and create["from"] == BASE
    assert create["adapters"] == {ADAPTER_GGUF: digest}
    assert create["system"] == "Judge the scene (r7)." and create["template"] == STUDENT_TEMPLATE
    assert create["parameters"]["stop"] == ["\nScene:", "\n\n"]

    answered = student.answer("A pan is smoking on the stove.")
    assert server.requests[-1]["model"] == "gemma-edge-student:r7"
    # the model continues after the template's "Answer:"; the backend puts it back
    assert answered.generation.text == REPLY and answered.answer.safety is True

    student.use(release(tmp_path, 8, adapter=False))  # a release without adapter: the base
    student.answer("A cat sleeps.")
    assert server.requests[-1]["model"] == BASE


def test_the_request_messages_render_through_the_template_as_training_did(server, tmp_path):
    """What the template makes of the messages is the prompt the LoRA was trained on."""
    r3 = release(tmp_path, 3)
    student = Student(backend_for(server), r3)
    messages = student.backend.messages(student.request("A   pan is\nsmoking."))
    rendered = ""
    for m in messages:  # STUDENT_TEMPLATE, evaluated by hand for these three roles
        rendered += m["content"] + {"system": "\n\n", "user": "\n", "assistant": "\n\n"}[m["role"]]
    rendered += "Answer:"
    skill = r3.skill
    assert rendered == render_prefix(skill.instructions, skill.demos) + render_input(
        "A   pan is\nsmoking."
    )
    assert STUDENT_TEMPLATE.count("{{ .Content }}") == 3 and STUDENT_TEMPLATE.endswith("Answer:")


def test_a_failed_create_keeps_the_old_model(server, tmp_path):
    backend = backend_for(server)
    student = Student(backend, release(tmp_path, 1))
    server.create_error = "unsupported adapter architecture"
    with pytest.raises(ModelError, match="could not create gemma-edge-student:r2.*unsupported"):
        student.use(release(tmp_path, 2, seed=1))
    student.answer("A cat sleeps.")
    assert server.requests[-1]["model"] == "gemma-edge-student:r1"
    assert student.release.version == 1 and "gemma-edge-student:r2" not in server.models


def test_a_current_ollama_that_refuses_adapters_is_named_and_the_old_model_kept(server, tmp_path):
    backend = backend_for(server)
    student = Student(backend, release(tmp_path, 1))
    server.adapters_removed = True
    with pytest.raises(ModelError, match="refused to create .*r2 with the release's LoRA") as err:
        student.use(release(tmp_path, 2, seed=1))
    assert "releases with a LoRA need model.backend: llamacpp" in str(err.value)
    assert "no longer supported (HTTP 400)" in str(err.value)
    student.answer("A cat sleeps.")
    assert server.requests[-1]["model"] == "gemma-edge-student:r1"
    student.use(release(tmp_path, 3, adapter=False))  # skill and head only: still taken
    student.answer("A cat sleeps.")
    assert server.requests[-1]["model"] == BASE and student.release.version == 3


def test_an_unknown_base_is_a_clear_error(server, tmp_path):
    backend = OllamaBackend(OllamaModelConfig(host=server.url, model="gemma3:1b"))
    with pytest.raises(ModelError, match="could not create .* from 'gemma3:1b'.*not found"):
        Student(backend, release(tmp_path, 1))


def test_old_release_models_are_pruned_but_never_the_one_in_use(server, tmp_path):
    backend = backend_for(server)  # keeps 2
    first = release(tmp_path, 1)
    student = Student(backend, first)
    for version in (2, 3, 4):
        student.use(release(tmp_path, version, seed=version))
    ours = sorted(m for m in server.models if m.startswith("gemma-edge-student:"))
    assert ours == ["gemma-edge-student:r3", "gemma-edge-student:r4"]
    assert server.deleted == ["gemma-edge-student:r1", "gemma-edge-student:r2"]
    assert backend.model_name == "gemma-edge-student:r4"
    student.use(first)  # a rollback to a pruned release (same files) builds it again
    assert backend.model_name == "gemma-edge-student:r1" and server.created[-1]["model"].endswith(
        ":r1"
    )
    student.answer("A cat sleeps.")
    assert server.requests[-1]["model"] == "gemma-edge-student:r1"


# ---------------------------------------------------------------- real processes
def test_a_live_ollama_edge_takes_a_pushed_release_and_refuses_one_it_cannot_build(
    server, tmp_path
):
    from teacher.release.registry import ReleaseRegistry
    from tests.helpers import free_port
    from tests.test_rollout import answers, wait_for

    port = free_port()
    home = tmp_path / "teacher"
    registry = ReleaseRegistry(home)
    skill = default_skill()
    registry.add(build_files(1, skill, None, None, lora_files(1), note="test"), {})
    registry.activate(1)
    teacher_cfg = tmp_path / "teacher.yaml"
    teacher_cfg.write_text(yaml.safe_dump({
        "home": str(home),
        "server": {"bind": f"tcp://127.0.0.1:{port}", "insecure": True, "heartbeat_s": 0.3},
        "reviewer": {"backend": "labels", "labels": str(ROOT / "shared/data/dev_scenes.jsonl")},
    }))  # fmt: skip
    edge_cfg = tmp_path / "edge.yaml"
    edge_cfg.write_text(yaml.safe_dump({
        "edge_id": "ollama-edge",
        "state_dir": str(tmp_path / "edge"),
        "model": {"backend": "ollama", "ollama": {"host": server.url, "model": BASE}},
        "link": {"teacher": f"tcp://127.0.0.1:{port}", "insecure": True, "heartbeat_s": 0.3,
                 "outbox": str(tmp_path / "edge" / "outbox.sqlite")},
    }))  # fmt: skip
    teacher_log = tmp_path / "teacher.log"
    teacher = subprocess.Popen(
        [sys.executable, "-m", "teacher", "serve", "--config", str(teacher_cfg)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=teacher_log.open("w"), text=True,
    )  # fmt: skip
    events_file = tmp_path / "events.jsonl"
    edge = None
    try:
        assert "serving" in teacher.stdout.readline()
        edge = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--config", str(edge_cfg), "--source", "-",
             "--events", str(events_file), "--no-progress"],
            cwd=ROOT, stdin=subprocess.PIPE, stderr=(tmp_path / "edge.log").open("w"), text=True,
        )  # fmt: skip
        active = tmp_path / "edge" / "releases" / "active"
        wait_for(lambda: active.exists() and active.read_text().strip() == "1", 60,
                 "release v1 to be installed", edge)  # fmt: skip

        def ask(text: str) -> dict:
            before = len(answers(events_file))
            edge.stdin.write(text + "\n")
            edge.stdin.flush()
            wait_for(lambda: len(answers(events_file)) > before, 60, f"an answer to {text}", edge)
            return answers(events_file)[before]

        first = ask("A pan is smoking on the stove.")
        assert first["release"] == 1 and first["safety"] is True
        assert server.requests[-1]["model"] == "gemma-edge-student:r1"
        assert server.created[-1]["from"] == BASE and server.created[-1]["system"]
        assert list(server.created[-1]["adapters"].values())[0] in server.blobs

        server.create_error = "llama runner: failed to load adapter"
        registry.add(build_files(2, skill, None, None, lora_files(2), note="test"), {})
        registry.activate(2)
        wait_for(lambda: "refused release v2" in teacher_log.read_text(), 60,
                 "the edge to refuse release v2", edge)  # fmt: skip
        assert "failed to load adapter" in teacher_log.read_text()
        assert active.read_text().strip() == "1"  # the old release stays active
        assert not (tmp_path / "edge" / "releases" / "v2").exists()  # and no trace of v2
        second = ask("A cat is sleeping on a sofa.")
        assert second["release"] == 1
        assert server.requests[-1]["model"] == "gemma-edge-student:r1"
    finally:
        for proc in (edge, teacher):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
