"""PII redaction for training data: e-mail addresses, phone numbers and detectable names.

``redact(text)`` returns the text with each finding replaced by a placeholder
(``[EMAIL]``, ``[PHONE]``, ``[NAME]``) and ``redact_counts`` says how many of each
were found. Datasets call it on every input and answer *before* anything is hashed,
exported or written to a registry, so no raw PII leaves the store.

What counts as a name is what can be told from the text alone: a capitalised word
after a title (Mr, Mrs, Ms, Dr, ...), after "named", "called", "my name is", "I am",
and a capitalised word before a possessive in the middle of a sentence that is on the
given-name list below. A name nobody marked is not found: this is a filter against
obvious leaks, not a guarantee. It knows nothing about datasets or models.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# +44 20 7946 0958, (555) 123-4567, 555-123-4567, 0171 123456, +1.555.123.4567
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)"
)
_CAP = r"[A-Z][a-z'’-]+(?:\s+[A-Z][a-z'’-]+)?"
TITLED = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam)\.?\s+({_CAP})")
INTRODUCED = re.compile(
    rf"\b(?:[Nn]amed|[Cc]alled|[Mm]y name is|[Hh]is name is|[Hh]er name is|I am|I'm)\s+({_CAP})"
)
# Common given names, matched only when capitalised (a word like "Will" at a sentence
# start is a name here too: redacting too much is the safe side).
GIVEN_NAMES = frozenset(
    """
    aaron adam alex alice amanda amy andrew anna anne anthony ben benjamin bob brian carl
    carol catherine charles charlie chris christopher claire daniel david deborah diana
    edward elizabeth emily emma eric frank george hannah harry helen henry jack james jane
    jason jennifer jessica john jonathan joseph joshua julia karen kate kevin laura linda
    lisa lucy maria mark martin mary matthew michael michelle mike nancy nicole oliver paul
    peter rachel richard robert ryan sam sarah scott sophie steven susan thomas tim tom
    victoria william
    """.split()
)
_WORD = re.compile(r"\b[A-Z][a-z]+\b")

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "name": "[NAME]"}


def redact_counts(text: str) -> tuple[str, Counter]:
    """The redacted text and how many emails, phones and names were replaced."""
    counts: Counter = Counter()

    def sub(pattern: re.Pattern, kind: str, value: str, group: int = 0) -> str:
        def repl(match: re.Match) -> str:
            counts[kind] += 1
            whole = match.group(0)
            if group == 0:
                return PLACEHOLDERS[kind]
            start, end = match.span(group)
            offset = match.start(0)
            return whole[: start - offset] + PLACEHOLDERS[kind] + whole[end - offset :]

        return pattern.sub(repl, value)

    text = sub(EMAIL, "email", text)

    def phone(match: re.Match) -> str:
        digits = sum(ch.isdigit() for ch in match.group(0))
        if 7 <= digits <= 15:
            counts["phone"] += 1
            return PLACEHOLDERS["phone"]
        return match.group(0)

    text = PHONE.sub(phone, text)
    text = sub(TITLED, "name", text, group=1)
    text = sub(INTRODUCED, "name", text, group=1)

    def given(match: re.Match) -> str:
        if match.group(0).lower() in GIVEN_NAMES:
            counts["name"] += 1
            return PLACEHOLDERS["name"]
        return match.group(0)

    text = _WORD.sub(given, text)
    return text, +counts


def redact(text: str) -> str:
    """``text`` with e-mail addresses, phone numbers and detectable names replaced."""
    return redact_counts(text)[0]
