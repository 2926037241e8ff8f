"""Releases on the teacher box: build one from reviewed cases, gate it, version it, push it.

    <home>/releases/v<N>/      one ``shared.release`` folder per version (+ gate.json)
    <home>/releases/active     the version the server pushes to every edge

A build is a straight line::

    cases ─► frozen split (teacher.dataset, persisted) + the rest, split per label into
             fit (the LoRA) and calibration (never trained on by the LoRA)
    head  ─► hidden states at the last prompt token ─► logistic head ─► p(unsafe)
             ─► thresholds with a recall guarantee (teacher.head_fit)
    frozen split ─► teacher.harness on the candidate and on the active release
             ─► teacher.gate.compare ─► saved and activated only if it passed

The head and its thresholds come from ``teacher.head_fit`` (crossfit by default; the
edges' self-labelled traffic may train the head, never calibrate it).

The active release, when the registry has none, is the bundled default release; an old
home's skill and adapter registries are adopted once as a release (``teacher.migrate``).
It knows nothing about sockets; the server pushes ``ReleaseRegistry.active``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.backend import Backend
from shared.calibration import Calibration
from shared.errors import StoreError
from shared.evaluation import LabeledCase
from shared.release import (
    ADAPTER_FILES,
    Canary,
    Release,
    build_files,
    default_release,
    load_release,
    read_active,
    set_active,
    skill_release,
    write_release,
)
from shared.skill import Skill
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher import gate
from teacher.harness import CaseResult, HarnessReport, evaluate_release
from teacher.head_fit import Splits, fit_and_calibrate, make_splits, prior_head, split_fit
from teacher.migrate import old_active

logger = logging.getLogger(__name__)

GATE_FILE = "gate.json"


# ---------------------------------------------------------------- the registry
class ReleaseRegistry:
    def __init__(self, home: Path):
        self.home = Path(home)
        self.root = self.home / "releases"

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
            return default_release()
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
        return self.get(number) if number is not None else default_release()

    def activate(self, number: int) -> Release:
        release = self.get(number)
        set_active(self.root, number)
        return release

    def ensure(self) -> Release:
        """The active release, making one active if none is: an old home's active skill
        and adapter (``teacher.migrate``) become a release once (no head; one log line),
        else the bundled release v0."""
        if self.active_number() is not None:
            return self.active()
        old = old_active(self.home)
        if old is None:
            return self.activate(0)
        number = self.next_number()
        skill = old.skill or default_release().skill
        files = build_files(number, skill, None, None, old.adapter,
                            note=f"migrated from {old.describe()} (gemma-edge < 0.2.0)")  # fmt: skip
        self.add(files, {"migrated": old.describe()})
        logger.warning("migrated %s of this teacher home into release v%d (no safety head); "
                       "edges get it on their next heartbeat", old.describe(), number)  # fmt: skip
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


def _eval_key(cfg: TeacherConfig, backend: Backend, cases: list[LabeledCase]) -> str:
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


# ---------------------------------------------------------------- build + gate
@dataclass
class BuildResult:
    version: int | None  # None: refused by the gate
    verdict: gate.GateVerdict
    candidate: HarnessReport
    active: HarnessReport
    calibration: Calibration
    timing: dict
    path: Path | None = None

    def report(self) -> dict:
        return {
            "version": self.version,
            "passed": self.verdict.passed,
            "reasons": self.verdict.reasons,
            "candidate": self.candidate.summary(),
            "active": self.active.summary(),
            "calibration": self.calibration.model_dump(),
            "timing": self.timing,
        }


def build_release(
    cfg: TeacherConfig,
    backend: Backend,
    cases: list[LabeledCase],
    *,
    skill: Skill | None = None,
    adapter: dict[str, bytes] | None = None,
    activate: bool = True,
    splits: Splits | None = None,
    note: str = "",
    progress: bool = True,
    keep_refused: bool = False,
) -> BuildResult:
    """Build a release (the active skill unless ``skill``; ``adapter``: PEFT files), gate
    it against the active release on the frozen split, save and activate it if it passed.

    ``keep_refused`` stores a refused release too (never active), to inspect or score it.
    """
    registry = ReleaseRegistry(cfg.home)
    active = registry.ensure()
    skill = skill or active.skill
    splits = splits or make_splits(cfg, cases, skill)
    max_new = cfg.student.max_new_tokens
    pace = cfg.release.eval_pace_s
    with tempfile.TemporaryDirectory(prefix="gemma-release-") as tmp:
        adapter_dir = None
        if adapter:
            adapter_dir = Path(tmp) / "adapter"
            adapter_dir.mkdir()
            for name in ADAPTER_FILES:
                (adapter_dir / name).write_bytes(adapter[name])
        student = Student(backend, skill_release(skill, adapter_dir), max_new)
        prior = prior_head(active, skill, adapter)
        head, calibration, timing = fit_and_calibrate(cfg, student, splits, prior)
        timing["prior"] = f"v{active.version}" if head.info.get("prior") else None
        version = registry.next_number()
        files = build_files(version, skill, head, calibration, adapter, parent=active.version,
                            model=backend.name, note=note)  # fmt: skip
        candidate = write_release(Path(tmp) / f"v{version}", files)
        t0 = time.perf_counter()
        student.use(candidate)
        after = evaluate_release(student, splits.frozen, cfg.policy, pace, progress,
                                 f"3/3 gate: candidate v{version} on the frozen split")  # fmt: skip
        key = _eval_key(cfg, backend, splits.frozen)
        before = registry.cached_eval(active.version, key)
        if before is None:
            student.use(active)
            before = evaluate_release(student, splits.frozen, cfg.policy, pace, progress,
                                      f"3/3 gate: active v{active.version} on the frozen split")  # fmt: skip
            registry.cache_eval(active.version, key, before)
        timing["gate_eval_s"] = round(time.perf_counter() - t0, 1)
    verdict = gate.compare(after, before, cfg.policy.recall_target, cfg.policy.recall_delta)
    result = BuildResult(None, verdict, after, before, calibration, timing)
    if not verdict.passed:
        logger.info("release refused: %s", "; ".join(verdict.reasons))
        if not keep_refused:
            return result
    metrics = {"frozen": after.summary(), "active_on_frozen": before.summary()}
    canaries = pick_canaries(after, splits.frozen, cfg.release.canaries)
    files = build_files(version, skill, head, calibration, adapter, parent=active.version,
                        model=backend.name, metrics=metrics, note=note, canaries=canaries,
                        canary_tolerance=cfg.release.canary_tolerance)  # fmt: skip
    saved = registry.add(files, result.report())
    registry.cache_eval(version, key, after)  # next round, when it is the active one
    result.version, result.path = version, saved.path
    if activate and verdict.passed:
        registry.activate(version)
    return result


def pick_canaries(report: HarnessReport, cases: list[LabeledCase], n: int) -> list[Canary]:
    """Up to ``n`` canaries from a harness run: hazards the system caught and safe scenes,
    alternating, in the frozen split's order (the same cases for the same split)."""
    text = {c.id: c.input for c in cases}
    hazards = [r for r in report.cases if r.label and r.caught and r.id in text]
    safe = [r for r in report.cases if not r.label and r.id in text]
    picked: list[CaseResult] = []
    while len(picked) < n and (hazards or safe):
        for pool in (hazards, safe):
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    return [
        Canary(
            id=r.id[:128],
            input=text[r.id][:4096],
            unsafe=r.label,
            p_unsafe=r.answer.p_unsafe,
            decision=r.decision.outcome,
        )
        for r in picked
        if text[r.id]
    ]


