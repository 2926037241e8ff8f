"""Releases on the teacher box: build one from reviewed cases, gate it, version it, push it.

    <home>/releases/v<N>/      one ``shared.release`` folder per version (+ gate.json)
    <home>/releases/active     the version the server pushes to every edge

A build is a straight line::

    cases ─► frozen split (teacher.dataset, persisted) + the rest, split per label into
             fit (the LoRA) and calibration (never trained on by the LoRA)
    head  ─► hidden states at the last prompt token, from the release's own prompt and
             adapter through ``shared.student.Student`` ─► logistic head (shared.head)
             ─► p(unsafe) ─► thresholds with a recall guarantee (shared.calibration)
    frozen split ─► teacher.harness on the candidate and on the active release
             ─► teacher.gate.compare ─► saved and activated only if it passed

The head and its thresholds come from one of two recipes (``release.calibration``):

- ``crossfit`` (default): every reviewed case (without a LoRA: fit and calibration
  split; with one: the calibration split, which the LoRA never saw) both trains and
  calibrates. ``release.folds`` heads are fitted, each with one fold (a seeded hash of
  the text) left out, and score that fold; Learn-then-Test certifies the thresholds on
  those out-of-fold scores; the release ships the average of the fold heads (one linear
  head). With a few hundred reviews this doubles both the head's cases and the
  calibration's, and the calibration's unsafe count decides how many misses the recall
  bound tolerates (none under 93 at 0.95). The guarantee is then the cross-conformal
  one (Vovk 2015; Barber, Candes, Ramdas, Tibshirani 2021): each score is honest for
  the head that made it, and the shipped average is close to each of them, not identical;
  the gate re-scores the shipped release on the frozen split, and the per-round report
  measures system recall on fresh inputs.
- ``split``: one head on the fit split, thresholds on the calibration split: the exact
  finite-sample guarantee for the shipped head, on about half the cases.

Either way the head may also train on the edges' own traffic (``teacher.traffic``:
inputs an edge alerted on or passed by itself, labelled with what it did), never scored,
never calibrated on, never in the frozen split.

The active release, when the registry has none, is what edges run without one: the
skill and adapter registries' active versions read as a release (legacy), else the
bundled default release. It knows nothing about sockets; the server pushes
``ReleaseRegistry.active``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.policy import find_keywords
from shared.backend import Backend
from shared.calibration import Calibration, calibrate, calibrate_policy
from shared.config import TeacherConfig
from shared.errors import StoreError, TrainingError
from shared.evaluation import LabeledCase
from shared.head import (
    SafetyHead,
    auc,
    average_heads,
    default_layers,
    fit_head,
    verdict_logodds,
)
from shared.release import (
    ADAPTER_FILES,
    Release,
    build_files,
    default_release,
    load_release,
    skill_release,
    write_release,
)
from shared.skill import Skill
from shared.student import Student
from teacher import gate
from teacher.dataset import case_key
from teacher.harness import HarnessReport, evaluate_release

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
        try:
            return int((self.root / "active").read_text().strip())
        except (OSError, ValueError):
            return None

    def active(self) -> Release:
        """What the edges should run: the active release, else legacy, else the default."""
        number = self.active_number()
        if number is not None:
            return self.get(number)
        legacy = legacy_release(self.home)
        return legacy if legacy is not None else default_release()

    def activate(self, number: int) -> Release:
        release = self.get(number)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "active.tmp"
        tmp.write_text(f"{number}\n")
        tmp.replace(self.root / "active")
        return release

    def ensure(self) -> Release:
        """From now on releases decide what edges run (the server pushes only them).

        A home without an active release adopts what its edges run now: the legacy
        skill and adapter registries' active versions as a new release (no head), or the
        bundled release v0.
        """
        if self.active_number() is not None:
            return self.active()
        legacy = legacy_release(self.home)
        if legacy is None:
            return self.activate(0)
        adapter = None
        if legacy.adapter_dir is not None:
            adapter = {name: (legacy.adapter_dir / name).read_bytes() for name in ADAPTER_FILES}
        number = self.next_number()
        files = build_files(number, legacy.skill, None, None, adapter,
                            note="adopted from the skill and adapter registries")  # fmt: skip
        self.add(files, {"adopted": True})
        logger.warning("adopted the active skill and adapter as release v%d", number)
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


def legacy_release(home: Path) -> Release | None:
    """The skill and adapter registries' active versions read as one release (no head)."""
    from teacher.registry import Registry
    from teacher.upskill import current_skill

    skills, adapters = Registry(home, "skills"), Registry(home, "adapters")
    if skills.active() is None and adapters.active() is None:
        return None
    adapter = adapters.active()
    return skill_release(current_skill(skills), adapter.path if adapter else None)


