"""The supervised dataset a LoRA round trains on: reviewed cases → (prompt, answer) pairs.

    cases (store.labeled_cases(), labelled JSONL, synthetic) ──► redact ──► dedupe
        ──► frozen evaluation split (ids under <home>/train/frozen_eval.json) + training rest

- Every input and answer is redacted (``shared.redact``) first; nothing unredacted is
  hashed, exported or written.
- Exact duplicates (same normalised input) and near duplicates (word-bigram Jaccard at
  or above ``NEAR_DUPLICATE``) are dropped; of two, the stronger label wins
  (person > labels > teacher > synthetic). A training case that nearly duplicates an
  evaluation case is dropped too, so the frozen split measures unseen inputs.
- The evaluation split is chosen once (stratified by the safety label, seeded) and its
  ids are persisted; later rounds reuse it and put every new case into training.
  Synthetic and generic examples never enter it.
- The target is the teacher's answer in the student's format, as the continuation of
  the prompt's final ``Answer:``; a label without an answer sentence gets the input's
  own first sentence. The label's verdict always wins over the answer's.
- ``export_chat``/``import_chat`` write and read chat-style JSONL (system/user/
  assistant messages plus id, split, origin, safety, keywords) to inspect and edit.

It knows nothing about models or tokenizers: prompts are strings (``shared.skill``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.answer import parse_answer
from shared.errors import ConfigError
from shared.evaluation import LabeledCase, bad_line, jsonl_lines
from shared.redact import redact_counts
from shared.skill import ANSWER_PRIMER, render_input, render_prefix

logger = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.8
FROZEN_FILE = "frozen_eval.json"
ORIGIN_RANK = {"person": 0, "labels": 1, "teacher": 2, "synthetic": 3, "generic": 4}
DEFAULT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Example:
    id: str
    input: str
    target: str  # continuation of "Answer:", e.g. " A cat sleeps.\nSAFETY: no\nCONFIDENCE: 0.90"
    safety: bool
    keywords: tuple[str, ...] = ()
    origin: str = "labels"
    prompt: str | None = None  # a full prompt for generic examples; None = the skill's format
    site: str = ""  # the edge whose traffic it came from; "" = generic

    def render_prompt(self, instructions: str, demos: tuple = ()) -> str:
        """The prompt the edge would build for this input (``demos``: the skill's)."""
        if self.prompt is not None:
            return self.prompt
        return render_prefix(instructions, demos) + render_input(self.input)

    @property
    def answer(self) -> str:
        return ANSWER_PRIMER + self.target

    def labeled(self) -> LabeledCase:
        return LabeledCase(
            self.id, self.input, self.safety, self.keywords, self.answer, self.origin, self.site
        )


@dataclass
class Dataset:
    train: list[Example]
    eval: list[Example]
    instructions: str
    stats: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.instructions.encode())
        for split, examples in (("train", self.train), ("eval", self.eval)):
            for ex in sorted(examples, key=lambda e: e.id):
                doc = asdict(ex)
                if not ex.site:
                    doc.pop("site")  # generic examples hash as they always did
                digest.update(json.dumps([split, doc], sort_keys=True).encode())
        return digest.hexdigest()


def target_for(case: LabeledCase) -> str:
    """The answer continuation (after ``Answer:``) in the student's format."""
    sentence, confidence = "", None
    if case.answer:
        parsed = parse_answer(case.answer)
        sentence, confidence = parsed.text, parsed.confidence
        if not sentence and not case.answer.lstrip().lower().startswith(("safety", "{")):
            sentence = case.answer.strip().splitlines()[0].strip()
    if not sentence:
        sentence = re.split(r"(?<=[.!?])\s", " ".join(case.input.split()), maxsplit=1)[0]
        words = sentence.split()
        if len(words) > 24:
            sentence = " ".join(words[:24]).rstrip(",;") + "."
    if not sentence.endswith((".", "!", "?")):
        sentence += "."
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    verdict = "yes" if case.safety else "no"
    return f" {sentence}\nSAFETY: {verdict}\nCONFIDENCE: {confidence:.2f}"


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9\[\]]+", text.lower()))


def _shingles(text: str) -> frozenset[str]:
    words = _norm(text).split()
    return frozenset(words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)])


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def to_examples(cases: list[LabeledCase]) -> tuple[list[Example], Counter]:
    """Redacted examples for ``cases``; the counter says what redaction replaced."""
    found: Counter = Counter()
    out = []
    for case in cases:
        text, c1 = redact_counts(case.input)
        redacted = LabeledCase(
            case.id, text, case.safety, case.keywords, case.answer, case.origin, case.site
        )
        target, c2 = redact_counts(target_for(redacted))
        found += c1 + c2
        origin = "synthetic" if case.id.startswith("synth-") else case.origin
        out.append(
            Example(case.id, text, target, case.safety, case.keywords, origin, site=case.site)
        )
    return out, found


