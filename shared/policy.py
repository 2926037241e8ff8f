"""The escalation policy: should this answer go to the teacher, and why.

``decide(answer, context, config) -> Decision`` is a pure function. It reads no
clock and does no I/O: the caller passes the time, the recent history and the release's
calibration in a ``PolicyContext`` and applies the decision to its own state
(``EscalationPolicy`` below is that small stateful wrapper).

With a release's safety head (``answer.p_unsafe``) and its calibration
(``shared.calibration``: thresholds chosen by the teacher so that system safety recall
reaches ``recall_target`` with a finite-sample guarantee) the head decides:

- p_unsafe >= upper: a local alert (``Decision.alert``), no teacher needed;
- lower <= p_unsafe < upper: ``uncertain_safety``, escalated;
- p_unsafe < lower: ruled out; it passes unless a rule below escalates it.

Without a head, the answer's own SAFETY line is the alert and the confidence rules
apply. Reasons, checked in this order:

- ``safety_keyword``   a configured keyword is in the input or the answer, as a whole
                       word (``keyword_exceptions`` phrases such as "fire extinguisher"
                       are blanked out first, so "fire extinguisher" alone does not count
                       but "fire next to the fire extinguisher" does); with a head, only
                       when the head does not alert already, and only if the release's
                       calibration kept the rule (``Calibration.keywords``), and not
                       where p_unsafe is under the release's ``keyword_lower`` (a floor
                       certified on keyword hazards, ``shared.calibration``) or the
                       release's reviewed cases of that keyword near it were all safe
                       (``shared.keyword_memory``: by their words, or by the student's
                       features where each keyword's nearest reviewed case is a safe
                       lookalike, ``Answer.keywords_near_safe``); each sets
                       ``Decision.keyword_cleared``
- ``uncertain_safety`` the head's p_unsafe is in the calibrated band
- ``format_error``     the answer broke the three-line format (with a head: only where
                       the head does not alert; an alert already stands, and under
                       ``answer: when_needed`` a passed input has no sentence to break)
- ``low_confidence``   (no head) the stated confidence is under the threshold
- ``low_prob_confidence`` (no head) the probability-based confidence is under it
- ``audit``            with a head: an input it would pass, drawn with probability
                       ``audit_probability`` (about ``audit_every`` times as often near
                       the band as the nominal rate 1/``audit_every``, a quarter of it far
                       below), so audits look where the head is least sure; the draw is a
                       hash of the input and its count, and the probability travels with
                       the case (``Decision.audit_p``) so that recall estimated from audits
                       stays unbiased (``shared.scoring.audit_estimate``). Without a head:
                       every ``audit_every``-th processed input.

Then two limits may suppress an escalation (``Decision.suppressed``): ``cooldown``
(the same scene key escalated within ``cooldown_s``, so one persistent scene is not
escalated frame after frame) and ``budget`` (at most ``budget_per_minute``
escalations in the last 60 s). Neither drops a case the head cannot rule out
(``uncertain_safety``), and the budget never drops a safety-keyword case.

With ``target_escalation_rate`` set (no head), the threshold is that quantile of the
recent best confidences (RouteLLM-style calibration) once ``MIN_CALIBRATION`` are known.

This module knows nothing about models, sources, sockets or files.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from shared.answer import Answer
from shared.calibration import Calibration
from shared.config import PolicyConfig
from shared.keyword_memory import cleared
from shared.scoring import quantile

SAFETY_KEYWORD = "safety_keyword"
UNCERTAIN_SAFETY = "uncertain_safety"
FORMAT_ERROR = "format_error"
LOW_CONFIDENCE = "low_confidence"
LOW_PROB_CONFIDENCE = "low_prob_confidence"
AUDIT = "audit"
JUDGE_ERROR = "judge_error"  # the input could not be judged (set by the daemon, not here)
REASONS = (
    SAFETY_KEYWORD,
    UNCERTAIN_SAFETY,
    FORMAT_ERROR,
    LOW_CONFIDENCE,
    LOW_PROB_CONFIDENCE,
    AUDIT,
    JUDGE_ERROR,
)
BUDGET_WINDOW_S = 60.0
MIN_CALIBRATION = 10
# A passed input's audit probability, in units of the nominal rate 1/audit_every: from
# AUDIT_FLOOR far below the band up to AUDIT_PEAK at its lower edge. The floor bounds the
# inverse-probability weights (at most 4 x audit_every), so no passed input is unseen.
AUDIT_FLOOR, AUDIT_PEAK = 0.25, 4.0


@dataclass(frozen=True)
class PolicyContext:
    now: float  # seconds (any clock, as long as the caller is consistent)
    processed: int  # 1-based count of processed inputs, this one included
    input_text: str
    scene_key: str  # what "the same scene" means for the cooldown
    recent_escalations: tuple[float, ...] = ()  # times of escalations actually sent
    last_escalated: Mapping[str, float] = field(default_factory=dict)  # scene key -> time
    recent_confidences: tuple[float, ...] = ()  # for target_escalation_rate
    calibration: Calibration | None = None  # the release's thresholds on p_unsafe


@dataclass(frozen=True)
class Decision:
    escalate: bool
    reasons: tuple[str, ...]  # why it qualified (also kept when suppressed)
    suppressed: str | None = None  # "cooldown" or "budget" when it qualified but is not sent
    keywords: tuple[str, ...] = ()  # safety keywords that matched
    threshold: float = 0.0  # the confidence threshold that was applied
    alert: bool = False  # the student alerts locally (the head above upper, or SAFETY: yes)
    p_unsafe: float | None = None
    audit_p: float | None = None  # an audit's inclusion probability (None: not audited)
    # what cleared its keywords: "floor" (p_unsafe under keyword_lower), "words" (near
    # reviewed safe cases by their words) or "sketches" (by the student's features); "": none
    keyword_cleared: str = ""

    @property
    def safety_keyword(self) -> bool:
        return bool(self.keywords)

    @property
    def outcome(self) -> str:
        """What the system does with the input: ``alert`` locally, ``escalate``, or ``pass``."""
        if self.alert:
            return "alert"
        return "escalate" if self.escalate else "pass"

    def to_json(self) -> dict:
        return {
            "escalate": self.escalate,
            "reasons": list(self.reasons),
            "suppressed": self.suppressed,
            "keywords": list(self.keywords),
            "threshold": round(self.threshold, 4),
            "alert": self.alert,
            **({"audit_p": round(self.audit_p, 6)} if self.audit_p is not None else {}),
            **({"keyword_cleared": self.keyword_cleared} if self.keyword_cleared else {}),
        }


@lru_cache(maxsize=32)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    words = [p.strip() for p in phrases if p.strip()]
    if not words:
        return None
    # Longest first, so "fire extinguisher" wins over "fire"; whitespace inside a phrase
    # matches any run of whitespace; \b on both ends makes matching whole-word.
    alternatives = sorted({r"\s+".join(map(re.escape, w.split())) for w in words}, key=len)
    return re.compile(r"\b(" + "|".join(reversed(alternatives)) + r")\b", re.IGNORECASE)


def find_keywords(text: str, keywords: tuple[str, ...], exceptions: tuple[str, ...]) -> list[str]:
    """Configured keywords found in ``text`` as whole words, outside exception phrases."""
    pattern = _phrase_pattern(keywords)
    if pattern is None or not text:
        return []
    blank = _phrase_pattern(exceptions)
    if blank is not None:
        text = blank.sub(" ", text)
    found = {" ".join(m.group(1).lower().split()) for m in pattern.finditer(text)}
    return sorted(found)


def audit_probability(p_unsafe: float, lower: float, audit_every: int) -> float:
    """The chance that an input the head passes (``p_unsafe < lower``) is audited: linear in
    ``p_unsafe / lower`` from ``AUDIT_FLOOR`` to ``AUDIT_PEAK`` times 1/``audit_every``."""
    if not audit_every:
        return 0.0
    x = min(max(p_unsafe / lower, 0.0), 1.0) if lower > 0 else 1.0
    return min(1.0, (AUDIT_FLOOR + (AUDIT_PEAK - AUDIT_FLOOR) * x) / audit_every)


def audit_draw(processed: int, text: str) -> float:
    """A uniform number in [0, 1) from the input and its count: reproducible, so two
    releases scored on the same cases draw alike, and unrelated to the label."""
    digest = hashlib.sha256(f"audit:{processed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def text_scene_key(text: str) -> str:
    """What "the same scene" means for a text input: its words, case-folded."""
    return "text:" + " ".join(text.lower().split())


def threshold_for(context: PolicyContext, config: PolicyConfig) -> tuple[float, bool]:
    """(threshold, calibrated): the quantile of recent confidences once enough are known."""
    recent = context.recent_confidences[-config.calibration_window :]
    if config.target_escalation_rate is not None and len(recent) >= MIN_CALIBRATION:
        return quantile(recent, config.target_escalation_rate), True
    return config.confidence_threshold, False


def decide(answer: Answer, context: PolicyContext, config: PolicyConfig) -> Decision:
    """Whether to escalate ``answer`` and why; pure (see the module docstring)."""
    keywords = tuple(config.safety_keywords)
    exceptions = tuple(config.keyword_exceptions)
    matched = sorted(
        set(find_keywords(context.input_text, keywords, exceptions))
        | set(find_keywords(answer.text, keywords, exceptions))
    )
    calibration = context.calibration
    head = calibration is not None and answer.p_unsafe is not None
    threshold = 0.0
    reasons: list[str] = []
    keyword_cleared = ""
    if head:
        zone = calibration.zone(answer.p_unsafe)
        alert = zone == "alert"
        if matched and not alert and calibration.keywords:
            memory = calibration.keyword_memory
            if answer.p_unsafe < calibration.keyword_lower:
                keyword_cleared = "floor"  # under the floor certified on keyword hazards
            elif memory and cleared(memory, context.input_text, matched, keywords):
                keyword_cleared = "words"  # near reviewed safe cases of every keyword
            elif set(matched) <= answer.keywords_near_safe:
                keyword_cleared = "sketches"  # each keyword's nearest review: a safe lookalike
            else:
                reasons.append(SAFETY_KEYWORD)
        if zone == "uncertain":
            reasons.append(UNCERTAIN_SAFETY)
        if not answer.format_ok and config.escalate_format_errors and not alert:
            reasons.append(FORMAT_ERROR)  # an alert stands whatever its sentence looks like
    else:
        alert = answer.safety is True
        threshold, calibrated = threshold_for(context, config)
        if matched:
            reasons.append(SAFETY_KEYWORD)
        if not answer.format_ok and config.escalate_format_errors:
            reasons.append(FORMAT_ERROR)
        if calibrated:
            best = answer.best_confidence
            if best is not None and best < threshold:
                reasons.append(
                    LOW_PROB_CONFIDENCE if answer.prob_confidence is not None else LOW_CONFIDENCE
                )
        else:
            if answer.confidence is not None and answer.confidence < threshold:
                reasons.append(LOW_CONFIDENCE)
            if answer.prob_confidence is not None and answer.prob_confidence < threshold:
                reasons.append(LOW_PROB_CONFIDENCE)
    audit_p = None
    if head and not reasons and not alert and config.audit_every:
        chance = audit_probability(answer.p_unsafe, calibration.lower, config.audit_every)
        if audit_draw(context.processed, context.input_text) < chance:
            reasons.append(AUDIT)
            audit_p = chance
    elif not head and config.audit_every and context.processed % config.audit_every == 0:
        reasons.append(AUDIT)
        audit_p = 1.0 / config.audit_every  # systematic: one in every audit_every
    done = {
        "keywords": tuple(matched),
        "threshold": threshold,
        "alert": alert,
        "p_unsafe": answer.p_unsafe,
        "audit_p": audit_p,
        "keyword_cleared": keyword_cleared,
    }
    if not reasons:
        return Decision(False, (), None, **done)

    undecided = UNCERTAIN_SAFETY in reasons  # the head cannot rule it out: never dropped
    last = context.last_escalated.get(context.scene_key)
    if (
        not undecided
        and config.cooldown_s > 0
        and last is not None
        and context.now - last < config.cooldown_s
    ):
        return Decision(False, tuple(reasons), "cooldown", **done)
    in_window = sum(1 for t in context.recent_escalations if context.now - t < BUDGET_WINDOW_S)
    keyword_case = SAFETY_KEYWORD in reasons
    if not keyword_case and not undecided and in_window >= config.budget_per_minute:
        return Decision(False, tuple(reasons), "budget", **done)
    return Decision(True, tuple(reasons), None, **done)


def needs_sentence(answer: Answer, context: PolicyContext, config: PolicyConfig) -> bool:
    """Whether an input judged from its prefill alone (``answer``: the head's p(unsafe),
    no text) needs the sentence: the head alerts, or any reason would escalate it (a
    keyword in the input, the band, an audit; suppressed or not), or it is drawn for
    ``sentence_share`` (a hash of the input and its count, so the teacher's harness draws
    alike). Always True without a head's judgement and the release's calibration (the
    confidence rules need the text)."""
    if context.calibration is None or answer.p_unsafe is None:
        return True
    decision = decide(answer, context, config)
    if decision.alert or decision.reasons:
        return True
    return bool(config.sentence_share) and sentence_draw(context) < config.sentence_share


def sentence_draw(context: PolicyContext) -> float:
    """A uniform number in [0, 1) from the input and its count, apart from the audit's."""
    digest = hashlib.sha256(f"sentence:{context.processed}:{context.input_text}".encode())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


