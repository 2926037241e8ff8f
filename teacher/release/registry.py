"""The teacher's versioned releases and the pointer to the one edges should run.

    <home>/releases/v<N>/      one ``shared.release`` folder per version (+ gate.json)
    <home>/releases/active     the version the server pushes to every edge
    <home>/releases/evals/     harness reports of releases on a frozen split (a cache)

The active release, when the registry has none, is the bundled default release; an old
home's skill and adapter registries are adopted once as a release
(``teacher.release.migrate``). It knows nothing about sockets or how a release is built;
the server pushes ``ReleaseRegistry.active``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from shared.backend import Backend
from shared.errors import StoreError
from shared.evaluation import LabeledCase
from shared.release import (
    Release,
    build_files,
    default_release,
    load_release,
    model_engine,
    read_active,
    set_active,
    write_release,
)
from shared.teacher_config import TeacherConfig
from teacher.release.harness import HarnessReport
from teacher.release.migrate import old_active

logger = logging.getLogger(__name__)

GATE_FILE = "gate.json"
PUSH_REQUEST = "push-request"


class ReleaseRegistry:
    """``engine``: the student's engine, whose bundled v0 is this home's release 0."""

    def __init__(self, home: Path, engine: str = "torch"):
        self.home = Path(home)
        self.root = self.home / "releases"
        self.engine = engine

    @classmethod
    def of(cls, cfg) -> ReleaseRegistry:
        """The registry of a teacher configuration's home, for its student's engine."""
        return cls(cfg.home, model_engine(cfg.student.backend))

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(
            int(p.name[1:])
            for p in self.root.glob("v*")
            if p.is_dir() and p.name[1:].isdigit() and (p / "manifest.json").is_file()
        )

    def path(self, number: int) -> Path:
        return self.root / f"v{number}"

    def get(self, number: int) -> Release:
        if number == 0:
            return default_release(self.engine)
        if number not in self.versions():
            have = ", ".join(f"v{n}" for n in [0, *self.versions()])
            raise StoreError(f"no release v{number} in {self.root} (have: {have}; v0 is bundled)")
        return load_release(self.path(number))

    def next_number(self) -> int:
        return max(self.versions(), default=0) + 1

    def add(self, files: dict[str, bytes], gate_doc: dict) -> Release:
        """Store a built release under its manifest's version (not active yet)."""
        release = write_release(self.path(_manifest_version(files)), files)
        (release.path / GATE_FILE).write_text(json.dumps(gate_doc, indent=1, sort_keys=True))
        return release

    def active_number(self) -> int | None:
        return read_active(self.root)

    def active(self) -> Release:
        """What the edges should run: the active release, else the bundled default."""
        number = self.active_number()
        return self.get(number) if number is not None else default_release(self.engine)

    def activate(self, number: int) -> Release:
        release = self.get(number)
        set_active(self.root, number)
        return release

    def request_push(self) -> float:
        """Ask the running server to push the active release now to every edge that does not
        run it, without waiting out ``server.push_retry_s`` (a re-push: after fixing what made
        an edge refuse it). Returns the time asked; the server reads it within a second."""
        self.root.mkdir(parents=True, exist_ok=True)
        now = time.time()
        tmp = self.root / f"{PUSH_REQUEST}.tmp"
        tmp.write_text(repr(now))
        tmp.replace(self.root / PUSH_REQUEST)
        return now

    def push_requested_at(self) -> float:
        """When a re-push was last asked for (0.0: never)."""
        try:
            return float((self.root / PUSH_REQUEST).read_text())
        except (OSError, ValueError):
            return 0.0

    def ensure(self) -> Release:
        """The active release, making one active if none is: an old home's active skill
        and adapter (``teacher.release.migrate``) become a release once (no head; one log line),
        else the bundled release v0."""
        if self.active_number() is not None:
            return self.active()
        old = old_active(self.home)
        if old is None:
            return self.activate(0)
        number = self.next_number()
        skill = old.skill or default_release(self.engine).skill
        files = build_files(
            number,
            skill,
            None,
            None,
            old.adapter,
            note=f"migrated from {old.describe()} (gemma-edge < 0.2.0)",
        )
        self.add(files, {"migrated": old.describe()})
        logger.warning(
            "migrated %s of this teacher home into release v%d (no safety head); "
            "edges get it on their next heartbeat",
            old.describe(),
            number,
        )
        return self.activate(number)

    def cached_eval(self, number: int, key: str) -> HarnessReport | None:
        """A release's harness report on the frozen split, if this exact one was scored."""
        path = self.root / "evals" / f"v{number}-{key[:24]}.json"
        if not path.is_file():
            return None
        logger.info("release v%d on the frozen split: as scored before (%s)", number, path)
        return HarnessReport(**json.loads(path.read_text()))

    def cache_eval(self, number: int, key: str, report: HarnessReport) -> None:
        folder = self.root / "evals"
        folder.mkdir(parents=True, exist_ok=True)
        doc = {k: v for k, v in asdict(report).items() if k != "cases"}  # full precision
        (folder / f"v{number}-{key[:24]}.json").write_text(json.dumps(doc))

    def gate_doc(self, number: int) -> dict:
        path = self.path(number) / GATE_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


def eval_key(cfg: TeacherConfig, backend: Backend, cases: list[LabeledCase]) -> str:
    """What a harness score depends on besides the release: cases, policy, budget, model."""
    doc = {
        "cases": [(c.id, c.input, c.safety) for c in cases],
        "policy": cfg.policy.model_dump(mode="json"),
        "max_new_tokens": cfg.student.max_new_tokens,
        "pace": cfg.release.eval_pace_s,
        "model": backend.name,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _manifest_version(files: dict[str, bytes]) -> int:
    return int(json.loads(files["manifest.json"])["version"])
