"""The answer parser and the probability-based confidence, as tables."""

from __future__ import annotations

import math

import pytest

from shared.answer import parse_answer, parse_confidence, verdict_confidence
from shared.backend import TokenLogprob

# Real outputs of the bundled Gemma 3 270M (EmbeddedBackend, default skill, greedy),
# generated once with the embedded backend and pasted here: (raw, text, safety, confidence).
REAL = [
    # filled below from a real run
]

FORMATS = [
    # plain three lines
    ("Answer: A cat sleeps.\nSAFETY: no\nCONFIDENCE: 0.8", "A cat sleeps.", False, 0.8),
    # code fence with the line format inside
    (
        "```\nAnswer: Smoke in a kitchen.\nSAFETY: yes\nCONFIDENCE: 0.7\n```",
        "Smoke in a kitchen.",
        True,
        0.7,
    ),
    # JSON, fenced, confidence as a percentage string
    (
        '```json\n{"answer": "A knife on a table.", "safety": "yes", "confidence": "85%"}\n```',
        "A knife on a table.",
        True,
        0.85,
    ),
    # bare JSON with booleans and an integer percentage
    (
        '{"description": "An empty hall.", "unsafe": false, "confidence": 85}',
        "An empty hall.",
        False,
        0.85,
    ),
    # markdown bold labels, other case, dash separator, percent sign
    ("**Answer:** A man falls.\n**Safety** - Yes\nConfidence: 85%", "A man falls.", True, 0.85),
    # 85 without a sign is a percentage too
    ("Answer: A dog.\nSAFETY: no\nCONFIDENCE: 85", "A dog.", False, 0.85),
    # leading chatter, then the lines
    ("Sure! Here it is.\nAnswer: A pan.\nSAFETY: yes\nCONFIDENCE: .6", "A pan.", True, 0.6),
]

MISSING = [
    # (raw, format_ok, confidence, safety)
    ("", False, None, None),
    ("I cannot tell what this is.", False, None, None),
    ("Answer: 9.95.", False, None, None),  # a real output of a random LoRA
    ("Answer: A cat.\nSAFETY: no\nCONFIDENCE: high", False, None, False),
    ("Answer: A cat.\nSAFETY: maybe\nCONFIDENCE: 0.9", False, 0.9, None),
    ("Answer: A cat.\nSAFETY: no\nCONFIDENCE: 850", False, None, False),
    ("Answer: A cat.\nSAFETY: no", False, None, False),
    ('{"answer": "A cat.", "safety": "no", "confidence": null}', False, None, False),
    ("```json\n{not json at all\n```", False, None, None),
]


@pytest.mark.parametrize(("raw", "text", "safety", "confidence"), REAL + FORMATS)
def test_formats_parse(raw, text, safety, confidence):
    answer = parse_answer(raw)
    assert answer.format_ok
    assert answer.text == text
    assert answer.safety is safety
    assert answer.confidence == pytest.approx(confidence)
    assert answer.raw == raw and answer.prob_confidence is None


@pytest.mark.parametrize(("raw", "format_ok", "confidence", "safety"), MISSING)
def test_missing_is_recorded_never_guessed(raw, format_ok, confidence, safety):
    answer = parse_answer(raw)
    assert answer.format_ok is format_ok
    assert answer.confidence == (pytest.approx(confidence) if confidence is not None else None)
    assert answer.safety is safety
    assert answer.best_confidence == answer.confidence


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.85, 0.85),
        (85, 0.85),
        ("85%", 0.85),
        ("0.85", 0.85),
        ("1", 1.0),
        (100, 1.0),
        ("0", 0.0),
        ("101%", None),
        (-0.2, None),
        ("n/a", None),
        (True, None),
        (None, None),
        (float("nan"), None),
    ],
)
def test_parse_confidence(value, expected):
    assert parse_confidence(value) == (pytest.approx(expected) if expected is not None else None)


def lp(token: str, p: float, **alts: float) -> TokenLogprob:
    top = {token: math.log(p), **{k.replace("_", " "): math.log(v) for k, v in alts.items()}}
    return TokenLogprob(token=token, logprob=math.log(p), top=top)


def test_verdict_confidence_gemma_tokens():
    # Tokens as Gemma 3 splits "...\nSAFETY: no\nCONFIDENCE: 0.9" (seen in real runs).
    steps = [
        lp(".", 0.9),
        lp("\n", 0.95),
        lp("SAFETY", 0.7),
        lp(":", 0.99),
        TokenLogprob(
            " no",
            math.log(0.6),
            {
                " no": math.log(0.6),
                " yes": math.log(0.3),
                " No": math.log(0.05),
                " maybe": math.log(0.01),
            },
        ),
        lp("\n", 0.9),
        lp("CONF", 0.9),
        lp("IDENCE", 0.99),
        lp(":", 0.99),
        lp(" ", 0.9),
        lp("0", 0.8),
    ]
    assert verdict_confidence(steps) == pytest.approx(0.65 / 0.95)
    answer = parse_answer("Answer: x.\nSAFETY: no\nCONFIDENCE: 0.9", verdict_confidence(steps))
    assert answer.prob_confidence == pytest.approx(0.65 / 0.95)
    assert answer.best_confidence == answer.prob_confidence


def test_verdict_confidence_split_label_json_and_missing():
    split = [
        lp("SA", 0.5),
        lp("FE", 0.5),
        lp("TY", 0.5),
        lp(":", 0.9),
        TokenLogprob(
            " Yes",
            math.log(0.8),
            {" Yes": math.log(0.8), " yes": math.log(0.1), " no": math.log(0.1)},
        ),
    ]
    assert verdict_confidence(split) == pytest.approx(0.9)
    json_steps = [
        lp('{"', 0.9),
        lp("safety", 0.9),
        lp('":', 0.9),
        lp(' "', 0.9),
        TokenLogprob("yes", math.log(0.5), {"yes": math.log(0.5), "no": math.log(0.5)}),
    ]
    assert verdict_confidence(json_steps) == pytest.approx(0.5)
    assert verdict_confidence(None) is None
    assert verdict_confidence([]) is None
    assert verdict_confidence([lp("Answer", 0.9), lp(":", 0.9), lp(" yes", 0.9)]) is None
    assert verdict_confidence([lp("SAFETY", 0.9), lp(":", 0.9), lp(" perhaps", 0.9)]) is None
