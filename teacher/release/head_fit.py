"""From reviewed cases to a safety head and its certified thresholds (one release build).

    splits = make_splits(cfg, cases, skill, traffic)           # frozen / fit / calibration
    head, calibration, timing = fit_and_calibrate(cfg, student, splits, prior)

The frozen split (``teacher.data.dataset``, persisted) is the gate's; the rest is split per
label into fit (trains the LoRA) and calibration (never trained on by the LoRA), by a
seeded hash of the text. The head reads hidden states at the last prompt token, from the
release's own prompt and adapter through ``shared.student.Student``; the thresholds
come from ``shared.calibration`` on reviewed labels only.

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

Either way the head may also train on the edges' own traffic (``teacher.data.traffic``:
inputs an edge alerted on or passed by itself, labelled with what it did), never scored,
never calibrated on, never in the frozen split. The bundled keyword sample
(``release.keyword_sample``: hazards and harmless uses of every safety keyword) is never
trained on: the shipped head scores it, and its hazards certify the keyword floor
(``shared.calibration``) and nothing else (the system recall and false-alert risks rest
on cases drawn like the edges' inputs). Trained on, it made the head sure of itself on
the generic cases (a higher lower, a lower upper) and it then missed more on a new site.

It knows nothing about registries, gates or sockets (``teacher.release.build`` builds and
gates a release from what this returns).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from shared.backend import Backend, hidden_spec
from shared.calibration import Calibration, calibrate, calibrate_policy
from shared.errors import TrainingError
from shared.evaluation import LabeledCase, bundled_cases
from shared.head import SafetyHead, auc, average_heads, default_layers, fit_head
from shared.policy import find_keywords
from shared.release import ADAPTER_FILES, Release
from shared.skill import Skill
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher.data.dataset import case_hash
from teacher.release.feature_cache import FeatureCache, features, open_cache, student_identity
from teacher.release.keyword_rule import with_sketches, word_memory

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    fit: list[LabeledCase]  # trains the head (and the LoRA)
    calibration: list[LabeledCase]  # chooses the thresholds; never trained on by the LoRA
    frozen: list[LabeledCase]  # the gate's split (persisted by teacher.data.dataset)
    traffic: list[LabeledCase] = field(default_factory=list)  # self-labelled: head only
    # False: the release's adapter was trained elsewhere (build-default --adapter), so the
    # fit split may train and calibrate the head as it does without an adapter
    adapter_saw_fit: bool = True


def make_splits(
    cfg: TeacherConfig,
    cases: list[LabeledCase],
    skill: Skill,
    traffic: list[LabeledCase] = (),
) -> Splits:
    """Redact, dedupe and split (see the module docstring); ``traffic``: the edges'
    self-labelled inputs (``teacher.data.traffic``), minus any input with a real label."""
    from teacher.data.dataset import build_dataset
    from teacher.data.traffic import unlabelled_only

    dataset = build_dataset(
        cases, cfg.home, skill.instructions, cfg.train.eval_fraction, cfg.train.seed
    )
    frozen = [e.labeled() for e in dataset.eval]
    if not frozen:
        raise TrainingError("the frozen evaluation split is empty: nothing to gate on")
    rest = [e.labeled() for e in dataset.train if e.origin != "generic"]
    fit, cal = split_fit(rest, cfg.release.calibration_fraction, cfg.train.seed)
    if cfg.train.lora_cases == "sites":  # the LoRA learns the sites; the rest calibrates
        site_fit = [c for c in fit if c.site]
        if len({c.safety for c in site_fit}) == 2:
            fit, cal = site_fit, cal + [c for c in fit if not c.site]
        else:
            logger.info(
                "%d site case(s) in the fit split, not both verdicts: the LoRA trains on "
                "the bundled cases too (train.lora_cases)",
                len(site_fit),
            )
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
            key=lambda c: case_hash(c.input, "cal", seed),
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
    """``hidden`` where the backend gives hidden states (the default layers, the middle
    and the last, where its engine can read them, else its final state), else ``verdict``."""
    spec = hidden_spec(backend)
    if spec is None:
        return "verdict", ()
    layers = default_layers(spec.num_layers)
    if spec.readable is not None and not set(layers) <= set(spec.readable):
        return "hidden", (spec.num_layers,) if spec.num_layers in spec.readable else spec.readable
    return "hidden", layers


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
    return int.from_bytes(case_hash(case.input, "fold", seed)[:8], "big") % folds


def _fit(
    cfg: TeacherConfig,
    x: np.ndarray,
    labels: list[bool],
    kind: str,
    layers: tuple[int, ...],
    prior: SafetyHead | None,
    weights: np.ndarray | None = None,
) -> SafetyHead:
    """One head: pulled toward ``prior`` when it reads the same features, else from 0;
    ``weights``: each case's weight in the fit (``case_weights``)."""
    usable = (
        prior is not None
        and cfg.release.prior_l2 > 0
        and prior.kind == kind
        and tuple(prior.layers) == tuple(layers)
        and prior.dim == x.shape[1]
    )
    if usable:
        return fit_head(x, labels, kind=kind, layers=layers, l2=cfg.release.prior_l2,
                        prior=prior, weights=weights)  # fmt: skip
    return fit_head(x, labels, kind=kind, layers=layers, l2=cfg.release.head_l2, weights=weights)


