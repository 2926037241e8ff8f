"""Verifying and atomically installing releases (and legacy skills and adapters) on an edge.

    <state_dir>/releases/v<N>/          each installed release (``shared.release`` folder)
    <state_dir>/releases/active         the active release version number
    <state_dir>/skills/v<N>.json        each installed skill version (canonical JSON)
    <state_dir>/skills/active           the active skill version number
    <state_dir>/adapters/v<N>/          each installed adapter (PEFT: adapter_config.json +
                                        adapter_model.safetensors)
    <state_dir>/adapters/active         the active adapter version number

A push is checked before anything is written: every payload's size and SHA-256
against the message, then its format (the skill parses; the adapter has its config
as a JSON object and a safetensors file that ``safetensors`` can open). Files are
written to a temporary name, fsynced and renamed into place, and only then does the
``active`` pointer move (also by rename). A push that fails any check raises
``PushRejected`` and leaves the old version active and its files untouched.

A release push is checked whole (``shared.release.check_files``: the manifest, every
file's size and SHA-256, the skill, the head, the adapter) before its folder is written;
``active_release`` reads the active one back, or, on an edge that only ever got
legacy skill and adapter pushes, reads those as a release (no head).

At start, ``repair_releases`` makes ``active`` name a complete release again after a
crash in the middle of a swap or a damaged file (see there); it logs what it found.

It knows nothing about sockets or models; the daemon hot-reloads from what it returns.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from shared.errors import ConfigError, GemmaEdgeError, PushRejected
from shared.messages import AdapterPush, ReleasePush, SkillPush, verify_payloads
from shared.release import (
    Release,
    check_files,
    load_release,
    skill_release,
    write_folder,
    write_release,
)
from shared.release import sync_dir as _sync_dir
from shared.release import write_synced as _write_synced
from shared.skill import Skill, skill_from_bytes

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _set_active(root: Path, version: int) -> None:
    tmp = root / "active.tmp"
    _write_synced(tmp, f"{version}\n".encode())
    tmp.replace(root / "active")
    _sync_dir(root)


def _active(root: Path) -> int:
    try:
        return int((root / "active").read_text().strip())
    except (OSError, ValueError):
        return 0


def installed_versions(state_dir: Path) -> tuple[int, int]:
    """(skill, adapter) versions the active pointers name; 0 where nothing was pushed."""
    root = Path(state_dir)
    return _active(root / "skills"), _active(root / "adapters")


# ---------------------------------------------------------------- releases
def install_release(
    state_dir: Path,
    msg: ReleasePush,
    payloads: list[bytes],
    prepare: Callable[[Release], None] | None = None,
) -> Release:
    """Verify the whole release, write ``releases/v<N>/`` atomically, make it active.

    ``prepare`` (the daemon's: load the adapter, or build the Ollama model) runs before the
    ``active`` pointer moves; if it raises, the push is refused with its reason and the old
    release stays active."""
    reason = verify_payloads(msg, payloads)
    if reason:
        raise PushRejected(f"release v{msg.version}: {reason}")
    files = {entry.name: data for entry, data in zip(msg.files, payloads, strict=True)}
    manifest = check_files(files, "release push")
    if manifest.version != msg.version:
        raise PushRejected(f"release push v{msg.version} carries a manifest of v{manifest.version}")
    root = Path(state_dir) / "releases"
    folder = root / f"v{msg.version}"
    new = not folder.exists()
    release = write_release(folder, files)
    if prepare is not None:
        try:
            prepare(release)
        except GemmaEdgeError as exc:
            if new:  # nothing of a refused release stays behind (a re-push keeps its folder)
                shutil.rmtree(folder, ignore_errors=True)
            raise PushRejected(f"release v{msg.version} cannot run here: {exc}") from exc
    _set_active(root, msg.version)
    logger.info("installed %s", release.describe())
    return release


def _complete(folder: Path) -> Release | None:
    """The release in ``folder`` if it is whole and every file checks out, else None."""
    try:
        return load_release(folder)
    except (GemmaEdgeError, OSError) as exc:
        logger.debug("%s is not a complete release: %s", folder, exc)
        return None


def _version_of(folder: Path) -> int | None:
    name = folder.name.lstrip(".").split(".")[0]
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else None


def repair_releases(state_dir: Path) -> Release | None:
    """Make ``releases/active`` name a complete release, and return that release.

    A crash in the middle of a swap (``write_folder``) can leave the active folder renamed
    to ``.v<N>.old`` or its replacement at ``.v<N>.tmp``; a disk can damage a file. The
    active version's folder is used when it checks out; else a whole ``.v<N>.old`` /
    ``.v<N>.tmp`` of that version is put back; else the newest complete release becomes
    active. One log line says what was found. None: no release was ever activated here,
    or none is complete (the edge then runs legacy pushes or the bundled default)."""
    root = Path(state_dir) / "releases"
    if not (root / "active").is_file():
        return None
    version = _active(root)
    folder = root / f"v{version}"
    release = _complete(folder)
    if release is not None:
        return release
    found = "missing" if not folder.exists() else "damaged"
    for spare in (root / f".v{version}.old", root / f".v{version}.tmp"):
        candidate = _complete(spare) if spare.is_dir() else None
        if candidate is not None and candidate.version == version:
            if folder.exists():
                shutil.rmtree(folder.with_name(f".{folder.name}.bad"), ignore_errors=True)
                folder.rename(folder.with_name(f".{folder.name}.bad"))
            spare.rename(folder)
            _sync_dir(root)
            logger.error("releases/active names v%d, whose folder was %s: restored it from %s",
                         version, found, spare.name)  # fmt: skip
            return load_release(folder)
    others = sorted(
        (v, p)
        for p in root.glob("v*")
        if p.is_dir() and (v := _version_of(p)) not in (None, version)
    )
    for other, path in reversed(others):
        candidate = _complete(path)
        if candidate is not None:
            _set_active(root, other)
            logger.error("releases/active names v%d, whose folder is %s: running v%d, the "
                         "newest complete release, instead", version, found, other)  # fmt: skip
            return candidate
    logger.error("releases/active names v%d, whose folder is %s, and no other release here "
                 "is complete: running the bundled default", version, found)  # fmt: skip
    (root / "active").unlink(missing_ok=True)
    return None


def active_release(state_dir: Path) -> Release | None:
    """The installed active release (repaired first, ``repair_releases``); else legacy
    pushes read as one; else None."""
    release = repair_releases(state_dir)
    if release is not None:
        return release
    skill = active_skill(state_dir)
    adapter = active_adapter(state_dir)
    if skill is None and adapter is None:
        return None
    from shared.skill import default_skill

    return skill_release(skill[1] if skill else default_skill(), adapter[1] if adapter else None)


# ---------------------------------------------------------------- skills
def check_skill(msg: SkillPush, payloads: list[bytes]) -> Skill:
    """The pushed skill if its hash and format check out; else PushRejected."""
    reason = verify_payloads(msg, payloads)
    if reason:
        raise PushRejected(f"skill v{msg.version}: {reason}")
    try:
        skill = skill_from_bytes(payloads[0], f"skill push v{msg.version}")
    except ConfigError as exc:
        raise PushRejected(f"skill v{msg.version} does not parse: {exc}") from None
    # The teacher's registry number is the version; a file that says otherwise is renumbered
    # so that what the edge reports in heartbeats is what the teacher pushed.
    return (
        skill if skill.version == msg.version else skill.model_copy(update={"version": msg.version})
    )


def install_skill(state_dir: Path, msg: SkillPush, payloads: list[bytes]) -> Skill:
    """Verify, write ``skills/v<N>.json`` atomically and make it active."""
    skill = check_skill(msg, payloads)
    root = Path(state_dir) / "skills"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".v{msg.version}.json.tmp"
    _write_synced(tmp, payloads[0])
    tmp.replace(root / f"v{msg.version}.json")
    _set_active(root, msg.version)
    logger.info("installed skill v%s (%s)", msg.version, msg.file.sha256[:12])
    return skill


def active_skill(state_dir: Path) -> tuple[int, Skill] | None:
    """The installed active skill version and the skill, or None when none was pushed."""
    root = Path(state_dir) / "skills"
    version = _active(root)
    if not version:
        return None
    data = (root / f"v{version}.json").read_bytes()
    return version, skill_from_bytes(data, str(root / f"v{version}.json"))


# ---------------------------------------------------------------- adapters
def check_adapter(msg: AdapterPush, payloads: list[bytes]) -> None:
    """PushRejected unless hashes match and the files make a loadable PEFT adapter."""
    reason = verify_payloads(msg, payloads)
    if reason:
        raise PushRejected(f"adapter v{msg.version}: {reason}")
    files = {entry.name: data for entry, data in zip(msg.files, payloads, strict=True)}
    missing = [name for name in ADAPTER_FILES if name not in files]
    if missing:
        raise PushRejected(f"adapter v{msg.version} lacks {', '.join(missing)}")
    try:
        config = json.loads(files["adapter_config.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PushRejected(
            f"adapter v{msg.version}: adapter_config.json is not JSON: {exc}"
        ) from None
    if not isinstance(config, dict):
        raise PushRejected(f"adapter v{msg.version}: adapter_config.json is not an object")
    _check_safetensors(msg.version, files["adapter_model.safetensors"])


def _check_safetensors(version: int, data: bytes) -> None:
    from safetensors import SafetensorError, safe_open

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            with safe_open(tmp.name, framework="numpy") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise PushRejected(
                f"adapter v{version}: adapter_model.safetensors does not open: {exc}"
            ) from None
    if not keys:
        raise PushRejected(f"adapter v{version}: adapter_model.safetensors holds no tensors")


def install_adapter(state_dir: Path, msg: AdapterPush, payloads: list[bytes]) -> Path:
    """Verify, write ``adapters/v<N>/`` atomically and make it active; returns the folder."""
    check_adapter(msg, payloads)
    root = Path(state_dir) / "adapters"
    final = root / f"v{msg.version}"
    # A re-push of a version we had (e.g. a rollback) is swapped in whole.
    write_folder(final, {e.name: d for e, d in zip(msg.files, payloads, strict=True)})
    _set_active(root, msg.version)
    logger.info("installed adapter v%s in %s", msg.version, final)
    return final


def active_adapter(state_dir: Path) -> tuple[int, Path] | None:
    """The installed active adapter version and its folder, or None when none was pushed."""
    root = Path(state_dir) / "adapters"
    version = _active(root)
    if not version or not (root / f"v{version}").is_dir():
        return None
    return version, root / f"v{version}"
