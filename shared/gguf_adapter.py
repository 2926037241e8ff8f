"""A release's LoRA as llama.cpp and Ollama take it: a GGUF adapter and a prompt template.

    count = write_gguf_adapter(release.adapter_dir, Path("adapter.gguf"), "release v7")
    STUDENT_TEMPLATE                       # Ollama TEMPLATE rendering the edge's prompt
    modelfile("gemma3:270m", instructions) # FROM / ADAPTER / SYSTEM / TEMPLATE / PARAMETERs

The GGUF adapter follows llama.cpp's layout (``convert_lora_to_gguf.py``):
``general.type=adapter``, ``adapter.type=lora``, ``adapter.lora.alpha``, and for each
PEFT pair ``...layers.N.self_attn.q_proj.lora_A/B.weight`` the tensors
``blk.N.attn_q.weight.lora_a`` / ``.lora_b`` in float32, in numpy order (GGUF records
the reversed shape: lora_a (r, in) is ``[in, r]``). It needs only numpy, safetensors
and gguf, so an edge without torch can convert a pushed release for its Ollama server.

``STUDENT_TEMPLATE`` renders chat messages into the exact document the LoRA was trained
on (``shared.skill``): the system message, then each demonstration turn, then
``Scene: <input>`` and the ``Answer:`` primer. ``OllamaBackend`` sends the release's
skill as those messages, so an Ollama edge prompts the adapter as training did.
It knows nothing about registries, sockets or training.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from shared.errors import ModelError
from shared.skill import ANSWER_PRIMER, STOP_SEQUENCES

ADAPTER_GGUF = "adapter.gguf"
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

# Go template (Ollama): system + "\n\n"; user turns ("Scene: ...") + "\n"; assistant turns
# (the three answer lines) + "\n\n"; then the primer. Same bytes as shared.skill's prompt.
STUDENT_TEMPLATE = (
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ .Content }}\n\n'
    '{{ else if eq .Role "user" }}{{ .Content }}\n'
    "{{ else }}{{ .Content }}\n\n"
    "{{ end }}"
    "{{- end }}" + ANSWER_PRIMER
)
STUDENT_PARAMETERS = {"temperature": 0, "stop": list(STOP_SEQUENCES)}


def gguf_tensor_name(peft_key: str) -> tuple[str, str]:
    """('blk.3.attn_q.weight', 'a') for '...layers.3.self_attn.q_proj.lora_A.weight'."""
    match = _PEFT_KEY.search(peft_key)
    if not match or match.group(2) not in GGUF_NAMES:
        raise ModelError(f"cannot map adapter tensor {peft_key!r} to a GGUF name")
    layer, module, which = match.groups()
    return f"blk.{layer}.{GGUF_NAMES[module]}.weight", which.lower()


def write_gguf_adapter(adapter_dir: Path, path: Path, name: str, arch: str = "gemma3") -> int:
    """Write the PEFT LoRA in ``adapter_dir`` as a GGUF adapter; returns the tensor count."""
    import gguf
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = load_file(adapter_dir / "adapter_model.safetensors")
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelError(f"cannot read the LoRA adapter in {adapter_dir}: {exc}") from exc
    if "lora_alpha" not in config:
        raise ModelError(f"{adapter_dir}/adapter_config.json has no lora_alpha")
    mapped = [(gguf_tensor_name(key), key) for key in sorted(weights)]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(gguf.Keys.General.TYPE, "adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    writer.add_name(f"gemma-edge {name}")
    for (tensor, which), key in mapped:
        # PEFT: A is (r, in), B is (out, r); numpy order, as llama.cpp's converter writes.
        writer.add_tensor(f"{tensor}.lora_{which}", weights[key].astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(mapped)


def modelfile(base: str, instructions: str, adapter: str = f"./{ADAPTER_GGUF}") -> str:
    """An Ollama Modelfile: the base, the adapter, the skill's instructions, the template."""
    system = instructions.replace('"""', "'''")
    lines = [
        f"FROM {base}",
        f"ADAPTER {adapter}",
        f'SYSTEM """{system}"""',
        f'TEMPLATE """{STUDENT_TEMPLATE}"""',
        f"PARAMETER temperature {STUDENT_PARAMETERS['temperature']}",
    ]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in STUDENT_PARAMETERS["stop"]]
    return "\n".join(lines) + "\n"


def cached_gguf_adapter(path: Path, cache: Path) -> Path:
    """A GGUF adapter file for ``path``: itself if it is one, else the PEFT folder's
    conversion, written once into ``cache`` under its content's hash (atomically)."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    weights = path / "adapter_model.safetensors"
    if not (path / "adapter_config.json").is_file() or not weights.is_file():
        raise ModelError(f"adapter at {path}: no adapter_config.json + adapter_model.safetensors")
    digest = hashlib.sha256(weights.read_bytes())
    digest.update((path / "adapter_config.json").read_bytes())
    target = cache / f"{digest.hexdigest()[:16]}.gguf"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        write_gguf_adapter(path, partial, f"adapter {path.name}")
        os.replace(partial, target)
    return target
