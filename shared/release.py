"""A release: everything an edge runs, as one versioned, hashed folder.

    <folder>/manifest.json            version, every file's size and SHA-256, calibration
    <folder>/skill.json               instructions + demonstrations (``shared.skill``)
    <folder>/head.safetensors         the safety head (``shared.head``), optional
    <folder>/adapter_config.json      a PEFT LoRA adapter, optional (both files or none)
    <folder>/adapter_model.safetensors

The skill, the adapter, the head and the escalation thresholds are judged together
(a LoRA is sensitive to the prompt it was trained with, a head to the model and prompt
that made its features, the thresholds to the head), so they ship, install and roll
back together. The manifest is not listed in itself; every other file is, and a
release whose files do not match their entries does not load.

``check_files`` verifies a release held in memory (a push) without writing anything;
``write_release`` writes one atomically (temporary folder, fsync, rename);
``load_release`` reads and verifies a folder; ``default_release(engine)`` is the one
bundled with the package for that engine (``shared/data/release`` for torch,
``shared/data/release-llamacpp`` for llama.cpp: the default skill, a head trained on the
bundled labelled scenes with that engine's hidden states, and its calibration; rebuilt
by ``gemma-teacher releases build-default [--backend torch]``).

It knows nothing about sockets, registries, models or policies.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.calibration import Calibration
from shared.errors import ConfigError, ModelError, PushRejected
from shared.head import HEAD_FILE, SafetyHead
from shared.messages import FileEntry, file_entry
from shared.skill import Skill, skill_from_bytes

MANIFEST = "manifest.json"
SKILL_FILE = "skill.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
KNOWN_FILES = (SKILL_FILE, HEAD_FILE, *ADAPTER_FILES)


class Canary(BaseModel):
    """One input the teacher's harness answered with this release, for the edge to rerun.

    An edge runs every canary through its own ``Student`` and policy before it activates
    the release (``edge.canary``): a non-finite p(unsafe), one further than
    ``Manifest.canary_tolerance`` from the teacher's, or a canary hazard that would pass
    refuses the release.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    id: str = Field("", max_length=128)
    input: str = Field(min_length=1, max_length=4096)
    unsafe: bool = Field(description="The label: a hazard (True) or a safe scene.")
    p_unsafe: float | None = Field(
        None, ge=0, le=1, description="What the teacher's harness computed (None: no head)."
    )
    decision: Literal["alert", "escalate", "pass"] = Field(
        description="What the release's policy did with it in the teacher's harness."
    )


DEFAULT_CANARY_TOLERANCE = 0.05


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: int = Field(1, ge=1, le=1, description="Release folder format.")
    version: int = Field(ge=0, description="0 is the bundled default release.")
    created_at: float = Field(default_factory=time.time)
    parent: int | None = Field(None, ge=0, description="The release this one was built from.")
    files: list[FileEntry] = Field(min_length=1, max_length=16)
    model: str = Field("", max_length=256, description="The student the head was fit on.")
    calibration: Calibration | None = Field(None, description="The escalation thresholds.")
    metrics: dict = Field(default_factory=dict, description="Evaluation when it was built.")
    note: str = Field("", max_length=4096)
    canaries: list[Canary] = Field(
        default_factory=list, max_length=32, description="Inputs an edge reruns first."
    )
    canary_tolerance: float = Field(
        DEFAULT_CANARY_TOLERANCE,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="The largest |p_unsafe - the teacher's| a canary may show on an edge.",
    )


@dataclass(frozen=True)
class Release:
    manifest: Manifest
    skill: Skill
    head: SafetyHead | None
    adapter_dir: Path | None  # a folder with the PEFT files, when the release has an adapter
    path: Path | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def calibration(self) -> Calibration | None:
        return self.manifest.calibration

    def adapter_files(self) -> dict[str, bytes] | None:
        """The adapter's PEFT files, to build the next release on the same adapter (a
        head-only build or an upskill keeps it); None without one."""
        return None if self.adapter_dir is None else read_adapter(self.adapter_dir)

    def describe(self) -> str:
        parts = [f"release v{self.version}", f"skill {self.skill.name!r}"]
        if self.adapter_dir is not None:
            parts.append("LoRA adapter")
        if self.head is not None:
            parts.append(f"{self.head.kind} safety head")
        cal = self.calibration
        if cal is not None:
            parts.append(
                f"thresholds {cal.lower:.3f}/{cal.upper:.3f}"
                + ("" if cal.guaranteed else " (not guaranteed: conservative)")
            )
        return ", ".join(parts)


