"""One release build on the teacher box: from reviewed cases to a gated, saved release.

A build is a straight line::

    cases ─► frozen split (teacher.data.dataset, persisted) + the rest, split per label into
             fit (the LoRA) and calibration (never trained on by the LoRA)
    head  ─► hidden states at the last prompt token ─► logistic head ─► p(unsafe)
             ─► thresholds with a recall guarantee (teacher.release.head_fit)
    frozen split ─► teacher.release.harness on the candidate and on the active release
             ─► teacher.release.gate.compare ─► saved and activated only if it passed

The head and its thresholds come from ``teacher.release.head_fit`` (crossfit by default; the
edges' self-labelled traffic may train the head, never calibrate it).

**A LoRA ships only where it pays** (``release.lora_must_pay``): a candidate with an adapter
is scored on the frozen split beside its twin without it (the same skill, a head fitted and
calibrated on the base model's states); unless the adapter lowers teacher calls per 100 at
no lower system recall, the twin is the candidate the gate judges, and the build says why.

Releases are saved in and activated through ``teacher.release.registry``. It knows
nothing about sockets; the server pushes ``ReleaseRegistry.active``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shared.backend import Backend
from shared.calibration import Calibration
from shared.evaluation import LabeledCase
from shared.policy import AUDIT
from shared.release import (
    ADAPTER_FILES,
    Canary,
    Release,
    build_files,
    read_adapter,
    skill_release,
    write_release,
)
from shared.skill import Skill
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher.release import gate
from teacher.release.harness import CaseResult, HarnessReport, evaluate_release
from teacher.release.head_fit import Splits, fit_and_calibrate, make_splits, prior_head, split_fit
from teacher.release.registry import ReleaseRegistry, eval_key

logger = logging.getLogger(__name__)

GATE_FILE = "gate.json"


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
            "gate": self.verdict.groups,
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
    registry = ReleaseRegistry.of(cfg)
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
        student = Student(backend, skill_release(skill, adapter_dir), max_new, cfg.student.answer)
        prior = prior_head(active, skill, adapter)
        head, calibration, timing = fit_and_calibrate(cfg, student, splits, prior)
        timing["prior"] = f"v{active.version}" if head.info.get("prior") else None
        version = registry.next_number()
        # the candidate's files; saved with its gate metrics and canaries if it passes
        files_with = partial(
            build_files,
            version,
            skill,
            head,
            calibration,
            adapter,
            parent=active.version,
            model=backend.name,
            note=note,
        )
        candidate = write_release(Path(tmp) / f"v{version}", files_with())
        t0 = time.perf_counter()
        student.use(candidate)
        after = evaluate_release(
            student,
            splits.frozen,
            cfg.policy,
            pace,
            progress,
            f"3/3 gate: candidate v{version} on the frozen split",
        )
        if adapter and cfg.release.lora_must_pay:
            twin = _head_only_twin(cfg, student, splits, active, skill, version, backend.name)
            twin_files, twin_head, twin_cal, twin_report = twin(
                Path(tmp), progress, pace, note=note
            )
            paid = _lora_pays(after, twin_report)
            timing["lora"] = {
                "paid": paid,
                "calls_with": after.teacher_calls_per_100,
                "calls_without": twin_report.teacher_calls_per_100,
                "recall_with": after.system_recall,
                "recall_without": twin_report.system_recall,
            }
            if not paid:
                logger.info(
                    "the LoRA does not pay: %.1f teacher calls per 100 with it, %.1f without "
                    "(recall %.3f, %.3f): the head alone is the candidate",
                    after.teacher_calls_per_100,
                    twin_report.teacher_calls_per_100,
                    after.system_recall,
                    twin_report.system_recall,
                )
                files_with, head, calibration, after = twin_files, twin_head, twin_cal, twin_report
                adapter = None
        key = eval_key(cfg, backend, splits.frozen)
        before = registry.cached_eval(active.version, key)
        if before is None or before.escalated is None:  # a cache from before escalations
            # were recorded: the gate's paired test on calls needs them, case by case
            student.use(active)
            before = evaluate_release(
                student,
                splits.frozen,
                cfg.policy,
                pace,
                progress,
                f"3/3 gate: active v{active.version} on the frozen split",
            )
            registry.cache_eval(active.version, key, before)
        timing["gate_eval_s"] = round(time.perf_counter() - t0, 1)
    sites = {c.id: f"site {c.site}" for c in splits.frozen if c.site}
    verdict = gate.compare(
        after,
        before,
        cfg.policy.recall_target,
        cfg.policy.recall_delta,
        sites=sites,
        must_gain=cfg.release.must_gain,
    )
    result = BuildResult(None, verdict, after, before, calibration, timing)
    if not verdict.passed:
        logger.info("release refused: %s", "; ".join(verdict.reasons))
        if not keep_refused:
            return result
    metrics = {
        "frozen": after.summary(),
        "active_on_frozen": before.summary(),
        "gate": verdict.groups,
    }
    canaries = pick_canaries(after, splits.frozen, cfg.release.canaries)
    files = files_with(
        metrics=metrics, canaries=canaries, canary_tolerance=cfg.release.canary_tolerance
    )
    saved = registry.add(files, result.report())
    registry.cache_eval(version, key, after)  # next round, when it is the active one
    result.version, result.path = version, saved.path
    if activate and verdict.passed:
        registry.activate(version)
    return result


def _lora_pays(with_adapter: HarnessReport, without: HarnessReport) -> bool:
    """Fewer teacher calls per 100 with the adapter, at no lower system recall."""
    return (
        with_adapter.teacher_calls_per_100 < without.teacher_calls_per_100 - gate.EPSILON
        and with_adapter.system_recall >= without.system_recall - gate.EPSILON
    )


def _head_only_twin(cfg, student, splits, active, skill, version, model_name):
    """A function building the candidate's twin without its adapter: (files partial, head,
    calibration, its harness report on the frozen split)."""

    def build(tmp: Path, progress: bool, pace: float, note: str):
        twin_student = Student(
            student.backend, skill_release(skill, None), student.max_new_tokens, student.mode
        )
        head, calibration, _ = fit_and_calibrate(
            cfg, twin_student, splits, prior_head(active, skill, None)
        )
        files = partial(
            build_files,
            version,
            skill,
            head,
            calibration,
            None,
            parent=active.version,
            model=model_name,
            note=f"{note}; the head alone: the LoRA did not lower teacher calls",
        )
        twin_student.use(write_release(tmp / f"v{version}-twin", files()))
        report = evaluate_release(
            twin_student,
            splits.frozen,
            cfg.policy,
            pace,
            progress,
            f"3/3 gate: v{version} without its LoRA on the frozen split",
        )
        return files, head, calibration, report

    return build


def pick_canaries(report: HarnessReport, cases: list[LabeledCase], n: int) -> list[Canary]:
    """Up to ``n`` canaries from a harness run: hazards the system caught and safe scenes,
    alternating, in the frozen split's order (the same cases for the same split). A hazard
    caught only by its audit draw is no canary: the draw hashes the case's place in the
    run, an edge that re-judges it draws again, and a release that passes it within its
    certificate would be refused for it."""
    text = {c.id: c.input for c in cases}
    hazards = [
        r
        for r in report.cases
        if r.label and r.caught and r.id in text and set(r.decision.reasons) != {AUDIT}
    ]
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
    student = Student(backend, release, cfg.student.max_new_tokens, cfg.student.answer)
    return evaluate_release(student, cases, cfg.policy, cfg.release.eval_pace_s, progress)


def v0_canaries(
    cfg: TeacherConfig, student: Student, release: Release, frozen: list[LabeledCase]
) -> tuple[list[Canary], float]:
    """Canaries for v0: what it answers on the frozen members, through the same Student and
    policy an edge reruns them with before it activates v0 (a rollback to v0 is checked
    too). Returns them and the seconds the run took."""
    student.use(release)
    t0 = time.perf_counter()
    report = evaluate_release(
        student,
        frozen,
        cfg.policy,
        cfg.release.eval_pace_s,
        True,
        "canaries: v0 on the frozen members",
    )
    return pick_canaries(report, frozen, cfg.release.canaries), round(time.perf_counter() - t0, 1)


def build_default(
    cfg: TeacherConfig,
    backend: Backend,
    cases: list[LabeledCase],
    out: Path,
    adapter_dir: Path | None = None,
):
    """The bundled release v0: the default skill, a head on ``cases``, its thresholds.

    Deterministic for the same cases, weights and seed (``gemma-teacher releases
    build-default`` rewrites ``shared/data/release``). With ``adapter_dir`` (a PEFT
    adapter's files) v0 carries that LoRA and its head reads the adapted model's states.
    """
    from shared.skill import default_skill
    from teacher.data.dataset import frozen_member

    skill = default_skill().model_copy(update={"created_at": 0.0})  # reproducible bytes
    # Never train on a case a teacher home would freeze for its gate: v0 is scored fairly.
    frozen = [c for c in cases if frozen_member(c.input, cfg.train.eval_fraction, cfg.train.seed)]
    kept = [c for c in cases if c not in frozen]
    fit, cal = split_fit(kept, cfg.release.calibration_fraction, cfg.train.seed)
    adapter = read_adapter(adapter_dir) if adapter_dir else None
    student = Student(
        backend, skill_release(skill, adapter_dir), cfg.student.max_new_tokens, cfg.student.answer
    )
    # an adapter given here was trained elsewhere: it never saw the bundled scenes
    splits = Splits(fit, cal, [], adapter_saw_fit=False)
    head, calibration, timing = fit_and_calibrate(cfg, student, splits)
    note = (
        f"bundled default: the default skill{' with a LoRA adapter' if adapter else ''}, a "
        f"{head.kind} safety head fit on {len(fit)} of the bundled labelled scenes, thresholds "
        f"calibrated on {len(cal)} others; the {len(cases) - len(kept)} that teacher homes "
        "freeze for their gate are left out"
    )

    def files_with(canaries: list[Canary]) -> dict[str, bytes]:
        files = build_files(
            0,
            skill,
            head,
            calibration,
            adapter,
            model=backend.name,
            metrics={"head": head.info},
            note=note,
            canaries=canaries,
            canary_tolerance=cfg.release.canary_tolerance,
        )
        manifest = json.loads(files["manifest.json"])
        manifest["created_at"] = 0.0  # reproducible bytes
        files["manifest.json"] = json.dumps(manifest, indent=1).encode()
        return files

    with tempfile.TemporaryDirectory(prefix="gemma-release-") as tmp:
        canaries, timing["canary_eval_s"] = v0_canaries(
            cfg, student, write_release(Path(tmp) / "v0", files_with([])), frozen
        )
    return write_release(out, files_with(canaries)), timing