def evaluate(
    cfg: TeacherConfig,
    backend: Backend,
    release: Release,
    cases: list[LabeledCase],
    progress: bool = True,
) -> HarnessReport:
    """``release`` on ``cases`` through the harness (``gemma-teacher eval``)."""
    student = Student(backend, release, cfg.student.max_new_tokens)
    return evaluate_release(student, cases, cfg.policy, cfg.release.eval_pace_s, progress)


def v0_canaries(
    cfg: TeacherConfig, student: Student, release: Release, frozen: list[LabeledCase]
) -> tuple[list[Canary], float]:
    """Canaries for v0: what it answers on the frozen members, through the same Student and
    policy an edge reruns them with before it activates v0 (a rollback to v0 is checked
    too). Returns them and the seconds the run took."""
    student.use(release)
    t0 = time.perf_counter()
    report = evaluate_release(student, frozen, cfg.policy, cfg.release.eval_pace_s, True,
                              "canaries: v0 on the frozen members")  # fmt: skip
    return pick_canaries(report, frozen, cfg.release.canaries), round(time.perf_counter() - t0, 1)


def build_default(cfg: TeacherConfig, backend: Backend, cases: list[LabeledCase], out: Path):
    """The bundled release v0: the default skill, a head on ``cases``, its thresholds.

    Deterministic for the same cases, weights and seed (``gemma-teacher releases
    build-default`` rewrites ``shared/data/release``).
    """
    from shared.skill import default_skill
    from teacher.dataset import frozen_member

    skill = default_skill().model_copy(update={"created_at": 0.0})  # reproducible bytes
    # Never train on a case a teacher home would freeze for its gate: v0 is scored fairly.
    frozen = [c for c in cases if frozen_member(c.input, cfg.train.eval_fraction, cfg.train.seed)]
    kept = [c for c in cases if c not in frozen]
    fit, cal = split_fit(kept, cfg.release.calibration_fraction, cfg.train.seed)
    student = Student(backend, skill_release(skill), cfg.student.max_new_tokens)
    head, calibration, timing = fit_and_calibrate(cfg, student, Splits(fit, cal, []))
    note = (
        f"bundled default: the default skill, a {head.kind} safety head fit on {len(fit)} of "
        f"the bundled labelled scenes, thresholds calibrated on {len(cal)} others; the "
        f"{len(cases) - len(kept)} that teacher homes freeze for their gate are left out"
    )

    def files_with(canaries: list[Canary]) -> dict[str, bytes]:
        files = build_files(0, skill, head, calibration, model=backend.name,
                            metrics={"head": head.info}, note=note, canaries=canaries,
                            canary_tolerance=cfg.release.canary_tolerance)  # fmt: skip
        manifest = json.loads(files["manifest.json"])
        manifest["created_at"] = 0.0  # reproducible bytes
        files["manifest.json"] = json.dumps(manifest, indent=1).encode()
        return files

    with tempfile.TemporaryDirectory(prefix="gemma-release-") as tmp:
        canaries, timing["canary_eval_s"] = v0_canaries(
            cfg, student, write_release(Path(tmp) / "v0", files_with([])), frozen
        )
    return write_release(out, files_with(canaries)), timing