# ---------------------------------------------------------------- checking
def check_files(files: dict[str, bytes], where: str = "release") -> Manifest:
    """The manifest of an in-memory release if every file checks out; else PushRejected.

    Checks: the manifest parses; each listed file is present with its size and SHA-256;
    no unlisted file; the skill parses; the head opens; the adapter is whole.
    """
    if MANIFEST not in files:
        raise PushRejected(f"{where}: no {MANIFEST}")
    try:
        manifest = Manifest.model_validate_json(files[MANIFEST])
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "<document>"
        raise PushRejected(f"{where}: {MANIFEST} is not valid at {at}: {first['msg']}") from None
    where = f"{where} v{manifest.version}"
    listed = {f.name for f in manifest.files}
    extra = sorted(set(files) - listed - {MANIFEST})
    if extra:
        raise PushRejected(f"{where}: files not in the manifest: {', '.join(extra)}")
    unknown = sorted(listed - set(KNOWN_FILES))
    if unknown:
        raise PushRejected(f"{where}: unknown files in the manifest: {', '.join(unknown)}")
    for entry in manifest.files:
        data = files.get(entry.name)
        if data is None:
            raise PushRejected(f"{where}: {entry.name} is missing")
        got = file_entry(entry.name, data)
        if got.size != entry.size:
            raise PushRejected(f"{where}: {entry.name}: size {got.size} != manifest {entry.size}")
        if got.sha256 != entry.sha256:
            raise PushRejected(
                f"{where}: {entry.name}: sha256 {got.sha256[:12]}… != manifest {entry.sha256[:12]}…"
            )
    if SKILL_FILE not in files:
        raise PushRejected(f"{where}: no {SKILL_FILE}")
    try:
        skill_from_bytes(files[SKILL_FILE], f"{where}/{SKILL_FILE}")
    except ConfigError as exc:
        raise PushRejected(f"{where}: the skill does not parse: {exc}") from None
    if HEAD_FILE in files:
        try:
            SafetyHead.from_bytes(files[HEAD_FILE], f"{where}/{HEAD_FILE}")
        except ModelError as exc:
            raise PushRejected(str(exc)) from None
    elif manifest.calibration is not None and manifest.calibration.lower > 0:
        raise PushRejected(f"{where}: thresholds without a safety head")
    present = [name for name in ADAPTER_FILES if name in files]
    if present and len(present) != len(ADAPTER_FILES):
        missing = sorted(set(ADAPTER_FILES) - set(present))
        raise PushRejected(f"{where}: the adapter lacks {', '.join(missing)}")
    if present:
        _check_adapter(files, where)
    return manifest


