"""``gemma-teacher upskill``: find a better skill for the student without training.

A straight-line recipe, read top to bottom (``run_upskill``):

1. split the labelled cases (``teacher.data.evalset``): demo pool / selection / held-out;
2. score the skill the edges run now (the active version, else the bundled default)
   on the pool and the selection split: its mistakes on the pool steer which
   demonstrations are bootstrapped;
3. for each round, make candidates (``teacher.improve.candidates``) and score each one with
   the student over the selection split;
4. the best candidate on the selection split is the winner; it and the current skill
   are scored on the held-out split (cases that are a demonstration in either skill
   are left out of that comparison);
5. the winner (with its score, parent and held-out hash) goes to the release build
   (``teacher.release.build.build_release``: a head fit on its prompt, thresholds, the
   release gate on the frozen split, through the edge's own code): that gate alone
   decides what edges get. The held-out comparison is reported beside it.

Scores are ``shared.evaluation.evaluate(...).score``; every metric is kept so the
report can show what moved. It knows nothing about sockets: the teacher server pushes
whatever release is active.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shared.backend import Backend
from shared.backend_factory import make_backend
from shared.errors import TrainingError
from shared.evaluation import EvalReport, LabeledCase, cases_hash, evaluate
from shared.skill import Skill
from shared.teacher_config import TeacherConfig, UpskillConfig
from teacher.data.evalset import EvalSet, split_cases
from teacher.improve import candidates as cand
from teacher.improve.scoring import (
    VERDICT_CHAR,
    Run,
    Scored,
    balanced,
    progress_bar,
    run_student,
    score_skill,
    tradeoff,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the recipe
@dataclass
class UpskillDecision:
    to_build: bool  # the winner goes to the release build (its gate decides what edges get)
    beats_parent: bool  # the held-out comparison, reported: the release gate decides
    reason: str
    winner_holdout: dict
    baseline_holdout: dict
    holdout_ids: list[str]


@dataclass
class UpskillResult:
    baseline: Scored
    scored: list[Scored]  # every candidate, in scoring order
    winner: Scored
    decision: UpskillDecision
    evalset: EvalSet
    writer_notes: list[str]
    seconds: float
    skill: Skill  # the winner as registered (or as it would be, on a dry run)
    select: list[LabeledCase] = field(default_factory=list)  # the cases that ranked them

    def to_json(self) -> dict:
        return {
            "baseline": self.baseline.row(),
            "candidates": [s.row() for s in self.scored],
            "winner": self.winner.candidate.name,
            "decision": self.decision.__dict__,
            "evalset": self.evalset.summary(),
            "select_labels": {
                "ids": [c.id for c in self.select],
                "verdicts": "".join(VERDICT_CHAR[c.safety] for c in self.select),
            },
            "winner_failures": self.winner.report.failures,
            "writer": self.writer_notes,
            "seconds": round(self.seconds, 1),
            "skill": self.skill.model_dump(mode="json"),
        }


def _interleave(cases: list[LabeledCase], cap: int) -> list[LabeledCase]:
    """At most ``cap`` cases, safety and non-safety alternating (so any prefix is balanced)."""
    yes = [c for c in cases if c.safety]
    no = [c for c in cases if not c.safety]
    out: list[LabeledCase] = []
    for i in range(max(len(yes), len(no))):
        out += yes[i : i + 1] + no[i : i + 1]
    return out[:cap]


def run_upskill(
    cases: list[LabeledCase],
    student: Backend,
    parent: Skill,
    cfg: UpskillConfig,
    max_new_tokens: int = 48,
    writer: Backend | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> UpskillResult:
    """Find a skill that beats ``parent`` (the active release's) on the held-out split."""
    started = time.perf_counter()
    evalset = split_cases(cases, cfg.holdout_fraction, cfg.select_fraction, cfg.seed)
    select = _interleave(evalset.select, cfg.max_eval_cases)
    logger.info("split: %s", evalset.summary())

    # 2. the skill to beat, and what it gets wrong on the demo pool
    origin = "active" if parent.version else "default"
    base_cand = cand.Candidate(f"{origin} v{parent.version}", origin, 0, parent)
    # Probing part of the pool is enough to find mistakes worth demonstrating.
    probe = _interleave(evalset.train, max(8, 2 * cfg.demos))
    with progress_bar(len(probe) + len(select), f"baseline {base_cand.name}", progress) as bar:
        pool_report, _ = score_skill(student, parent, probe, max_new_tokens, bar)
        report, run = score_skill(student, parent, select, max_new_tokens, bar)
    baseline = Scored(base_cand, report, run.seconds, run.answers)
    wrong = {f["id"] for f in pool_report.failures}
    # A candidate must not judge worse than the current skill (balanced agreement), or
    # "say yes to everything" would win on recall alone.
    drop = cfg.max_balanced_drop
    floor = -1.0 if drop is None else balanced(report.summary()) - drop
    logger.info("baseline select score %.3f; %d pool case(s) wrong", report.score, len(wrong))

    # 3. rounds of candidates
    seen = {base_cand.key()}
    scored: list[Scored] = []
    notes: list[str] = []
    feedback = cand.Feedback()
    demos = [cand.demo_for(c) for c in cand.pick_demos(evalset.train, cfg.demos, _rng(cfg), wrong)]
    for round_ in range(1, cfg.rounds + 1):
        if round_ == 1:
            batch = cand.library_candidates(
                parent, evalset.train, cfg.candidates, cfg.demos, wrong, cfg.seed
            )
        else:
            batch = cand.mutations(
                feedback, parent, evalset.train, cfg.candidates, cfg.demos, round_, cfg.seed
            )
        if writer is not None:
            batch += _writer_round(writer, cfg, parent, feedback, demos, round_, notes)
        batch = [c for c in batch if c.key() not in seen]
        seen.update(c.key() for c in batch)
        if not batch:
            notes.append(f"round {round_}: no new candidates")
            continue
        scored += _score_round(student, batch, select, cfg, max_new_tokens, round_, progress, floor)
        ranked = sorted(scored, key=lambda s: (not s.full, *_neg(_key(s.report, floor))))
        feedback = cand.Feedback(
            [(s.candidate, s.report.summary()) for s in ranked], ranked[0].report.failures
        )
    if not scored:
        raise TrainingError("no candidate skill could be made (empty demo pool and no writer?)")
    winner = max((s for s in scored if s.full), key=lambda s: _key(s.report, floor))

    # 4. the held-out comparison (reported), and the winner to the release build
    decision, skill = _gate(
        student, cfg, parent, winner, evalset, max_new_tokens, dry_run, progress
    )
    return UpskillResult(
        baseline,
        scored,
        winner,
        decision,
        evalset,
        notes,
        time.perf_counter() - started,
        skill,
        select,
    )


def _score_round(
    student: Backend,
    batch: list[cand.Candidate],
    select: list[LabeledCase],
    cfg: UpskillConfig,
    max_new_tokens: int,
    round_: int,
    progress: bool,
    floor: float = -1.0,
) -> list[Scored]:
    """Score a round's candidates on the selection split. With ``cfg.race``, all run on
    its first half and only the better half (by that partial score) on the rest.
    Candidates whose balanced agreement is under ``floor`` rank below all others."""
    half = len(select) // 2 if cfg.race and len(batch) > 2 and len(select) >= 4 else len(select)
    keep = -(-len(batch) // 2) if half < len(select) else len(batch)
    total = len(batch) * half + keep * (len(select) - half)
    first: list[tuple[cand.Candidate, EvalReport, Run]] = []
    out: list[Scored] = []
    with progress_bar(total, f"round {round_}/{cfg.rounds}", progress) as bar:
        for c in batch:
            bar.set_postfix_str(c.name[:32])
            report, run = score_skill(student, c.skill, select[:half], max_new_tokens, bar)
            first.append((c, report, run))
        first.sort(key=lambda t: _neg(_key(t[1], floor)))
        for i, (c, report, run) in enumerate(first):
            if i < keep and half < len(select):
                bar.set_postfix_str(c.name[:32])
                run = run + run_student(student, c.skill, select[half:], max_new_tokens, bar)
                report = evaluate(select, run.answers, run.tokens, max_tokens=max_new_tokens)
            full = i < keep
            out.append(Scored(c, report, run.seconds, run.answers, full))
            logger.info("%s%s: %s", c.name, "" if full else " (raced out)", report.summary())
    return out


def _key(report: EvalReport, floor: float) -> tuple[bool, float]:
    """Ranking key: judges at least as well as the current skill first, then score."""
    return (balanced(report.summary()) >= floor - 1e-9, report.score)


def _neg(key: tuple[bool, float]) -> tuple[bool, float]:
    return (not key[0], -key[1])


def _rng(cfg: UpskillConfig):
    import random

    return random.Random(cfg.seed)


def _writer_round(
    writer: Backend,
    cfg: UpskillConfig,
    parent: Skill,
    feedback: cand.Feedback,
    demos: list,
    round_: int,
    notes: list[str],
) -> list[cand.Candidate]:
    try:
        prompts, how = cand.write_instructions(
            writer, cfg.candidates, parent, feedback if feedback.scored else None
        )
    except TrainingError as exc:
        logger.warning("round %d: %s", round_, exc)
        notes.append(f"round {round_}: writer failed: {exc}")
        return []
    notes.append(f"round {round_}: writer gave {len(prompts)} prompt(s) ({how})")
    return cand.writer_candidates(prompts, demos, parent, round_, f"writer, {how}")


def _gate(
    student: Backend,
    cfg: UpskillConfig,
    parent: Skill,
    winner: Scored,
    evalset: EvalSet,
    max_new_tokens: int,
    dry_run: bool,
    progress: bool,
) -> tuple[UpskillDecision, Skill]:
    shown = {d.input for d in parent.demos} | {d.input for d in winner.candidate.skill.demos}
    holdout = [c for c in evalset.holdout if c.input not in shown]
    if not holdout:
        raise TrainingError("every held-out case is a demonstration; label more cases")
    with progress_bar(2 * len(holdout), "held-out comparison", progress) as bar:
        base_report, _ = score_skill(student, parent, holdout, max_new_tokens, bar)
        win_report, _ = score_skill(student, winner.candidate.skill, holdout, max_new_tokens, bar)
    gain = win_report.score - base_report.score
    drop = cfg.max_balanced_drop
    bal_win, bal_base = balanced(win_report.summary()), balanced(base_report.summary())
    judges = drop is None or bal_win >= bal_base - drop - 1e-9
    beats = gain > cfg.min_gain and judges
    who = f"v{parent.version}" + (" (bundled default)" if parent.version == 0 else "")
    if gain > cfg.min_gain and not judges:
        reason = (
            f"{winner.candidate.name} scores {win_report.score:.3f} on "
            f"{len(holdout)} held-out case(s) against {base_report.score:.3f} for {who}, but "
            f"its balanced safety agreement {bal_win:.3f} is below {bal_base:.3f}: it judges "
            f"worse and only flags more (upskill.max_balanced_drop = {drop})"
        )
    elif beats:
        reason = (
            f"{winner.candidate.name} scores {win_report.score:.3f} on {len(holdout)} held-out "
            f"case(s) against {base_report.score:.3f} for {who}"
        )
    else:
        reason = (
            f"{winner.candidate.name} scores {win_report.score:.3f} on "
            f"{len(holdout)} held-out case(s), which does not beat {who} "
            f"({base_report.score:.3f}) by more than {cfg.min_gain:.3f}"
        )
    reason += f" ({tradeoff(win_report.summary(), base_report.summary())})"
    skill = winner.candidate.skill.model_copy(
        update={
            "score": round(win_report.score, 4),
            "parent": parent.version,
            "eval_hash": cases_hash(holdout),
            "name": winner.candidate.name[:128],
        }
    )
    reason = ("dry run, nothing built: " if dry_run else "to the release build: ") + reason
    return (
        UpskillDecision(
            not dry_run,
            beats,
            reason,
            win_report.summary(),
            base_report.summary(),
            [c.id for c in holdout],
        ),
        skill,
    )


# ---------------------------------------------------------------- backends and CLI
def writer_backend(cfg: TeacherConfig, student: Backend | None = None) -> Backend | None:
    """Who writes candidate prompts (``upskill.writer``); None: built-in variants only.
    The student backend is reused when the reviewer is configured as the same model."""
    mode, reviewer = cfg.upskill.writer, cfg.reviewer
    if mode == "none" or reviewer.backend == "labels":
        return None
    if mode == "auto" and reviewer.backend != "ollama":
        logger.info("writer: the %s reviewer cannot write prompts; variants only", reviewer.backend)
        return None
    if student is not None and reviewer.model == cfg.student:
        return student
    return make_backend(reviewer.model)