def dedupe(examples: list[Example], threshold: float = NEAR_DUPLICATE) -> tuple[list, Counter]:
    """Drop exact and near duplicates; the stronger origin is kept. O(n^2) over kept cases."""
    ordered = sorted(
        enumerate(examples), key=lambda p: (ORIGIN_RANK.get(p[1].origin, 9), p[0])
    )  # stable: strongest origin first, then arrival order
    kept: list[tuple[int, Example, frozenset[str]]] = []
    seen: dict[str, int] = {}
    dropped: Counter = Counter()
    for index, ex in ordered:
        key = _norm(ex.input)
        if key in seen:
            dropped["exact_duplicate"] += 1
            continue
        sh = _shingles(ex.input)
        if any(jaccard(sh, other) >= threshold for _, _, other in kept):
            dropped["near_duplicate"] += 1
            continue
        seen[key] = index
        kept.append((index, ex, sh))
    kept.sort(key=lambda t: t[0])
    return [ex for _, ex, _ in kept], dropped


def frozen_path(home: Path) -> Path:
    return Path(home) / "train" / FROZEN_FILE


def load_frozen(home: Path) -> tuple[list[str], set[str] | None] | None:
    """(frozen ids, keys of every case a build has seen; None in a file written before
    sites joined the split) or None where no split was frozen yet."""
    path = frozen_path(home)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        seen = doc.get("seen")
        return list(doc["ids"]), (None if seen is None else set(seen))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(str(path), [("ids", None, f"unreadable frozen split: {exc}")]) from None


def save_frozen(home: Path, ids: list[str], seen: set[str] = frozenset()) -> None:
    path = frozen_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ids": sorted(ids), "seen": sorted(seen)}, indent=1))
    tmp.replace(path)


def seen_key(text: str) -> str:
    """What the frozen file remembers of a case a build has seen (not its words)."""
    return hashlib.sha256(case_key(text).encode()).hexdigest()[:16]


def case_key(text: str) -> str:
    """What identifies a case for splitting: its words, case-folded. Not its id: an edge
    draws a fresh random id for every escalation, and the split must not depend on it."""
    return " ".join(text.lower().split())


def case_hash(text: str, purpose: str, seed: int) -> bytes:
    """A seeded hash of a case's text for one ``purpose`` ("frozen", "cal", "fold"): splits
    that depend on the words only, are stable as cases come, and differ by purpose."""
    return hashlib.sha256(f"{seed}:{purpose}:{case_key(text)}".encode()).digest()


def frozen_member(text: str, fraction: float, seed: int) -> bool:
    """Whether a case (by its input ``text``) belongs to the frozen split: a pure function
    of the text, so the bundled release (built from the bundled scenes minus their
    members) never trained on a case that any teacher home freezes for its gate, and the
    same reviews make the same split in every run."""
    return int.from_bytes(case_hash(text, "frozen", seed)[:8], "big") < fraction * 2**64


def choose_eval(examples: list[Example], fraction: float, seed: int) -> list[str]:
    """Ids of the real (non-synthetic) examples that are ``frozen_member``s; a label with
    three or more examples and no member lends its first example by hash order."""
    ids: list[str] = []
    for label in (True, False):
        pool = sorted(
            (e for e in examples if e.safety == label and e.origin not in ("synthetic", "generic")),
            key=lambda e: case_hash(e.input, "frozen", seed),
        )
        members = [e.id for e in pool if frozen_member(e.input, fraction, seed)]
        if not members and len(pool) >= 3:
            members = [pool[0].id]
        ids += members
    return ids


def site_members(examples: list[Example], seen: set[str], fraction: float, seed: int) -> list[str]:
    """Ids of a site's reviewed cases that no build has seen and whose hash puts them in the
    frozen share: the gate's view of what each site sees, never trained or calibrated on."""
    return [
        e.id
        for e in examples
        if e.site
        and e.origin in ("teacher", "person")
        and seen_key(e.input) not in seen
        and frozen_member(e.input, fraction, seed)
    ]