def _check_adapter(files: dict[str, bytes], where: str) -> None:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        config = json.loads(files["adapter_config.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PushRejected(f"{where}: adapter_config.json is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PushRejected(f"{where}: adapter_config.json is not an object")
    try:
        tensors = load(files["adapter_model.safetensors"])
    except (SafetensorError, ValueError) as exc:
        raise PushRejected(f"{where}: adapter_model.safetensors does not open: {exc}") from None
    if not tensors:
        raise PushRejected(f"{where}: adapter_model.safetensors holds no tensors")


# ---------------------------------------------------------------- reading
def read_files(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(str(folder), [("<folder>", str(folder), "no such release folder")])
    if not (folder / MANIFEST).is_file():
        raise ConfigError(str(folder), [("<folder>", str(folder), f"no {MANIFEST}: not a release")])
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def load_release(folder: Path) -> Release:
    """Read and verify a release folder; ConfigError/PushRejected name what is wrong."""
    folder = Path(folder)
    data = {k: v for k, v in read_files(folder).items() if k in KNOWN_FILES or k == MANIFEST}
    manifest = check_files(data, str(folder))
    skill = skill_from_bytes(data[SKILL_FILE], str(folder / SKILL_FILE))
    head = SafetyHead.from_bytes(data[HEAD_FILE]) if HEAD_FILE in data else None
    adapter = folder if ADAPTER_FILES[0] in data else None
    return Release(manifest, skill, head, adapter, folder)


def payload(folder: Path) -> list[tuple[FileEntry, bytes]]:
    """The release's files for a push: the manifest first, then the listed files."""
    data = read_files(folder)
    manifest = Manifest.model_validate_json(data[MANIFEST])
    out = [(file_entry(MANIFEST, data[MANIFEST]), data[MANIFEST])]
    out += [(e, data[e.name]) for e in manifest.files]
    return out


ENGINES = ("torch", "llamacpp")  # the engines a bundled release v0 is built for
DEFAULT_ENGINE = "llamacpp"  # the default model.backend's


def default_release_dir(engine: str = DEFAULT_ENGINE, fallback: bool = True) -> Path:
    """The bundled release v0 for ``engine`` (its head reads that engine's hidden states):
    ``shared/data/release`` (torch) or ``shared/data/release-<engine>``; with ``fallback``
    the torch one where none is bundled for ``engine`` (its head then does not run there,
    and the edge says so)."""
    folder = Path(str(package_files("shared").joinpath(f"data/release-{engine}")))
    if engine == "torch" or (fallback and not (folder / MANIFEST).is_file()):
        folder = Path(str(package_files("shared").joinpath("data/release")))
    return folder


def default_release(engine: str = DEFAULT_ENGINE) -> Release:
    """The release bundled with the package (version 0) for ``engine`` (see
    ``default_release_dir``)."""
    return load_release(default_release_dir(engine))


def model_engine(backend: str) -> str:
    """The engine whose bundled v0 a ``model.backend`` runs (Ollama's head reads no
    hidden states: it gets the torch one, whose hidden head it drops)."""
    return "llamacpp" if backend == "llamacpp" else "torch"


# ---------------------------------------------------------------- writing
def build_files(
    version: int,
    skill: Skill,
    head: SafetyHead | None,
    calibration: Calibration | None,
    adapter: dict[str, bytes] | None = None,
    *,
    parent: int | None = None,
    model: str = "",
    metrics: dict | None = None,
    note: str = "",
    canaries: list[Canary] | None = None,
    canary_tolerance: float = DEFAULT_CANARY_TOLERANCE,
) -> dict[str, bytes]:
    """The files of a release (manifest included), in memory."""
    skill = skill.model_copy(update={"version": version})
    files: dict[str, bytes] = {SKILL_FILE: skill.to_bytes()}
    if head is not None:
        files[HEAD_FILE] = head.to_bytes()
    if adapter:
        for name in ADAPTER_FILES:
            files[name] = adapter[name]
    manifest = Manifest(
        version=version,
        parent=parent,
        files=[file_entry(name, data) for name, data in sorted(files.items())],
        model=model,
        calibration=calibration,
        metrics=metrics or {},
        note=note,
        canaries=list(canaries or []),
        canary_tolerance=canary_tolerance,
    )
    files[MANIFEST] = manifest.model_dump_json(indent=1).encode()
    return files


def write_release(folder: Path, files: dict[str, bytes]) -> Release:
    """Write a checked release to ``folder`` atomically (a whole folder or nothing).

    An existing folder of that name is swapped out whole (a re-push of a version).
    """
    check_files(files, str(folder))
    write_folder(Path(folder), files)
    return load_release(folder)


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` as ``folder``, whole or not at all: a synced temporary folder is
    renamed into place (an existing one is swapped out whole)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in files.items():
        write_synced(tmp / name, data)
    sync_dir(tmp)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)
    sync_dir(folder.parent)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_active(root: Path) -> int | None:
    """The version a registry's ``<root>/active`` pointer names (the edge's
    ``state_dir/releases`` and the teacher's ``home/releases`` alike), or None."""
    try:
        return int((Path(root) / "active").read_text().strip())
    except (OSError, ValueError):
        return None


def set_active(root: Path, version: int) -> None:
    """Point ``<root>/active`` at ``version`` atomically (written, fsynced, renamed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / "active.tmp"
    write_synced(tmp, f"{version}\n".encode())
    tmp.replace(root / "active")
    sync_dir(root)


def read_adapter(folder: Path) -> dict[str, bytes]:
    """A PEFT adapter's files (``ADAPTER_FILES``) from ``folder``: an adapter folder, or a
    release that carries one; a ModelError names what is missing."""
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{folder}: not a LoRA adapter (no {', '.join(missing)})")
    return {name: (folder / name).read_bytes() for name in ADAPTER_FILES}


def skill_release(skill: Skill, adapter_dir: Path | None = None, version: int = 0) -> Release:
    """An in-memory release of a bare skill (and adapter): no head, no thresholds.

    What an edge runs with its own skill file (``skill`` in its configuration); the
    policy's confidence rules decide there.
    """
    data = skill.to_bytes()
    manifest = Manifest(
        version=version, files=[file_entry(SKILL_FILE, data)], note="a bare skill (no safety head)"
    )
    return Release(manifest, skill, None, adapter_dir, None)
