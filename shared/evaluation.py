"""Labelled cases and the metrics both upskill and training gate on.

A labelled case is an input with the verdict a person or a strong teacher gave
(``safety``, ``keywords``, optionally the ideal ``answer``). ``evaluate`` compares
the student's parsed answers with those labels:

- format: share of answers with a sentence, a verdict and a confidence;
- safety agreement: share whose verdict equals the label (a missing verdict is wrong);
- safety recall: of the safety cases, share flagged (the number that matters most);
- keyword recall: share of label keywords named in the answer sentence (whole words,
  with a plural 's' tolerated);
- mean generated tokens.

``score`` folds them into one number in [0, 1] that ranks candidates; recall on safety
cases weighs most. It knows nothing about models: callers pass parsed answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from shared.answer import Answer
from shared.errors import ConfigError

WEIGHTS = {"format": 0.2, "agreement": 0.3, "recall": 0.35, "keywords": 0.1, "brevity": 0.05}


@dataclass(frozen=True)
class LabeledCase:
    id: str
    input: str
    safety: bool
    keywords: tuple[str, ...] = ()
    answer: str | None = None
    origin: str = "labels"  # labels | teacher | person | synthetic
    site: str = ""  # the edge whose traffic it came from (reviewed cases); "" = generic

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["keywords"] = list(self.keywords)
        if not self.site:
            doc.pop("site")  # generic cases hash as they always did
        return doc


def jsonl_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of each non-blank line of a JSONL file; ConfigError if unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [("<file>", str(path), exc.strerror or str(exc))]) from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 4]
        raise ConfigError(
            str(path), [(f"line {line}, byte {exc.start}", bad, "not UTF-8 text")]
        ) from None
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def bad_line(path: Path, number: int, line: str, exc: Exception) -> ConfigError:
    """The error for a JSONL line that does not parse or validate, naming the line."""
    return ConfigError(str(path), [(f"line {number}", line[:80], str(exc))])


def load_labeled(path: Path | str) -> list[LabeledCase]:
    """Read labelled JSONL (input, safety, keywords[, id, answer]); errors name the line."""
    path = Path(path)
    cases: list[LabeledCase] = []
    lines = jsonl_lines(path)
    if not lines:
        raise ConfigError(str(path), [("<file>", path.name, "empty: no labelled cases in it")])
    for number, line in lines:
        try:
            doc = json.loads(line)
            if not isinstance(doc.get("input"), str) or not doc["input"].strip():
                raise ValueError("'input' must be a non-empty string")
            if not isinstance(doc.get("safety"), bool):
                raise ValueError("'safety' must be true or false")
            keywords = doc.get("keywords", [])
            if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
                raise ValueError("'keywords' must be a list of strings")
        except (json.JSONDecodeError, ValueError, AttributeError) as exc:
            raise bad_line(path, number, line, exc) from None
        cases.append(
            LabeledCase(
                id=str(doc.get("id") or f"{path.stem}-{number}"),
                input=doc["input"].strip(),
                safety=doc["safety"],
                keywords=tuple(k.lower() for k in keywords),
                answer=doc.get("answer"),
                origin=doc.get("origin", "labels"),
            )
        )
    return cases


#: The labelled scenes every release is fitted and certified on (``shared/data``): short
#: one-line scenes of many domains and a development sample (300 in all).
BUNDLED_LABELS = ("scenes.jsonl", "dev_scenes.jsonl")


def bundled_cases(name: str = "dev_scenes.jsonl") -> list[LabeledCase]:
    """Labelled scenes shipped with the project (one of ``BUNDLED_LABELS``)."""
    return load_labeled(bundled_path(name))


def bundled_path(name: str) -> Path:
    return Path(str(files("shared").joinpath(f"data/{name}")))


def bundled_labels() -> list[LabeledCase]:
    """Every labelled scene the teacher fits and certifies releases on (``BUNDLED_LABELS``)."""
    return [case for name in BUNDLED_LABELS for case in bundled_cases(name)]


def cases_hash(cases: list[LabeledCase]) -> str:
    digest = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.id):
        digest.update(json.dumps(case.to_json(), sort_keys=True).encode())
    return digest.hexdigest()


def keyword_hits(keywords: tuple[str, ...], text: str) -> int:
    words = set(re.findall(r"[a-z]+", text.lower()))
    return sum(1 for k in keywords if k in words or k + "s" in words or k.rstrip("s") in words)


@dataclass
class EvalReport:
    n: int = 0
    format_ok: float = 0.0
    safety_agreement: float = 0.0
    safety_recall: float = 0.0  # on safety cases
    safe_specificity: float = 0.0  # on non-safety cases
    keyword_recall: float = 0.0
    mean_tokens: float = 0.0
    score: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        doc = asdict(self)
        doc.pop("failures")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in doc.items()}


def evaluate(
    cases: list[LabeledCase],
    answers: list[Answer],
    tokens: list[int] | None = None,
    max_tokens: int = 48,
) -> EvalReport:
    if len(cases) != len(answers):
        raise ValueError(f"{len(cases)} cases but {len(answers)} answers")
    if not cases:
        return EvalReport()
    n = len(cases)
    tokens = tokens or [0] * n
    fmt = sum(a.format_ok for a in answers) / n
    agree = sum(a.safety == c.safety for c, a in zip(cases, answers, strict=True)) / n
    pos = [(c, a) for c, a in zip(cases, answers, strict=True) if c.safety]
    neg = [(c, a) for c, a in zip(cases, answers, strict=True) if not c.safety]
    recall = sum(a.safety is True for _, a in pos) / len(pos) if pos else 1.0
    spec = sum(a.safety is False for _, a in neg) / len(neg) if neg else 1.0
    kw_total = sum(len(c.keywords) for c in cases)
    kw_hit = sum(keyword_hits(c.keywords, a.text) for c, a in zip(cases, answers, strict=True))
    kw = kw_hit / kw_total if kw_total else 1.0
    mean_tokens = sum(tokens) / n
    brevity = 1.0 - min(1.0, mean_tokens / max(1, max_tokens))
    # Agreement alone rewards "always no"; balanced agreement does not.
    balanced = (recall + spec) / 2
    score = (
        WEIGHTS["format"] * fmt
        + WEIGHTS["agreement"] * balanced
        + WEIGHTS["recall"] * recall
        + WEIGHTS["keywords"] * kw
        + WEIGHTS["brevity"] * brevity
    )
    failures = [
        {"id": c.id, "input": c.input, "label": c.safety, "got": a.safety, "raw": a.raw[:200]}
        for c, a in zip(cases, answers, strict=True)
        if a.safety != c.safety or not a.format_ok
    ]
    return EvalReport(n, fmt, agree, recall, spec, kw, mean_tokens, score, failures)
