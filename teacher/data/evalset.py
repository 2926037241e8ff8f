"""The evaluation set upskilling chooses and gates on, and its fixed three-way split.

Cases come from the teacher store (``CaseStore.labeled_cases()``: reviewed cases, a
person's corrections outranking the teacher) and from labelled JSONL files (``input``,
``safety``, ``keywords`` as in ``shared/data/dev_scenes.jsonl``). One input seen twice
keeps the most trusted label: person > labels file > teacher > synthetic.

The split is a pure function of the cases and a seed, per safety class (so every part
holds both verdicts):

- ``holdout``: the final gate. Never shown to candidate generation, never a
  demonstration, never used to rank candidates; only the winner and the skill it must
  beat are scored on it.
- ``train``: the pool demonstrations are picked from.
- ``select``: candidates are ranked on it.

Within a class, cases are ranked by SHA-256(seed, case id) and cut at fixed fractions,
so a case keeps its part when unrelated cases are added or removed (mostly: the cut
points move with the class size). Each part has a hash (``cases_hash``) that goes into
the skill it chose. It knows nothing about models, prompts or registries.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from shared.errors import TrainingError
from shared.evaluation import LabeledCase, bundled_labels, cases_hash, load_labeled

logger = logging.getLogger(__name__)

TRUST = {"person": 0, "labels": 1, "teacher": 2, "synthetic": 3}


@dataclass(frozen=True)
class EvalSet:
    train: list[LabeledCase]
    select: list[LabeledCase]
    holdout: list[LabeledCase]

    @property
    def all(self) -> list[LabeledCase]:
        return self.train + self.select + self.holdout

    def hashes(self) -> dict[str, str]:
        return {
            "all": cases_hash(self.all),
            "train": cases_hash(self.train),
            "select": cases_hash(self.select),
            "holdout": cases_hash(self.holdout),
        }

    def summary(self) -> dict:
        def part(cases: list[LabeledCase]) -> dict:
            return {"n": len(cases), "safety": sum(c.safety for c in cases)}

        return {
            "train": part(self.train),
            "select": part(self.select),
            "holdout": part(self.holdout),
            "hashes": self.hashes(),
        }


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def merge_cases(*sources: list[LabeledCase]) -> list[LabeledCase]:
    """One case per input text, keeping the most trusted label; order of first sight."""
    best: dict[str, LabeledCase] = {}
    for cases in sources:
        for case in cases:
            key = _norm(case.input)
            kept = best.get(key)
            if kept is None or TRUST.get(case.origin, 9) < TRUST.get(kept.origin, 9):
                best[key] = case
    return list(best.values())


def with_bundled(cases: list[LabeledCase], on: bool = True) -> list[LabeledCase]:
    """``cases`` and after them the bundled labelled scenes (``release.bundled_labels``),
    one case per input as ``merge_cases`` keeps them."""
    return merge_cases(cases, bundled_labels()) if on else cases


def load_cases(store_path: Path | None, label_files: list[Path] = ()) -> list[LabeledCase]:
    """Labelled files plus the store's labelled cases (a missing store is not created)."""
    sources = [load_labeled(path) for path in label_files]
    if store_path is not None and Path(store_path).is_file():
        from teacher.data.store import CaseStore

        store = CaseStore(store_path, recover=False)  # the server may be reviewing
        try:
            stored = store.labeled_cases()
        finally:
            store.close()
        logger.info("%d labelled case(s) from the store %s", len(stored), store_path)
        sources.append(stored)
    elif store_path is not None:
        logger.info("no store at %s; using label files only", store_path)
    cases = merge_cases(*sources)
    if not cases:
        where = f"the store {store_path}" if store_path else "no store"
        raise TrainingError(
            f"no labelled cases to upskill on ({where}, {len(label_files)} label file(s)): "
            "review some escalated cases first, or give --labels FILE.jsonl"
        )
    return cases


def _rank(seed: int, case: LabeledCase) -> str:
    return hashlib.sha256(f"{seed}:{case.id}".encode()).hexdigest()


def split_cases(
    cases: list[LabeledCase],
    holdout_fraction: float = 0.3,
    select_fraction: float = 0.4,
    seed: int = 0,
) -> EvalSet:
    """Split per safety class: holdout first, then select, the rest is the demo pool.

    ``select_fraction`` is a share of what remains after the holdout. Each class with at
    least three cases puts at least one in every part.
    """
    train: list[LabeledCase] = []
    select: list[LabeledCase] = []
    holdout: list[LabeledCase] = []
    for verdict in (True, False):
        group = sorted((c for c in cases if c.safety is verdict), key=lambda c: _rank(seed, c))
        n = len(group)
        n_hold = round(n * holdout_fraction)
        n_sel = round((n - n_hold) * select_fraction)
        if n >= 3:
            n_hold = min(max(n_hold, 1), n - 2)
            n_sel = min(max(n_sel, 1), n - n_hold - 1)
        holdout += group[:n_hold]
        select += group[n_hold : n_hold + n_sel]
        train += group[n_hold + n_sel :]
    if not holdout or not select:
        raise TrainingError(
            f"{len(cases)} labelled case(s) are too few to hold out a gate split and a "
            "selection split; label more cases (a handful of each verdict at least)"
        )
    by_id = {c.id: i for i, c in enumerate(cases)}
    order = lambda part: sorted(part, key=lambda c: by_id[c.id])  # noqa: E731
    return EvalSet(order(train), order(select), order(holdout))
