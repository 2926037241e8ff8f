"""The answer parser and the probability-based confidence, as tables."""

from __future__ import annotations

import math

import pytest

from shared.answer import parse_answer, parse_confidence, verdict_confidence
from shared.backend import TokenLogprob

# Real outputs of the bundled Gemma 3 270M (EmbeddedBackend, default skill, greedy),
# generated once with the embedded backend and pasted here: (raw, text, safety, confidence).
REAL = [
    (
        "Answer: Two children are playing in a park.\nSAFETY: no\nCONFIDENCE: 0.9",
        "Two children are playing in a park.",
        False,
        0.9,
    ),
    (
        "Answer: A person is lying motionless at the bottom of the stairs.\nSAFETY: yes\n"
        "CONFIDENCE: 0.9",
        "A person is lying motionless at the bottom of the stairs.",
        True,
        0.9,
    ),
    (
        "Answer: A man holds a kitchen knife.\nSAFETY: no\nCONFIDENCE: 0.9",
        "A man holds a kitchen knife.",
        False,
        0.9,
    ),
    (
        "Answer: A power strip is leaking water onto a desk.\nSAFETY: no\nCONFIDENCE: 0.9",
        "A power strip is leaking water onto a desk.",
        False,
        0.9,
    ),
]
# Real zero-shot outputs (instructions only, no demonstrations): the format breaks.
REAL_BROKEN = [
    "Answer: The cat is in danger.\nConfidence: I am confident that the cat is safe.\n"
    "Safety: I am sure that the cat is safe.\nFire: I am sure that the fire is",
    "Answer: I am not sure.\nI am not sure.\nI am not sure.\nI am not sure.\nI am not sure.",
]
# The real log-probabilities around the verdict of REAL[1] (top 5 at each step).
REAL_STEPS = [
    ("\n", -0.0505, {"\n": -0.0505, "\n\n": -3.5072, "<eos>": -4.6649, " (": -6.0311}),
    ("SAFETY", -0.5215, {"SAFETY": -0.5215, "CONF": -1.3503, "CON": -4.2661, "Safety": -4.607}),
    (":", -0.0039, {":": -0.0039, "\n": -7.5579, " (": -7.9772, " :": -8.1143, " ": -8.2464}),
    (" yes", -0.7252, {" yes": -0.7252, " no": -1.0169, " ": -3.3138, " Yes": -4.5308}),
    ("\n", -0.1122, {"\n": -0.1122, "\n\n": -2.924, ".": -3.9496, "<eos>": -4.3822}),
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


@pytest.mark.parametrize("raw", REAL_BROKEN)
def test_real_broken_outputs_have_no_confidence(raw):
    answer = parse_answer(raw)
    assert not answer.format_ok
    assert answer.confidence is None and answer.safety is None
    assert answer.text  # the sentence is still kept


def test_real_logprobs_give_a_probability_confidence():
    steps = [TokenLogprob(t, lp, top) for t, lp, top in REAL_STEPS]
    p_yes, p_no = math.exp(-0.7252) + math.exp(-4.5308), math.exp(-1.0169)
    assert verdict_confidence(steps) == pytest.approx(p_yes / (p_yes + p_no))
    answer = parse_answer(REAL[1][0], verdict_confidence(steps))
    assert answer.confidence == 0.9 and answer.prob_confidence == pytest.approx(0.5778, abs=1e-3)


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
