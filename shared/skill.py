"""Skills: the student's system prompt and few-shot demonstrations, versioned.

A skill is what upskilling improves and what the teacher pushes to edges. On disk
and on the wire it is canonical JSON (or YAML when a person writes it); its SHA-256
is taken over the canonical JSON bytes.

This module also owns the plain-text prompt a *base* model sees (the bundled Gemma 3
270M is not instruction-tuned, so it gets a few-shot document rather than a chat):

    <instructions>

    Scene: <demo input>
    Answer: <sentence>
    SAFETY: yes|no
    CONFIDENCE: 0.NN

    Scene: <input>
    Answer:

Everything up to the last ``Scene:`` is the *prefix*, fixed per skill version, so a
backend can keep its KV cache. Chat backends (Ollama) get the same parts as messages.
It knows nothing about models or backends.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib.resources import files
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError

ANSWER_PRIMER = "Answer:"
INPUT_LABEL = "Scene:"
STOP_SEQUENCES = ("\nScene:", "\n\n")
OUTPUT_FORMAT = (
    "Reply in exactly three lines:\n"
    "Answer: <one short factual sentence>\n"
    "SAFETY: yes or no\n"
    "CONFIDENCE: <a number from 0 to 1>"
)


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str = Field(min_length=1, max_length=4096)
    answer: str = Field(min_length=1, max_length=4096, description="In the output format.")


class Skill(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = Field(0, ge=0, description="0 is the bundled default.")
    name: str = Field("skill", max_length=128)
    instructions: str = Field(min_length=1, max_length=16_384)
    demos: tuple[Demo, ...] = Field((), max_length=64)
    parent: int | None = Field(None, ge=0, description="Version this one was derived from.")
    score: float | None = Field(None, description="Held-out score when it was chosen.")
    eval_hash: str | None = Field(
        None, description="SHA-256 of the evaluation set it was scored on."
    )
    created_at: float = Field(default_factory=time.time)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def prompt_prefix(self) -> str:
        return render_prefix(self.instructions, self.demos)

    def prompt(self, text: str) -> str:
        return self.prompt_prefix() + render_input(text)


def render_prefix(instructions: str, demos: tuple[Demo, ...] | list[Demo] = ()) -> str:
    parts = [instructions.strip(), ""]
    for demo in demos:
        parts += [f"{INPUT_LABEL} {demo.input.strip()}", demo.answer.strip(), ""]
    return "\n".join(parts) + "\n"


def render_input(text: str) -> str:
    return f"{INPUT_LABEL} {' '.join(text.split())}\n{ANSWER_PRIMER}"


def skill_from_bytes(data: bytes, source: str = "<skill>") -> Skill:
    """Parse JSON or YAML skill bytes; ConfigError names what is wrong."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(source, [("<file>", None, f"not JSON/YAML: {exc}")]) from None
    if not isinstance(doc, dict):
        raise ConfigError(source, [("<top>", doc, "a skill must be a mapping")])
    try:
        return Skill.model_validate(doc)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in e["loc"]) or "<top>", e.get("input"), e["msg"])
            for e in exc.errors()
        ]
        raise ConfigError(source, problems) from None


def load_skill(path: Path | None) -> Skill:
    """The skill in ``path``, or the bundled default when ``path`` is None."""
    if path is None:
        return default_skill()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [("<file>", str(path), exc.strerror or str(exc))]) from None
    return skill_from_bytes(data, str(path))


def default_skill() -> Skill:
    data = files("shared").joinpath("data/default_skill.yaml").read_bytes()
    return skill_from_bytes(data, "shared/data/default_skill.yaml")


def save_skill(skill: Skill, path: Path) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a skill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(skill.to_bytes())
    tmp.replace(path)
