"""Turning a model's raw text into a typed Answer.

The student is asked for three lines::

    Answer: <one short factual sentence>
    SAFETY: yes|no
    CONFIDENCE: 0.85

Real models drift: code fences, JSON objects, "Confidence: 85%", "Safety - Yes",
missing lines. ``parse_answer`` accepts all of those and records what it could not
find as missing (None), never guessed. A stated confidence of 85 or 85% is 0.85.
``format_ok`` is True only when a sentence, a verdict and a confidence were all found.

``verdict_confidence`` computes a probability-based confidence from token
log-probabilities (the probability mass the model put on its own yes/no verdict),
so the escalation policy need not trust the number the model writes.

It knows nothing about backends or prompts beyond the output format.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass

from shared.backend import TokenLogprob

YES = {"yes", "true", "unsafe", "y", "1", "alert"}
NO = {"no", "false", "safe", "n", "0", "none"}
_FENCE = re.compile(r"```(?:json|text)?\s*(.*?)```", re.S | re.I)
_LINE = re.compile(
    r"^\s*[*_#>-]*\s*(answer|description|scene|safety|unsafe|confidence)\s*[*_]*\s*[:=\-–]\s*(.*)$",
    re.I,
)
_NUMBER = re.compile(r"^[\s*_]*(\d+(?:\.\d+)?|\.\d+)\s*(%?)")


@dataclass(frozen=True)
class Answer:
    text: str  # the description sentence ("" when none was found)
    safety: bool | None
    confidence: float | None  # as stated by the model, 0..1; None when missing/unparseable
    format_ok: bool
    raw: str
    prob_confidence: float | None = None  # from log-probabilities, where the backend has them
    p_unsafe: float | None = None  # the release's safety head (shared.student), where it has one
    # keywords whose nearest reviewed case (the head's keyword sketches) is a safe lookalike
    keywords_near_safe: frozenset[str] = frozenset()

    @property
    def best_confidence(self) -> float | None:
        """The probability-based confidence if known, else the stated one."""
        return self.prob_confidence if self.prob_confidence is not None else self.confidence


def parse_confidence(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number, percent = float(value), False
    else:
        match = _NUMBER.match(str(value))
        if not match:
            return None
        number, percent = float(match.group(1)), bool(match.group(2))
    if percent or number > 1:
        number /= 100.0
    if not math.isfinite(number) or number < 0 or number > 1:
        return None
    return number


def parse_safety(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    words = re.findall(r"[a-z0-9]+", str(value).lower())
    if not words:
        return None
    if words[0] in YES:
        return True
    if words[0] in NO:
        return False
    return None


def _from_json(body: str) -> dict | None:
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        doc = json.loads(body[start : end + 1])
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def parse_answer(raw: str, prob_confidence: float | None = None) -> Answer:
    body = raw
    fence = _FENCE.search(body)
    if fence:
        body = fence.group(1)
    text, safety, confidence = "", None, None
    doc = _from_json(body)
    if doc is not None:
        lower = {str(k).lower(): v for k, v in doc.items()}
        text = str(lower.get("answer") or lower.get("description") or "").strip()
        safety = parse_safety(lower.get("safety", lower.get("unsafe")))
        confidence = parse_confidence(lower.get("confidence"))
    else:
        for line in body.splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            key, value = match.group(1).lower(), match.group(2).strip()
            if key in ("answer", "description", "scene") and not text:
                text = value.strip("*_ ").strip()
            elif key in ("safety", "unsafe") and safety is None:
                safety = parse_safety(value)
            elif key == "confidence" and confidence is None:
                confidence = parse_confidence(value)
    format_ok = bool(text) and safety is not None and confidence is not None
    return Answer(text, safety, confidence, format_ok, raw, prob_confidence)


_VERDICT_LABEL = re.compile(r"(safety|unsafe)[\"'*_\s]*[:=\-–][\s\"'*_]*", re.I)
_PUNCT = " \t\r\n\"'*_.,:;!()[]{}▁"


def _verdict_of(token: str) -> bool | None:
    """True / False when a token is a yes / no verdict word (any case, quotes, spaces)."""
    word = token.strip(_PUNCT).lower()
    if word in ("yes", "true", "unsafe", "y"):
        return True
    if word in ("no", "false", "safe", "n"):
        return False
    return None


def verdict_confidence(logprobs: list[TokenLogprob] | None) -> float | None:
    """Probability the model gave its own yes/no safety verdict, renormalised over yes and no.

    The generated tokens are joined back into text; after the first ``SAFETY:`` label
    (``"safety": "``, ``Safety -`` ... in any case, however the label itself was split
    into tokens) the token that holds the verdict is found, and the probability mass of
    its alternatives is summed per side (`` yes``, ``Yes``, ``"yes`` count as yes)::

        p(chosen side) / (p(yes) + p(no))

    None when the backend gave no log-probabilities or no verdict token follows a label.
    Use it with ``parse_answer``::

        gen = backend.generate(request)
        answer = parse_answer(gen.text, prob_confidence=verdict_confidence(gen.logprobs))
        answer.best_confidence  # the probability-based one when known, else the stated one
    """
    if not logprobs:
        return None
    starts, text = [], ""
    for step in logprobs:
        starts.append(len(text))
        text += step.token
    for match in _VERDICT_LABEL.finditer(text):
        index = bisect.bisect_right(starts, match.end()) - 1
        if index < 0 or index >= len(logprobs):
            continue
        step = logprobs[index]
        if match.end() >= starts[index] + len(step.token):
            index += 1  # the label ended exactly at a token boundary
            if index >= len(logprobs):
                return None
            step = logprobs[index]
        chosen = _verdict_of(step.token)
        if chosen is None:
            return None
        candidates = dict(step.top)
        candidates.setdefault(step.token, step.logprob)
        p_yes = p_no = 0.0
        for token, logprob in candidates.items():
            side = _verdict_of(token)
            if side is True:
                p_yes += math.exp(logprob)
            elif side is False:
                p_no += math.exp(logprob)
        total = p_yes + p_no
        if total <= 0:
            return None
        return (p_yes if chosen else p_no) / total
    return None
