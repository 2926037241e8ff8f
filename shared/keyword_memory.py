"""The safety-keyword rule, paid only where no review covers it.

    memory = remember(cases, keywords, exceptions)       # the teacher, at a release build
    cleared(memory, text, ["gun"])                       # the edge, per keyword case

The keyword rule escalates a case the head would pass because it names a hazard word
("fire", "gun"): it exists for the rare hazard types no reviewed case covers. A site that
keeps showing harmless scenes with such a word (a fire-drill poster, a toy gun in the
props box) pays it forever. So a release remembers its reviewed keyword cases (their
content words only, as short hashes: no text travels) and a keyword case is **cleared**
only when, for every keyword it matched, at least ``MIN_SAFE`` reviewed cases with that
keyword are near it (Jaccard similarity of content words, keywords and stop words left
out, at least ``NEAR``) and every one of those near cases was safe. A keyword case unlike
anything reviewed ("a visitor is carrying a gun in reception" after many toy guns in the
props box) still escalates, and one near a reviewed hazard always does.

Words clear near-repeats of a reviewed scene, but a site's scenes are rarely worded twice
alike: on the four screening sites (bench/replay.py, ``kw_jaccard``) the word memory cleared
none of the 9-19 harmless keyword scenes a round. With ``release.keyword_sketches`` (off by
default) a hidden-state head also remembers its reviewed keyword cases as the student saw
them (**sketches**, in the head's file: its standardised features, unit length, float16; no
text), with the settled alerts that name the keyword as hazards. A keyword case is then also
cleared when, for every keyword it matched, its nearest remembered case of that keyword is
safe and at cosine similarity at least ``NEAR_COS``: a lookalike of a reviewed harmless
scene, not of a hazard nor of an alert. "A visitor is carrying a gun in reception" is at
cosine 0.15 from a toy gun in the props box. It is off because it did not pay: the replay
cut keyword calls by about 1 per 100 (``kw_feat1_0.6``), and the railway station's demo
(seed 0) cleared no case with it: that site's harmless keyword scenes are unlike each other.

The release's calibration certifies its thresholds with the cleared cases counted as
passed (leave-one-out: a case is never its own neighbour), so the guarantee covers the rule
as it runs. It knows nothing about models, releases or files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

NEAR = 0.3  # a third of the content words shared
MIN_SAFE = 2  # reviewed safe neighbours it takes to clear a keyword
PER_KEYWORD = 200  # remembered cases per keyword (the latest)
STOP = frozenset(
    "a an the and or but of in on at to from by for with without into onto over under near "
    "is are was were be been being has have had it its this that these those there here "
    "his her their our your my he she they we you i who which what while as than then so "
    "up down out off one two some any all no not very just still".split()
)

Memory = dict[str, list[tuple[tuple[str, ...], bool]]]  # keyword -> [(word hashes, unsafe)]
NEAR_COS = 0.6  # cosine of standardised features: a lookalike of the same site's scene
SKETCHES_PER_KEYWORD = 64  # remembered sketches per keyword (the latest)


def content_words(text: str, keywords: Iterable[str] = ()) -> frozenset[str]:
    """The words that say what a scene is about, as 8-hex-digit hashes."""
    skip = STOP | {k.lower() for k in keywords}
    words = {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in skip and len(w) > 1}
    return frozenset(hashlib.sha256(w.encode()).hexdigest()[:8] for w in words)


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def remember(cases: Sequence[tuple[str, bool, Sequence[str]]], keywords: Sequence[str]) -> Memory:
    """``cases``: (input text, unsafe, keywords it matched) of reviewed cases."""
    memory: Memory = {}
    for text, unsafe, matched in cases:
        words = tuple(sorted(content_words(text, keywords)))
        for k in matched:
            memory.setdefault(k, []).append((words, bool(unsafe)))
    return {k: v[-PER_KEYWORD:] for k, v in sorted(memory.items())}


def cleared(
    memory: Memory, text: str, matched: Sequence[str], keywords: Sequence[str] = ()
) -> bool:
    """Whether every keyword ``text`` matched is covered by near reviewed safe cases and by
    no near hazard (see the module docstring). ``keywords``: the configured list, left out
    of the comparison as ``remember`` left them out."""
    if not matched or not memory:
        return False
    words = content_words(text, keywords or matched)
    if not words:
        return False
    for k in matched:
        near = [unsafe for w, unsafe in memory.get(k, ()) if _jaccard(words, frozenset(w)) >= NEAR]
        if len(near) < MIN_SAFE or any(near):
            return False
    return True


def cleared_leave_one_out(
    cases: Sequence[tuple[str, bool, Sequence[str]]], keywords: Sequence[str]
) -> list[bool]:
    """For each case, whether the memory of all the *other* cases would clear it: what
    calibration counts, so that no case vouches for itself."""
    words = [content_words(text, keywords) for text, _, _ in cases]
    by_keyword: dict[str, list[int]] = {}
    for i, (_, _, matched) in enumerate(cases):
        for k in matched:
            by_keyword.setdefault(k, []).append(i)
    out = []
    for i, (_, _, matched) in enumerate(cases):
        ok = bool(matched) and bool(words[i])
        for k in matched if ok else ():
            recent = [j for j in by_keyword[k] if j != i][-PER_KEYWORD:]
            near = [cases[j][1] for j in recent if _jaccard(words[i], words[j]) >= NEAR]
            if len(near) < MIN_SAFE or any(near):
                ok = False
                break
        out.append(ok)
    return out


# ---------------------------------------------------------------- sketches (features)
class SketchError(ValueError):
    """Keyword sketches that cannot be used (the message names what is wrong)."""


@dataclass(frozen=True)
class Sketches:
    """Remembered keyword cases as unit feature vectors: row i names ``keywords[keyword[i]]``
    and was a hazard when ``unsafe[i]``."""

    keywords: tuple[str, ...]
    vectors: np.ndarray  # (n, d) float16, rows of unit length
    unsafe: np.ndarray  # (n,) bool
    keyword: np.ndarray  # (n,) int32 index into keywords

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def near_safe(self, vector: np.ndarray | None) -> frozenset[str]:
        """The keywords whose nearest remembered case is safe and at cosine >= NEAR_COS."""
        if vector is None or not len(self):
            return frozenset()
        sims = self.vectors.astype(np.float32) @ np.asarray(vector, dtype=np.float32)
        return frozenset(_near_safe_row(sims, self.keyword, self.unsafe, self.keywords))

    def to_tensors(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """Tensors (named ``sketch_*``) and keyword names, for the head's safetensors file."""
        tensors = {
            "sketch_vectors": np.ascontiguousarray(self.vectors, dtype=np.float16),
            "sketch_unsafe": self.unsafe.astype(np.uint8),
            "sketch_keyword": self.keyword.astype(np.int32),
        }
        return tensors, list(self.keywords)

    @classmethod
    def from_tensors(cls, tensors: dict, keywords: Sequence[str], dim: int) -> Sketches | None:
        """Read and check (``dim``: the head's feature count); None where the file has no
        sketches; SketchError names what is wrong."""
        names = [k for k in ("sketch_vectors", "sketch_unsafe", "sketch_keyword") if k in tensors]
        if not names:
            return None
        if len(names) != 3:
            raise SketchError(f"keyword sketches are incomplete: only {', '.join(names)}")
        vectors = tensors["sketch_vectors"]
        unsafe, keyword = tensors["sketch_unsafe"], tensors["sketch_keyword"]
        n = vectors.shape[0] if vectors.ndim == 2 else -1
        if n < 0 or unsafe.shape != (n,) or keyword.shape != (n,):
            raise SketchError(
                f"keyword sketches' shapes disagree: vectors {vectors.shape}, unsafe "
                f"{unsafe.shape}, keyword {keyword.shape}"
            )
        if n and vectors.shape[1] != dim:
            raise SketchError(f"keyword sketches have {vectors.shape[1]} features, the head {dim}")
        bad = int(np.count_nonzero(~np.isfinite(vectors.astype(np.float32))))
        if bad:
            raise SketchError(f"keyword sketches hold {bad} non-finite values")
        if n and (keyword.min() < 0 or keyword.max() >= len(keywords)):
            raise SketchError(
                f"a keyword sketch names keyword {int(keyword.max())} of {len(keywords)}"
            )
        return cls(
            tuple(str(k) for k in keywords),
            vectors.astype(np.float16),
            unsafe.astype(bool),
            keyword.astype(np.int32),
        )