def build_dataset(
    cases: list[LabeledCase],
    home: Path,
    instructions: str,
    eval_fraction: float = 0.2,
    seed: int = 0,
    generic: list[Example] | None = None,
    freeze: bool = True,
) -> Dataset:
    """Redact, dedupe and split ``cases``; the evaluation split is frozen under ``home``."""
    examples, redacted = to_examples(cases)
    examples, dropped = dedupe(examples)
    by_id = {e.id: e for e in examples}
    keys = {seen_key(e.input) for e in examples}
    stored = load_frozen(home)
    joined: list[str] = []
    if stored is None:
        frozen, seen = choose_eval(examples, eval_fraction, seed), keys
        if freeze:
            logger.info("froze an evaluation split of %d cases under %s", len(frozen), home)
    else:
        frozen, seen = stored
        if seen is not None:  # a site's new reviews: a hashed share joins, never trained on
            joined = site_members(examples, seen, eval_fraction, seed)
            frozen = frozen + joined
            if joined:
                logger.info("%d new site case(s) joined the frozen split", len(joined))
        seen = (seen or set()) | keys  # a split frozen before sites joined: from now on
    if freeze:
        save_frozen(home, frozen, seen)
    missing = [i for i in frozen if i not in by_id]
    eval_ids = set(frozen) - set(missing)
    eval_set = [by_id[i] for i in sorted(eval_ids) if by_id[i].origin != "synthetic"]
    eval_shingles = [_shingles(e.input) for e in eval_set]
    train = []
    for ex in examples:
        if ex.id in eval_ids:
            continue
        sh = _shingles(ex.input)
        if any(jaccard(sh, other) >= NEAR_DUPLICATE for other in eval_shingles):
            dropped["near_eval_case"] += 1
            continue
        train.append(ex)
    train += list(generic or [])
    stats = {
        "cases": len(cases),
        "train": len(train),
        "eval": len(eval_set),
        "frozen_missing": len(missing),
        "frozen_joined": len(joined),
        "eval_sites": dict(Counter(e.site for e in eval_set if e.site)),
        "dropped": dict(dropped),
        "redacted": dict(redacted),
        "origins": dict(Counter(e.origin for e in train)),
        "train_safety": sum(e.safety for e in train),
        "eval_safety": sum(e.safety for e in eval_set),
    }
    return Dataset(train, eval_set, instructions, stats)


# ---------------------------------------------------------------- chat JSONL
def chat_record(ex: Example, split: str, instructions: str) -> dict:
    if ex.prompt is not None:
        messages = [{"role": "user", "content": ex.prompt}]
    else:
        messages = [
            {"role": "system", "content": instructions},
            {"role": "user", "content": ex.input},
        ]
    content = ex.target if ex.prompt is not None else ex.answer.strip()
    messages.append({"role": "assistant", "content": content})
    return {
        "id": ex.id,
        "split": split,
        "origin": ex.origin,
        "safety": ex.safety,
        "keywords": list(ex.keywords),
        "messages": messages,
    }


def export_chat(dataset: Dataset, path: Path) -> int:
    """Write the dataset as chat-style JSONL (already redacted); returns the line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(chat_record(ex, split, dataset.instructions), ensure_ascii=False)
        for split, examples in (("eval", dataset.eval), ("train", dataset.train))
        for ex in examples
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(lines)


def import_chat(path: Path) -> tuple[list[Example], list[Example], str]:
    """(train, eval, instructions) from chat JSONL; errors name the line and the problem."""
    path = Path(path)
    train: list[Example] = []
    evals: list[Example] = []
    instructions = ""
    for number, line in jsonl_lines(path):
        try:
            doc = json.loads(line)
            roles = {m["role"]: m["content"] for m in doc["messages"]}
            answer = roles["assistant"]
            generic = "system" not in roles
            if not generic and not answer.startswith(ANSWER_PRIMER):
                raise ValueError(f"the assistant message must start with {ANSWER_PRIMER!r}")
            if not isinstance(doc.get("safety"), bool):
                raise ValueError("'safety' must be true or false")
            split = doc.get("split", "train")
            if split not in ("train", "eval"):
                raise ValueError("'split' must be 'train' or 'eval'")
            if "system" in roles:
                instructions = instructions or roles["system"]
                prompt = None
            else:
                prompt = roles["user"]
            ex = Example(
                id=str(doc["id"]),
                input=roles["user"],
                target=answer if generic else answer[len(ANSWER_PRIMER) :],
                safety=doc["safety"],
                keywords=tuple(str(k).lower() for k in doc.get("keywords", [])),
                origin=str(doc.get("origin", "labels")),
                prompt=prompt,
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise bad_line(path, number, line, exc) from None
        (evals if split == "eval" else train).append(ex)
    return train, evals, instructions


def load_generic(path: Path) -> list[Example]:
    """Generic examples against forgetting: JSONL of {"prompt", "completion"} pairs."""
    path = Path(path)
    out = []
    for number, line in jsonl_lines(path):
        try:
            doc = json.loads(line)
            prompt, completion = str(doc["prompt"]), str(doc["completion"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise bad_line(path, number, line, exc) from None
        prompt, _ = redact_counts(prompt)
        completion, _ = redact_counts(completion)
        out.append(
            Example(f"generic-{number}", prompt, completion, False, (), "generic", prompt=prompt)
        )
    return out
