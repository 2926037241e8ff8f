"""The release registry as the console shows it: each release's manifest, gate and band.

A page lists every release, so it reads only what it shows (``manifest.json``, the skill's
name, ``gate.json``), never the head's or adapter's bytes; a release folder never changes
once written, so what was read is kept until its manifest's modification time changes.
Rolling back goes through ``ReleaseRegistry.activate``, which loads and checks the whole
release first, exactly as ``gemma-teacher releases rollback`` does; a re-push asks the
running server to push the active release now (``ReleaseRegistry.request_push``).

It knows nothing about HTTP, cases or keys.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError, PushRejected, StoreError
from shared.head import HEAD_FILE
from shared.release import ADAPTER_FILES, MANIFEST, SKILL_FILE, Manifest, default_release_dir
from teacher.data.decisions import Band
from teacher.release.registry import ReleaseRegistry

logger = logging.getLogger(__name__)

# the frozen-split numbers a release page shows, in this order (HarnessReport.summary keys)
METRICS = (
    ("teacher_calls_per_100", "calls/100", "{:.1f}"),
    ("system_recall", "system recall", "{:.3f}"),
    ("accuracy", "student acc", "{:.3f}"),
    ("false_alerts_per_100", "false alerts/100", "{:.1f}"),
    ("auc", "head AUC", "{:.3f}"),
    ("n", "cases", "{}"),
    ("hazards", "hazards", "{}"),
)


@dataclass(frozen=True)
class ReleaseInfo:
    version: int
    created_at: float
    parent: int | None
    note: str
    skill: str
    head: bool
    lora: bool
    lower: float | None
    upper: float | None
    guaranteed: bool | None
    gate: dict = field(default_factory=dict)  # gate.json: passed, reasons, candidate, ...
    metrics: dict = field(default_factory=dict)  # its own frozen-split summary

    @property
    def verdict(self) -> str:
        """'passed', 'refused', 'bundled' (v0) or 'not gated' (built without the gate)."""
        if self.version == 0:
            return "bundled"
        if "passed" not in self.gate:
            return "not gated"
        return "passed" if self.gate["passed"] else "refused"

    @property
    def failed_rules(self) -> list[str]:
        return [str(r) for r in self.gate.get("reasons") or []]

    def shown_metrics(self) -> list[tuple[str, str]]:
        out = []
        for key, title, fmt in METRICS:
            value = self.metrics.get(key)
            out.append((title, "-" if value is None else fmt.format(value)))
        return out


class Catalog:
    def __init__(self, registry: ReleaseRegistry):
        self.registry = registry
        self._cache: dict[int, tuple[int, ReleaseInfo]] = {}
        self._lock = threading.Lock()

    def folder(self, version: int) -> Path:
        if version:
            return self.registry.path(version)
        folder = default_release_dir(self.registry.engine)
        return folder if (folder / MANIFEST).is_file() else default_release_dir("torch")

    def versions(self) -> list[int]:
        return [0, *self.registry.versions()]

    def active(self) -> int:
        """The version the server pushes (the bundled v0 when none was made active)."""
        number = self.registry.active_number()
        return 0 if number is None else number

    def info(self, version: int) -> ReleaseInfo:
        folder = self.folder(version)
        try:
            stamp = (folder / MANIFEST).stat().st_mtime_ns
        except OSError as exc:
            raise StoreError(f"no release v{version} in {self.registry.root}") from exc
        with self._lock:
            hit = self._cache.get(version)
        if hit and hit[0] == stamp:
            return hit[1]
        info = self._read(version, folder)
        with self._lock:
            self._cache[version] = (stamp, info)
        return info

    def releases(self) -> list[ReleaseInfo]:
        """Every release, newest first; one that cannot be read is left out, logged."""
        out = []
        for version in reversed(self.versions()):
            try:
                out.append(self.info(version))
            except (OSError, ValueError, StoreError) as exc:
                logger.warning("release v%d cannot be read: %s", version, exc)
        return out

    def bands(self) -> list[Band]:
        """Each release's escalation band (those with thresholds)."""
        return [
            Band(r.version, r.lower, r.upper)
            for r in self.releases()
            if r.lower is not None and r.upper is not None
        ]

    def rollback(self, version: int) -> str:
        """Make ``version`` active after loading and checking it whole; the server pushes it
        to every edge. Returns what is active now, in words."""
        try:
            release = self.registry.activate(version)
        except (ConfigError, PushRejected) as exc:
            raise StoreError(f"release v{version} cannot be made active: {exc}") from exc
        logger.warning("release v%d made active from the console", version)
        return release.describe()

    def repush(self) -> float:
        return self.registry.request_push()

    def _read(self, version: int, folder: Path) -> ReleaseInfo:
        manifest = Manifest.model_validate_json((folder / MANIFEST).read_bytes())
        names = {f.name for f in manifest.files}
        try:
            skill = str(json.loads((folder / SKILL_FILE).read_bytes()).get("name", ""))
        except (OSError, ValueError):
            skill = "?"
        gate = self.registry.gate_doc(version) if version else {}
        metrics = gate.get("candidate") or manifest.metrics.get("frozen") or {}
        cal = manifest.calibration
        return ReleaseInfo(
            version=version,
            created_at=manifest.created_at,
            parent=manifest.parent,
            note=manifest.note,
            skill=skill,
            head=HEAD_FILE in names,
            lora=ADAPTER_FILES[0] in names,
            lower=None if cal is None else cal.lower,
            upper=None if cal is None else cal.upper,
            guaranteed=None if cal is None else cal.guaranteed,
            gate=gate,
            metrics=metrics,
        )
