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

The release's calibration certifies its thresholds with the cleared cases counted as
passed (leave-one-out: a case is never its own neighbour), so the guarantee covers the rule
as it runs. It knows nothing about models, releases or files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

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
