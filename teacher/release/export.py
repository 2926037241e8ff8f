"""``gemma-teacher export``: a release's LoRA for Ollama and llama.cpp.

Writes into ``--out``::

    adapter.gguf     the release's LoRA as a GGUF adapter (``shared.gguf_adapter``: the
                     layout llama.cpp's ``convert_lora_to_gguf.py`` writes)
    Modelfile        FROM <base>, ADAPTER ./adapter.gguf, SYSTEM (the release's
                     instructions), the student TEMPLATE (the same one an Ollama edge
                     builds its release models with), temperature 0, stop sequences
    skill.json       the release's skill: its demonstrations go in as chat turns
    merged/          (``--merged``) base weights with the adapter merged in, safetensors

By default it exports the active release (``gemma-teacher releases``); ``--release N``
picks another. Ollama imports
PEFT safetensors adapters only for some architectures; for a Gemma 3 student it takes a
GGUF adapter on a GGUF base. An Ollama edge does this by itself when a release is pushed
to it (``shared.ollama_backend``); export is for a person, or for llama.cpp.

example::

    gemma-teacher export --out ollama-student/ --base gemma3:270m
    ollama create gemma-edge-student -f ollama-student/Modelfile
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TrainingError
from shared.gguf_adapter import ADAPTER_GGUF, modelfile, write_gguf_adapter
from shared.skill import Skill
from shared.teacher_config import TeacherConfig, load_teacher_config
from teacher.release.registry import ReleaseRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exportable:
    what: str  # "release v7"
    adapter_dir: Path
    skill: Skill | None
    instructions: str


def pick(home: Path, release: int | None = None) -> Exportable:
    """The adapter of release ``release``, or of the active release. TrainingError when
    that release has none."""
    releases = ReleaseRegistry(home)
    number = release if release is not None else releases.active_number()
    chosen = releases.get(number or 0)
    if chosen.adapter_dir is None:
        raise TrainingError(
            f"release v{chosen.version} has no LoRA adapter: it runs on the base model, so "
            "there is nothing to export (train one with `gemma-teacher train`)"
        )
    return Exportable(
        f"release v{chosen.version}", chosen.adapter_dir, chosen.skill, chosen.skill.instructions
    )


def write_merged(cfg: TeacherConfig, adapter_dir: Path, folder: Path) -> None:
    from peft import PeftModel

    from shared.models import load_model

    model, tokenizer = load_model(
        cfg.student.embedded.gguf_path, cfg.student.embedded.cache_dir, "float32", "cpu"
    )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def export(
    cfg: TeacherConfig,
    out: Path,
    base: str,
    release: int | None = None,
    merged: bool = False,
) -> dict:
    chosen = pick(Path(cfg.home), release)
    out.mkdir(parents=True, exist_ok=True)
    tensors = write_gguf_adapter(chosen.adapter_dir, out / ADAPTER_GGUF, chosen.what)
    (out / "Modelfile").write_text(modelfile(base, chosen.instructions))
    if chosen.skill is not None:
        (out / "skill.json").write_bytes(chosen.skill.to_bytes())
    if merged:
        write_merged(cfg, chosen.adapter_dir, out / "merged")
    return {"exported": chosen.what, "tensors": tensors, "out": str(out), "merged": merged}


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument("--out", required=True, help="folder for adapter.gguf and Modelfile")
    parser.add_argument("--release", type=int, help="release version (default: the active one)")
    parser.add_argument("--base", default="gemma3:270m", help="Ollama base model for FROM")
    parser.add_argument("--merged", action="store_true", help="also write merged safetensors")


def run(args) -> int:
    cfg = load_teacher_config(args.config, args.home)
    result = export(cfg, Path(args.out), args.base, args.release, args.merged)
    print(json.dumps(result))
    return 0
