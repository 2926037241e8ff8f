"""Check a site's scene file before a demo plays it: format, counts per round, and no repeats.

    python bench/data/check_site.py bench/data/heldout_site/scenes.jsonl
    python bench/data/check_site.py bench/data/heldout_site/round_3.jsonl --against shared/data

Prints one line per round (scenes, hazards, hazards with no trigger word, safe scenes with
one) and every problem found; exits 1 if there is any. Two inputs repeat when their
word-bigram Jaccard similarity is 0.5 or more (words are lowercase runs of [a-z0-9]).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from itertools import combinations
from pathlib import Path

TRIGGERS = {
    "fire", "flame", "flames", "smoke", "knife", "blood", "weapon", "gun",
    "fallen", "collapsed", "unconscious", "injured",
}  # fmt: skip


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def bigrams(text: str) -> set[tuple[str, str]]:
    w = words(text)
    return set(zip(w, w[1:], strict=False))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def repeats(grams: list[set], other_grams: list[set]) -> list[tuple[int, int]]:
    """(i, j) for each input i of ``grams`` that repeats input j of ``other_grams`` (bigram
    Jaccard 0.5 or more); only pairs that share a bigram are compared."""
    sharing: dict[tuple[str, str], set[int]] = {}  # bigram -> the other inputs that have it
    for j, g in enumerate(other_grams):
        for gram in g:
            sharing.setdefault(gram, set()).add(j)
    pairs = []
    for i, g in enumerate(grams):
        near = set().union(*(sharing.get(gram, set()) for gram in g))
        pairs += [(i, j) for j in sorted(near) if jaccard(g, other_grams[j]) >= 0.5]
    return pairs


def problems(doc: dict, line: int) -> list[str]:
    out = []
    for key in ("id", "input", "safety", "keywords", "answer"):
        if key not in doc:
            out.append(f"line {line}: no {key!r}")
    if out:
        return out
    m = re.fullmatch(r"Answer: (.+)\nSAFETY: (yes|no)\nCONFIDENCE: (0\.\d\d)", doc["answer"], re.S)
    if not m:
        return [
            f"line {line} ({doc['id']}): answer is not 'Answer: ...\\nSAFETY: yes|no\\nCONFIDENCE: 0.NN'"
        ]
    if (m.group(2) == "yes") != bool(doc["safety"]):
        out.append(f"{doc['id']}: SAFETY line disagrees with safety={doc['safety']}")
    if not 0.75 <= float(m.group(3)) <= 0.99:
        out.append(f"{doc['id']}: CONFIDENCE {m.group(3)} outside 0.75-0.99")
    if not 2 <= len(doc["keywords"]) <= 4:
        out.append(f"{doc['id']}: {len(doc['keywords'])} keywords (2-4)")
    for kw in doc["keywords"]:
        if not re.search(rf"\b{re.escape(kw.lower())}\b", doc["input"].lower()):
            out.append(f"{doc['id']}: keyword {kw!r} is not a whole word of the input")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument(
        "--against",
        nargs="*",
        type=Path,
        default=[],
        help="files or folders of *.jsonl that no input may repeat",
    )
    args = ap.parse_args(argv)
    docs, errors = [], []
    for path in args.files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{i}: not JSON ({e})")
                continue
            errors += problems(doc, i)
            docs.append(doc)
    ids = [d.get("id") for d in docs]
    errors += [f"id {i} appears twice" for i in {i for i in ids if ids.count(i) > 1}]
    grams = [bigrams(d.get("input", "")) for d in docs]
    for (a, ga), (b, gb) in combinations(zip(docs, grams, strict=True), 2):
        if jaccard(ga, gb) >= 0.5:
            errors.append(f"{a['id']} and {b['id']} repeat each other")
    others = []
    for p in args.against:
        for f in sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]:
            if f.resolve() in {x.resolve() for x in args.files}:
                continue
            others += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    other_grams = [bigrams(o.get("input", "")) for o in others]
    for i, j in repeats(grams, other_grams):
        if others[j].get("id") != docs[i].get("id"):
            errors.append(f"{docs[i]['id']} repeats {others[j].get('id')}")
    rounds: dict[int, list[dict]] = {}
    for d in docs:
        rounds.setdefault(int(d.get("round", 0)), []).append(d)
    for r, ds in sorted(rounds.items()):
        hz = [d for d in ds if d.get("safety")]
        safe = [d for d in ds if not d.get("safety")]
        no_trig = sum(1 for d in hz if not TRIGGERS & set(words(d.get("input", ""))))
        trig = sum(1 for d in safe if TRIGGERS & set(words(d.get("input", ""))))
        print(
            f"round {r}: {len(ds)} scenes, {len(hz)} hazards ({no_trig} with no trigger word), "
            f"{len(safe)} safe ({trig} with a trigger word)"
        )
    for e in errors:
        print("PROBLEM:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