# ---------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    fit: list[LabeledCase]  # trains the head (and the LoRA)
    calibration: list[LabeledCase]  # chooses the thresholds; never trained on by the LoRA
    frozen: list[LabeledCase]  # the gate's split (persisted by teacher.dataset)
    traffic: list[LabeledCase] = field(default_factory=list)  # self-labelled: head only


def make_splits(
    cfg: TeacherConfig,
    cases: list[LabeledCase],
    skill: Skill,
    traffic: list[LabeledCase] = (),
) -> Splits:
    """Redact, dedupe and split (see the module docstring); ``traffic``: the edges'
    self-labelled inputs (``teacher.traffic``), minus any input with a real label."""
    from teacher.dataset import build_dataset
    from teacher.traffic import unlabelled_only

    dataset = build_dataset(
        cases, cfg.home, skill.instructions, cfg.train.eval_fraction, cfg.train.seed
    )
    frozen = [e.labeled() for e in dataset.eval]
    if not frozen:
        raise TrainingError("the frozen evaluation split is empty: nothing to gate on")
    rest = [e.labeled() for e in dataset.train if e.origin != "generic"]
    fit, cal = split_fit(rest, cfg.release.calibration_fraction, cfg.train.seed)
    labelled = [*cases, *frozen, *rest]  # the redacted texts and the raw ones
    return Splits(fit, cal, frozen, unlabelled_only(list(traffic), labelled))


def split_fit(
    cases: list[LabeledCase], calibration_fraction: float, seed: int
) -> tuple[list[LabeledCase], list[LabeledCase]]:
    """(fit, calibration), per label, by a seeded hash of the case's text (stable as cases
    come, and the same in every run)."""
    fit: list[LabeledCase] = []
    cal: list[LabeledCase] = []
    for label in (True, False):
        group = sorted(
            (c for c in cases if c.safety is label),
            key=lambda c: hashlib.sha256(f"{seed}:cal:{case_key(c.input)}".encode()).hexdigest(),
        )
        cut = round(len(group) * calibration_fraction)
        cal += group[:cut]
        fit += group[cut:]
    for name, part in (("fit", fit), ("calibration", cal)):
        if len({c.safety for c in part}) < 2:
            raise TrainingError(
                f"the {name} split has {len(part)} case(s) without both verdicts: "
                "review more unsafe and safe cases first"
            )
    return fit, cal