class EscalationPolicy:
    """Keeps the history ``decide`` needs (escalation times, cooldown keys, confidences).

    Not thread-safe: one daemon loop owns it.
    """

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.processed = 0
        self._escalations: deque[float] = deque()
        self._last: dict[str, float] = {}
        self._confidences: deque[float] = deque(maxlen=config.calibration_window)

    def needs_sentence(
        self, input_text: str, scene_key: str, now: float, calibration: Calibration | None
    ) -> Callable[[Answer], bool]:
        """For ``Student.answer``: whether the next input (the one ``decide`` is called
        with next) needs its sentence, judged from its prefill; changes no state."""

        def check(answer: Answer) -> bool:
            context = self._context(self.processed + 1, input_text, scene_key, now, calibration)
            return needs_sentence(answer, context, self.config)

        return check

    def decide(
        self,
        answer: Answer,
        input_text: str,
        scene_key: str,
        now: float,
        calibration: Calibration | None = None,
    ) -> Decision:
        self.processed += 1
        while self._escalations and now - self._escalations[0] >= BUDGET_WINDOW_S:
            self._escalations.popleft()
        horizon = self.config.cooldown_s
        if len(self._last) > 4096:  # forget keys whose cooldown is over
            self._last = {k: t for k, t in self._last.items() if now - t < horizon}
        context = self._context(self.processed, input_text, scene_key, now, calibration)
        decision = decide(answer, context, self.config)
        if answer.best_confidence is not None:
            self._confidences.append(answer.best_confidence)
        if decision.escalate:
            self._escalations.append(now)
            self._last[scene_key] = now
        return decision

    def _context(self, processed, input_text, scene_key, now, calibration) -> PolicyContext:
        return PolicyContext(
            now=now,
            processed=processed,
            input_text=input_text,
            scene_key=scene_key,
            recent_escalations=tuple(self._escalations),
            last_escalated=self._last,
            recent_confidences=tuple(self._confidences),
            calibration=calibration,
        )
