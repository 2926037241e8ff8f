"""Export and adapter commands through the real CLI, on an adapter of a tiny Gemma 3."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.gguf_adapter import STUDENT_TEMPLATE, gguf_tensor_name, modelfile

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "teacher", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def home(tmp_path):
    """A teacher home whose active release v1 holds a LoRA of a tiny random Gemma 3."""
    from peft import LoraConfig, get_peft_model

    from tests.helpers import tiny_gemma

    model = get_peft_model(
        tiny_gemma(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    out = tmp_path / "peft"
    model.save_pretrained(out, safe_serialization=True)
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    from shared.release import build_files
    from shared.skill import default_skill
    from teacher.release.registry import ReleaseRegistry

    skill = default_skill().model_copy(update={"instructions": "Describe the scene."})
    releases = ReleaseRegistry(tmp_path)
    releases.add(build_files(1, skill, None, None, files), {})
    releases.activate(1)
    return tmp_path


def test_peft_names_map_to_llama_cpp_adapter_names():
    key = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    assert gguf_tensor_name(key) == ("blk.3.attn_q.weight", "a")
    key = "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"
    assert gguf_tensor_name(key) == ("blk.0.attn_output.weight", "b")


def test_export_writes_a_gguf_lora_adapter_and_a_modelfile(home, tmp_path):
    import gguf

    out = tmp_path / "ollama"
    done = cli("export", "--home", str(home), "--out", str(out), "--base", "gemma3:270m")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exported"] == "release v1"
    reader = gguf.GGUFReader(out / "adapter.gguf")
    fields = {name: reader.fields[name] for name in reader.fields}

    def text(name):
        field = fields[name]
        return bytes(field.parts[field.data[0]]).decode()

    assert text("general.type") == "adapter"
    assert text("adapter.type") == "lora"
    assert text("general.architecture") == "gemma3"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 8.0
    tensors = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert len(tensors) == 2 * 4 * 2  # layers x modules x (a, b)
    # GGUF shapes are reversed numpy shapes: lora_a (r, in) -> [in, r]; lora_b (out, r) -> [r, out]
    assert tensors["blk.0.attn_q.weight.lora_a"] == (32, 4)
    assert tensors["blk.0.attn_q.weight.lora_b"] == (4, 32)
    text_file = (out / "Modelfile").read_text()
    assert text_file.splitlines()[:2] == ["FROM gemma3:270m", "ADAPTER ./adapter.gguf"]
    assert 'SYSTEM """Describe the scene."""' in text_file


def test_modelfile_carries_the_student_template_and_stops():
    text = modelfile("x", "y")
    assert f'TEMPLATE """{STUDENT_TEMPLATE}"""' in text
    assert 'PARAMETER stop "\\nScene:"' in text and "PARAMETER temperature 0" in text


def test_export_takes_the_active_release_and_says_when_it_has_no_adapter(home, tmp_path):
    from shared.release import build_files
    from shared.skill import default_skill
    from teacher.release.registry import ReleaseRegistry

    adapter = home / "releases" / "v1"
    files = {
        n: (adapter / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")
    }
    skill = default_skill().model_copy(update={"instructions": "Release instructions."})
    releases = ReleaseRegistry(home)
    releases.add(build_files(2, skill, None, None, files), {})
    releases.add(build_files(3, skill, None, None, None), {})
    releases.activate(2)
    out = tmp_path / "release"
    done = cli("export", "--home", str(home), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exported"] == "release v2"
    assert 'SYSTEM """Release instructions."""' in (out / "Modelfile").read_text()
    assert json.loads((out / "skill.json").read_text())["instructions"] == "Release instructions."
    bare = cli("export", "--home", str(home), "--out", str(out), "--release", "3")
    assert bare.returncode == 2 and "release v3 has no LoRA adapter" in bare.stderr


def test_export_without_an_adapter_is_a_clear_error(tmp_path):
    done = cli("export", "--home", str(tmp_path), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "release v0 has no LoRA adapter" in done.stderr