def sketch(mean: np.ndarray, std: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Features standardised as the head standardises them, rows of unit length."""
    z = (np.asarray(features, dtype=np.float64) - mean) / std
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return (z / np.maximum(norm, 1e-12)).astype(np.float32)


def remember_sketches(
    vectors: np.ndarray, unsafe: Sequence[bool], matched: Sequence[Sequence[str]]
) -> tuple[Sketches, np.ndarray]:
    """Sketches with a row per case and keyword it matched (the latest
    ``SKETCHES_PER_KEYWORD`` of each keyword), and each row's case (index into ``vectors``)."""
    names = tuple(sorted({k for m in matched for k in m}))
    rows: list[tuple[int, int]] = []
    for ki, k in enumerate(names):
        mine = [i for i, m in enumerate(matched) if k in m][-SKETCHES_PER_KEYWORD:]
        rows += [(i, ki) for i in mine]
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(matched), -1)
    idx = np.array([i for i, _ in rows], dtype=int)
    sketches = Sketches(
        names,
        vectors[idx].astype(np.float16),
        np.asarray(unsafe, dtype=bool)[idx],
        np.array([ki for _, ki in rows], dtype=np.int32),
    )
    return sketches, idx


def near_safe_leave_one_out(
    sketches: Sketches, queries: np.ndarray, owner: Sequence[int], rows_of: Sequence[int]
) -> list[frozenset[str]]:
    """``near_safe`` for each query row, never counting the remembered rows of the same
    case: ``owner[q]`` is query q's case number (-1: in no memory row), ``rows_of[r]`` the
    case number of memory row r."""
    if not len(sketches) or not len(queries):
        return [frozenset() for _ in range(len(queries))]
    sims = np.asarray(queries, dtype=np.float32) @ sketches.vectors.astype(np.float32).T
    rows_of = np.asarray(rows_of)
    out = []
    for q, row in enumerate(sims):
        row = np.where(rows_of == owner[q], -np.inf, row) if owner[q] >= 0 else row
        out.append(
            frozenset(_near_safe_row(row, sketches.keyword, sketches.unsafe, sketches.keywords))
        )
    return out


def _near_safe_row(sims: np.ndarray, keyword: np.ndarray, unsafe: np.ndarray, names) -> list[str]:
    out = []
    for ki, name in enumerate(names):
        mine = np.flatnonzero(keyword == ki)
        if not len(mine):
            continue
        best = mine[int(np.argmax(sims[mine]))]
        if sims[best] >= NEAR_COS and not unsafe[best]:
            out.append(name)
    return out