def case_weights(cfg: TeacherConfig, cases: list[LabeledCase], extra: int = 0) -> np.ndarray | None:
    """Each case's weight in a head's fit: ``release.site_weight`` for a site's reviewed
    case, 1 for a bundled one, ``release.self_label_weight`` for the ``extra`` self-labelled
    inputs after them; None when all are 1 (the unweighted fit, bit for bit)."""
    weight, own = cfg.release.site_weight, cfg.release.self_label_weight
    if (weight == 1.0 or not any(c.site for c in cases)) and (own == 1.0 or not extra):
        return None
    return np.array([weight if c.site else 1.0 for c in cases] + [own] * extra)


def crossfit(
    cfg: TeacherConfig,
    x: np.ndarray,
    cases: list[LabeledCase],
    kind: str,
    layers: tuple[int, ...],
    prior: SafetyHead | None = None,
    extra: tuple[np.ndarray, list[bool]] | None = None,
) -> tuple[SafetyHead, np.ndarray]:
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
    weights = case_weights(cfg, cases, len(y_extra))
    n = len(cases)
    scores = np.zeros(n)
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
        head = _fit(
            cfg,
            np.vstack([x[train], x_extra]),
            labels[train].tolist() + list(y_extra),
            kind,
            layers,
            prior,
            None if weights is None else np.concatenate([weights[:n][train], weights[n:]]),
        )
        scores[out] = head.p_unsafe_many(x[out])
        heads.append(head)
    info = {
        "n": len(cases),
        "unsafe": int(labels.sum()),
        "l2": heads[0].info["l2"],
        "folds": len(heads),
        "oof_auc": round(auc(scores, labels), 4),
    }
    if len(y_extra):
        info["self_labelled"] = len(y_extra)
    if weights is not None:
        info["site_weight"] = cfg.release.site_weight
        if len(y_extra):
            info["self_label_weight"] = cfg.release.self_label_weight
    if heads[0].info.get("prior"):
        info["prior"] = True
    return average_heads(heads, info), scores


KEYWORD_SAMPLE = "keyword_scenes.jsonl"


def keyword_sample(cfg: TeacherConfig, known: list[LabeledCase]) -> list[LabeledCase]:
    """The bundled keyword scenes a build adds (``release.keyword_sample``), minus any
    input it already has a label for (a review outranks the sample)."""
    from teacher.data.dataset import case_key

    if not cfg.release.keyword_sample:
        return []
    seen = {case_key(c.input) for c in known}
    return [c for c in bundled_cases(KEYWORD_SAMPLE) if case_key(c.input) not in seen]


def fit_and_calibrate(
    cfg: TeacherConfig, student: Student, splits: Splits, prior: SafetyHead | None = None
) -> tuple[SafetyHead, Calibration, dict]:
    """The head and its certified thresholds (``release.calibration``, see the module
    docstring); the head is pulled toward ``prior`` (the running release's head) when
    given and ``release.prior_l2`` > 0."""
    kind, layers = head_kind(student.backend)
    cache = open_cache(cfg.home) if cfg.release.feature_cache and kind == "hidden" else None
    try:
        return _fit_and_calibrate(cfg, student, splits, prior, kind, layers, cache)
    finally:
        if cache is not None:
            cache.close()


