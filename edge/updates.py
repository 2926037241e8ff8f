"""Verifying and atomically installing releases on an edge.

    <state_dir>/releases/v<N>/          each installed release (``shared.release`` folder)
    <state_dir>/releases/active         the active release version number

A release push is checked whole before anything is written: every payload's size and
SHA-256 against the message, then ``shared.release.check_files`` (the manifest, every
file's size and SHA-256, the skill, the head, the adapter). Files are written to a
temporary folder, fsynced and renamed into place, and only then does the ``active``
pointer move (also by rename). A push that fails any check raises ``PushRejected`` and
leaves the old release active and its files untouched. ``active_release`` reads the
active one back.

At start, ``repair_releases`` makes ``active`` name a complete release again after a
crash in the middle of a swap or a damaged file (see there); it logs what it found.

It knows nothing about sockets or models; the daemon runs what it returns from the next input.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from shared.errors import GemmaEdgeError, PushRejected
from shared.messages import ReleasePush, verify_payloads
from shared.release import (
    Release,
    check_files,
    load_release,
    read_active,
    set_active,
    write_release,
)
from shared.release import sync_dir as _sync_dir

logger = logging.getLogger(__name__)


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
    set_active(root, msg.version)
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
    or none is complete (the edge then runs the bundled default)."""
    root = Path(state_dir) / "releases"
    if not (root / "active").is_file():
        return None
    version = read_active(root) or 0
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
            logger.error(
                "releases/active names v%d, whose folder was %s: restored it from %s",
                version,
                found,
                spare.name,
            )
            return load_release(folder)
    others = sorted(
        (v, p)
        for p in root.glob("v*")
        if p.is_dir() and (v := _version_of(p)) not in (None, version)
    )
    for other, path in reversed(others):
        candidate = _complete(path)
        if candidate is not None:
            set_active(root, other)
            logger.error(
                "releases/active names v%d, whose folder is %s: running v%d, the "
                "newest complete release, instead",
                version,
                found,
                other,
            )
            return candidate
    logger.error(
        "releases/active names v%d, whose folder is %s, and no other release here "
        "is complete: running the bundled default",
        version,
        found,
    )
    (root / "active").unlink(missing_ok=True)
    return None


def active_release(state_dir: Path) -> Release | None:
    """The installed active release (repaired first, ``repair_releases``), or None."""
    release = repair_releases(state_dir)
    old = [name for name in ("skills", "adapters") if (Path(state_dir) / name).is_dir()]
    if old:
        logger.warning(
            "%s in %s hold single skill or adapter pushes of gemma-edge < 0.2.0; "
            "ignored: the teacher pushes the whole release to run",
            " and ".join(old),
            state_dir,
        )
    return release