# ---------------------------------------------------------------- head + thresholds
def head_kind(backend: Backend) -> tuple[str, tuple[int, ...]]:
    """``hidden`` (with the default layers) where the backend gives hidden states."""
    config = getattr(getattr(backend, "model", None), "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if layers:
        return "hidden", default_layers(int(layers))
    return "verdict", ()


def features(
    student: Student, cases: list[LabeledCase], kind: str, layers: tuple[int, ...], desc: str
) -> np.ndarray:
    """The head's inputs for ``cases``, from the release's own prompt and adapter.

    ``hidden``: the request ``Student`` builds, run for its prompt only (the features
    come from the prefill an edge runs before it decodes). ``verdict``: a full answer.
    """
    from dataclasses import replace

    rows = []
    for case in tqdm(cases, desc=desc, unit="case", leave=False):
        request = student.request(case.input)
        if kind == "hidden":
            gen = student.backend.generate(replace(request, max_new_tokens=0, hidden_layers=layers))
            rows.append(gen.hidden)
        else:
            gen = student.backend.generate(request)
            value = verdict_logodds(gen.text, gen.logprobs)
            rows.append([0.0 if value is None else value])
    return np.asarray(rows, dtype=np.float64)


def prior_head(
    parent: Release, skill: Skill, adapter: dict[str, bytes] | None
) -> SafetyHead | None:
    """The parent's head when a head for (skill, adapter) reads the same features: the same
    prompt prefix and the same adapter weights (or none). Else None: fit from scratch."""
    if parent.head is None or parent.skill.prompt_prefix() != skill.prompt_prefix():
        return None
    if parent.adapter_dir is None or not adapter:
        return parent.head if parent.adapter_dir is None and not adapter else None
    same = all((parent.adapter_dir / name).read_bytes() == adapter[name] for name in ADAPTER_FILES)
    return parent.head if same else None


def fold_of(case: LabeledCase, folds: int, seed: int) -> int:
    """The crossfit fold of a case: a seeded hash of its text (stable as cases come)."""
    digest = hashlib.sha256(f"{seed}:fold:{case_key(case.input)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def _fit(cfg: TeacherConfig, x: np.ndarray, labels: list[bool], kind: str,
         layers: tuple[int, ...], prior: SafetyHead | None) -> SafetyHead:  # fmt: skip
    """One head: pulled toward ``prior`` when it reads the same features, else from 0."""
    usable = (
        prior is not None
        and cfg.release.prior_l2 > 0
        and prior.kind == kind
        and tuple(prior.layers) == tuple(layers)
        and prior.dim == x.shape[1]
    )
    if usable:
        return fit_head(x, labels, kind=kind, layers=layers, l2=cfg.release.prior_l2,
                        prior=prior)  # fmt: skip
    return fit_head(x, labels, kind=kind, layers=layers, l2=cfg.release.head_l2)


def crossfit(
    cfg: TeacherConfig, x: np.ndarray, cases: list[LabeledCase], kind: str,
    layers: tuple[int, ...], prior: SafetyHead | None = None,
    extra: tuple[np.ndarray, list[bool]] | None = None,
) -> tuple[SafetyHead, np.ndarray]:  # fmt: skip
    """(the average of the fold heads, every case's out-of-fold p(unsafe)).

    Fold k's head is fitted on the other folds and scores fold k, so every score comes
    from a head that never saw the case; the thresholds are certified on those scores.
    ``extra`` (features, labels): self-labelled traffic, in every fold's training, never
    scored.
    """
    x_extra, y_extra = extra if extra is not None else (np.zeros((0, x.shape[1])), [])
    k = cfg.release.folds
    fold = np.array([fold_of(c, k, cfg.train.seed) for c in cases])
    labels = np.array([c.safety for c in cases])
    scores = np.zeros(len(cases))
    heads = []
    for f in range(k):
        out = fold == f
        if not out.any():
            continue
        train = ~out
        if len(set(labels[train].tolist())) < 2:
            raise TrainingError(
                f"crossfit fold {f} leaves {int(train.sum())} case(s) without both verdicts: "
                "review more unsafe and safe cases first"
            )
        head = _fit(cfg, np.vstack([x[train], x_extra]), labels[train].tolist() + list(y_extra),
                    kind, layers, prior)  # fmt: skip
        scores[out] = head.p_unsafe_many(x[out])
        heads.append(head)
    info = {"n": len(cases), "unsafe": int(labels.sum()), "l2": heads[0].info["l2"],
            "folds": len(heads), "oof_auc": round(auc(scores, labels), 4)}  # fmt: skip
    if len(y_extra):
        info["self_labelled"] = len(y_extra)
    if heads[0].info.get("prior"):
        info["prior"] = True
    return average_heads(heads, info), scores


def fit_and_calibrate(
    cfg: TeacherConfig, student: Student, splits: Splits, prior: SafetyHead | None = None
) -> tuple[SafetyHead, Calibration, dict]:
    """The head and its certified thresholds (``release.calibration``, see the module
    docstring); the head is pulled toward ``prior`` (the running release's head) when
    given and ``release.prior_l2`` > 0."""
    kind, layers = head_kind(student.backend)
    t0 = time.perf_counter()
    mode = cfg.release.calibration
    extra = None
    if splits.traffic:
        x_extra = features(student, splits.traffic, kind, layers,
                           "head features (edge traffic, self-labelled)")  # fmt: skip
        extra = (x_extra, [c.safety for c in splits.traffic])
    if mode == "crossfit":
        # A LoRA trained on the fit split would flatter its cases' out-of-fold scores:
        # then only the cases it never saw (the calibration split) train and calibrate.
        adapter = student.release.adapter_dir is not None
        cal_cases = splits.calibration if adapter else splits.fit + splits.calibration
        x = features(student, cal_cases, kind, layers, "1/2 head features (reviewed cases)")
        t_features = time.perf_counter() - t0
        head, p_cal = crossfit(cfg, x, cal_cases, kind, layers, prior, extra)
        fit_cases = len(cal_cases)
        t_fit = time.perf_counter() - t0 - t_features
    else:
        x_fit = features(student, splits.fit, kind, layers, "1/3 head features (fit split)")
        t_features = time.perf_counter() - t0
        y_fit = [c.safety for c in splits.fit]
        if extra is not None:
            x_fit, y_fit = np.vstack([x_fit, extra[0]]), y_fit + extra[1]
        head = _fit(cfg, x_fit, y_fit, kind, layers, prior)
        if extra is not None:
            head.info["self_labelled"] = len(extra[1])
        fit_cases = len(splits.fit)
        t_fit = time.perf_counter() - t0 - t_features
        cal_cases = splits.calibration
        x_cal = features(student, cal_cases, kind, layers, "2/3 thresholds (calibration)")
        p_cal = head.p_unsafe_many(x_cal)
    policy = cfg.policy
    keywords, exceptions = tuple(policy.safety_keywords), tuple(policy.keyword_exceptions)
    hits = [bool(find_keywords(c.input, keywords, exceptions)) for c in cal_cases]
    goal = {"recall_target": policy.recall_target, "delta": policy.recall_delta,
            "max_false_alert_rate": policy.max_false_alert_rate}  # fmt: skip
    cal_labels = [c.safety for c in cal_cases]
    if cfg.release.keyword_rule == "certify":
        calibration = calibrate_policy(p_cal.tolist(), cal_labels, hits, **goal)
    else:
        calibration = calibrate(p_cal.tolist(), cal_labels, caught=hits, **goal)
    if mode == "crossfit":
        method = f"{calibration.method}, on out-of-fold scores ({head.info['folds']}-fold crossfit)"
        calibration = calibration.model_copy(update={"method": method})
    timing = {
        "features_s": round(t_features, 2),
        "fit_s": round(t_fit, 3),
        "calibration_s": round(time.perf_counter() - t0 - t_features - t_fit, 2),
        "calibration": mode,
        "fit_cases": fit_cases,
        "calibration_cases": len(cal_cases),
        "self_labelled_cases": len(splits.traffic),
    }
    logger.info("head %s, %s; %s", head.info, calibration.note, timing)
    return head, calibration, timing


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
    files = build_files(version, skill, head, calibration, adapter, parent=active.version,
                        model=backend.name, metrics=metrics, note=note)  # fmt: skip
    saved = registry.add(files, result.report())
    registry.cache_eval(version, key, after)  # next round, when it is the active one
    result.version, result.path = version, saved.path
    if activate and verdict.passed:
        registry.activate(version)
    return result


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


def build_default(cfg: TeacherConfig, backend: Backend, cases: list[LabeledCase], out: Path):
    """The bundled release v0: the default skill, a head on ``cases``, its thresholds.

    Deterministic for the same cases, weights and seed (``gemma-teacher releases
    build-default`` rewrites ``shared/data/release``).
    """
    from shared.skill import default_skill
    from teacher.dataset import frozen_member

    skill = default_skill().model_copy(update={"created_at": 0.0})  # reproducible bytes
    # Never train on a case a teacher home would freeze for its gate: v0 is scored fairly.
    kept = [c for c in cases if not frozen_member(c.input, cfg.train.eval_fraction, cfg.train.seed)]
    fit, cal = split_fit(kept, cfg.release.calibration_fraction, cfg.train.seed)
    student = Student(backend, skill_release(skill), cfg.student.max_new_tokens)
    head, calibration, timing = fit_and_calibrate(cfg, student, Splits(fit, cal, []))
    note = (
        f"bundled default: the default skill, a {head.kind} safety head fit on {len(fit)} of "
        f"the bundled labelled scenes, thresholds calibrated on {len(cal)} others; the "
        f"{len(cases) - len(kept)} that teacher homes freeze for their gate are left out"
    )
    files = build_files(0, skill, head, calibration, model=backend.name,
                        metrics={"head": head.info}, note=note)  # fmt: skip
    manifest = json.loads(files["manifest.json"])
    manifest["created_at"] = 0.0  # reproducible bytes
    files["manifest.json"] = json.dumps(manifest, indent=1).encode()
    return write_release(out, files), timing