def _fit_and_calibrate(
    cfg: TeacherConfig,
    student: Student,
    splits: Splits,
    prior: SafetyHead | None,
    kind: str,
    layers: tuple[int, ...],
    cache: FeatureCache | None,
) -> tuple[SafetyHead, Calibration, dict]:
    identity = ""
    if cache is not None:
        identity = student_identity(
            student.backend, cfg.student.model_dump_json(), student.release.adapter_dir
        )
    features_of = partial(features, cache=cache, identity=identity)
    t0 = time.perf_counter()
    mode = cfg.release.calibration
    extra = None
    if splits.traffic:
        x_extra = features_of(
            student, splits.traffic, kind, layers, "head features (edge traffic, self-labelled)"
        )
        extra = (x_extra, [c.safety for c in splits.traffic])
    if mode == "crossfit":
        # A LoRA trained on the fit split would flatter its cases' out-of-fold scores:
        # then only the cases it never saw (the calibration split) train and calibrate.
        saw = student.release.adapter_dir is not None and splits.adapter_saw_fit
        cal_cases = splits.calibration if saw else splits.fit + splits.calibration
        x = features_of(student, cal_cases, kind, layers, "1/2 head features (reviewed cases)")
        t_features = time.perf_counter() - t0
        head, p_cal = crossfit(cfg, x, cal_cases, kind, layers, prior, extra)
        reviewed_x = list(zip(cal_cases, x, strict=True))
        x_cal = x
        fit_cases = len(cal_cases)
        t_fit = time.perf_counter() - t0 - t_features
    else:
        x_fit = features_of(student, splits.fit, kind, layers, "1/3 head features (fit split)")
        t_features = time.perf_counter() - t0
        y_fit = [c.safety for c in splits.fit]
        if extra is not None:
            x_fit, y_fit = np.vstack([x_fit, extra[0]]), y_fit + extra[1]
        n_extra = len(y_fit) - len(splits.fit)
        weights = case_weights(cfg, splits.fit, n_extra)
        head = _fit(cfg, x_fit, y_fit, kind, layers, prior, weights)
        if extra is not None:
            head.info["self_labelled"] = len(extra[1])
        fit_cases = len(splits.fit)
        t_fit = time.perf_counter() - t0 - t_features
        cal_cases = splits.calibration
        x_cal = features_of(student, cal_cases, kind, layers, "2/3 thresholds (calibration)")
        p_cal = head.p_unsafe_many(x_cal)
        reviewed_x = [*zip(splits.fit, x_fit, strict=False), *zip(cal_cases, x_cal, strict=True)]
    # The keyword sample is scored by the shipped head, which never trained on it: its
    # hazards certify the keyword floor (and nothing else, see the module docstring).
    sample = keyword_sample(cfg, [*splits.fit, *splits.calibration, *splits.frozen])
    if sample:
        x_sample = features_of(student, sample, kind, layers, "keyword sample (the floor)")
        p_cal = np.concatenate([p_cal, head.p_unsafe_many(x_sample)])
        x_cal = np.vstack([x_cal, x_sample])
        cal_cases = cal_cases + sample
    policy = cfg.policy
    keywords, exceptions = tuple(policy.safety_keywords), tuple(policy.keyword_exceptions)
    hits = [bool(find_keywords(c.input, keywords, exceptions)) for c in cal_cases]
    memory, cleared = ({}, [False] * len(cal_cases))
    if cfg.release.keyword_memory:
        memory, cleared = word_memory(policy, [*splits.fit, *splits.calibration], cal_cases)
    hits = [hit and not c for hit, c in zip(hits, cleared, strict=True)]
    if cfg.release.keyword_sketches and kind == "hidden":
        alerts = [] if extra is None else [
            (c, row) for c, row in zip(splits.traffic, extra[0], strict=True) if c.safety
        ]  # fmt: skip
        head, near = with_sketches(head, reviewed_x + alerts, cal_cases, x_cal, policy)
        hits = [hit and not n for hit, n in zip(hits, near, strict=True)]
    goal = {
        "recall_target": policy.recall_target,
        "delta": policy.recall_delta,
        "max_false_alert_rate": policy.max_false_alert_rate,
    }
    cal_labels = [c.safety for c in cal_cases]
    sampled = {c.id for c in sample}
    only = [c.id in sampled for c in cal_cases]  # the keyword floor's, not lower's or upper's
    if cfg.release.keyword_rule == "certify":
        calibration = calibrate_policy(p_cal.tolist(), cal_labels, hits, stratum_only=only, **goal)
    else:
        calibration = calibrate(p_cal.tolist(), cal_labels, keyword=hits, stratum_only=only, **goal)
    if mode == "crossfit":
        method = f"{calibration.method}, on out-of-fold scores ({head.info['folds']}-fold crossfit)"
        calibration = calibration.model_copy(update={"method": method})
    if memory and calibration.keywords:
        calibration = calibration.model_copy(update={"keyword_memory": memory})
    spec = hidden_spec(student.backend)
    if kind == "hidden" and spec is not None:  # an edge on another engine refuses it
        head = dataclasses.replace(head, info={**head.info, "engine": spec.engine})
    timing = {
        "features_s": round(t_features, 2),
        "fit_s": round(t_fit, 3),
        "calibration_s": round(time.perf_counter() - t0 - t_features - t_fit, 2),
        "calibration": mode,
        "fit_cases": fit_cases,
        "calibration_cases": len(cal_cases),
        "self_labelled_cases": len(splits.traffic),
        "keyword_sample_cases": len(sample),
        "features_from_cache": 0 if cache is None else cache.hits,
    }
    logger.info("head %s, %s; %s", head.info, calibration.note, timing)
    return head, calibration, timing
