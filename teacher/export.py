"""``gemma-teacher export``: the active (or a chosen) adapter for Ollama / llama.cpp.

Writes into ``--out``::

    adapter.gguf     the LoRA as a GGUF adapter (general.type=adapter, adapter.type=lora,
                     adapter.lora.alpha; tensors blk.N.attn_q.weight.lora_a / .lora_b ...),
                     written with the ``gguf`` package in llama.cpp's adapter layout
    Modelfile        FROM <base>, ADAPTER ./adapter.gguf, SYSTEM (the instructions the
                     adapter was trained with), a TEMPLATE that renders the same
                     "Scene: ... / Answer:" prompt as training, stop sequences
    merged/          (``--merged``) base weights with the adapter merged in, safetensors

Ollama imports PEFT safetensors adapters only for some architectures; for a Gemma 3
student it takes a GGUF adapter on a GGUF base. It knows nothing about training.

example::

    gemma-teacher export --out ollama-student/ --base gemma3:270m
    ollama create gemma-edge-student -f ollama-student/Modelfile
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from shared.config import TeacherConfig, load_config
from shared.errors import TrainingError
from teacher.registry import Registry, Version

logger = logging.getLogger(__name__)

GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_PEFT_KEY = re.compile(r"layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")


def gguf_tensor_name(peft_key: str) -> tuple[str, str]:
    """('blk.3.attn_q.weight', 'a') for '...layers.3.self_attn.q_proj.lora_A.weight'."""
    match = _PEFT_KEY.search(peft_key)
    if not match or match.group(2) not in GGUF_NAMES:
        raise TrainingError(f"cannot map adapter tensor {peft_key!r} to a GGUF name")
    layer, module, which = match.groups()
    return f"blk.{layer}.{GGUF_NAMES[module]}.weight", which.lower()


def write_gguf_adapter(version: Version, path: Path, arch: str = "gemma3") -> int:
    """Write the version's PEFT LoRA as a GGUF adapter; returns the number of tensors."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((version.path / "adapter_config.json").read_text())
    weights = load_file(version.path / "adapter_model.safetensors")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(gguf.Keys.General.TYPE, "adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_name(f"gemma-edge adapter v{version.number}")
    count = 0
    for key in sorted(weights):
        name, which = gguf_tensor_name(key)
        # PEFT: A is (r, in), B is (out, r); numpy order, as llama.cpp's converter writes.
        writer.add_tensor(f"{name}.lora_{which}", weights[key].astype(np.float32))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count


def modelfile(base: str, instructions: str, adapter: str = "./adapter.gguf") -> str:
    system = instructions.replace('"""', "'''")
    return (
        f"FROM {base}\n"
        f"ADAPTER {adapter}\n"
        f'SYSTEM """{system}"""\n'
        'TEMPLATE """{{ .System }}\n\nScene: {{ .Prompt }}\nAnswer:"""\n'
        "PARAMETER temperature 0\n"
        'PARAMETER stop "\\nScene:"\n'
        'PARAMETER stop "\\n\\n"\n'
        "PARAMETER num_predict 48\n"
    )


def write_merged(cfg: TeacherConfig, version: Version, folder: Path) -> None:
    from peft import PeftModel

    from shared.models import load_model

    model, tokenizer = load_model(
        cfg.student.embedded.gguf_path, cfg.student.embedded.cache_dir, "float32", "cpu"
    )
    merged = PeftModel.from_pretrained(model, str(version.path)).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def export(
    cfg: TeacherConfig, out: Path, number: int | None, base: str, merged: bool = False
) -> dict:
    registry = Registry(Path(cfg.home), "adapters")
    version = registry.get(number) if number is not None else registry.active()
    if version is None:
        raise TrainingError(f"no active adapter in {registry.root}: train one or name --version")
    out.mkdir(parents=True, exist_ok=True)
    tensors = write_gguf_adapter(version, out / "adapter.gguf")
    instructions = version.meta.get("instructions") or ""
    (out / "Modelfile").write_text(modelfile(base, instructions))
    if merged:
        write_merged(cfg, version, out / "merged")
    return {"version": version.number, "tensors": tensors, "out": str(out), "merged": merged}


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument("--out", required=True, help="folder for adapter.gguf and Modelfile")
    parser.add_argument("--version", type=int, help="adapter version (default: the active one)")
    parser.add_argument("--base", default="gemma3:270m", help="Ollama base model for FROM")
    parser.add_argument("--merged", action="store_true", help="also write merged safetensors")


def run(args) -> int:
    cfg = load_config(args.config, TeacherConfig)
    if args.home:
        cfg.home = Path(args.home)
    result = export(cfg, Path(args.out), args.version, args.base, args.merged)
    print(json.dumps(result))
    return 0
