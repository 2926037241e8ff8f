"""The escalation policy as tables: reasons, keywords, budget, cooldown, audit, calibration."""

import pytest

from shared.answer import Answer, parse_answer
from shared.config import PolicyConfig
from shared.policy import (
    AUDIT,
    FORMAT_ERROR,
    LOW_CONFIDENCE,
    LOW_PROB_CONFIDENCE,
    SAFETY_KEYWORD,
    EscalationPolicy,
    PolicyContext,
    decide,
    find_keywords,
)
from shared.scoring import quantile

QUIET = parse_answer("Answer: A cat sleeps.\nSAFETY: no\nCONFIDENCE: 0.9")
CFG = PolicyConfig(audit_every=0, cooldown_s=0, budget_per_minute=100)


def ctx(text="A cat sleeps.", now=1000.0, processed=1, key=None, **kw) -> PolicyContext:
    return PolicyContext(now, processed, text, key or text, **kw)


def answer(text="A cat sleeps.", safety=False, conf=0.9, prob=None, ok=True) -> Answer:
    return Answer(text, safety, conf, ok, "raw", prob)


# --------------------------------------------------------------- keywords
KEYWORDS = ("fire", "smoke", "knife", "fallen", "child in danger")
EXCEPTIONS = ("fire extinguisher", "fire exit")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A pot of oil is on fire on the stove.", ["fire"]),
        ("FIRE in the kitchen", ["fire"]),
        ("Smoke, then fire.", ["fire", "smoke"]),
        ("A fire extinguisher hangs on the wall.", []),
        ("Fire Extinguisher by the door", []),
        ("A fire   extinguisher (two spaces) is mounted.", []),
        ("The fire exit sign is lit.", []),
        ("A fire next to the fire extinguisher.", ["fire"]),
        ("A firewood stack by the fireplace.", []),  # whole words only
        ("bonfire", []),
        ("A butter knife on a plate.", ["knife"]),
        ("An elderly woman has fallen on the floor.", ["fallen"]),
        ("a child in   danger near the pool", ["child in danger"]),
        ("A child in the garden.", []),
        ("", []),
    ],
)
def test_keywords_are_whole_words_with_exceptions(text, expected):
    assert find_keywords(text, KEYWORDS, EXCEPTIONS) == expected


def test_exceptions_are_configurable():
    text = "A fire extinguisher hangs on the wall."
    assert find_keywords(text, KEYWORDS, ()) == ["fire"]
    config = PolicyConfig(keyword_exceptions=[], audit_every=0)
    assert decide(QUIET, ctx(text), config).reasons == (SAFETY_KEYWORD,)
    assert decide(QUIET, ctx(text), PolicyConfig(audit_every=0)).reasons == ()


# --------------------------------------------------------------- reasons
@pytest.mark.parametrize(
    "case, ans, text, reasons",
    [
        ("confident and quiet", answer(), "A cat sleeps.", ()),
        ("keyword in input", answer(), "Smoke rises from a pan.", (SAFETY_KEYWORD,)),
        (
            "keyword in answer",
            answer("A knife lies on the floor."),
            "A kitchen.",
            (SAFETY_KEYWORD,),
        ),
        ("stated conf low", answer(conf=0.3), "A cat.", (LOW_CONFIDENCE,)),
        ("stated conf at threshold", answer(conf=0.6), "A cat.", ()),
        ("prob conf low", answer(prob=0.55), "A cat.", (LOW_PROB_CONFIDENCE,)),
        ("both low", answer(conf=0.2, prob=0.5), "A cat.", (LOW_CONFIDENCE, LOW_PROB_CONFIDENCE)),
        ("format broken", answer(conf=None, ok=False), "A cat.", (FORMAT_ERROR,)),
        (
            "everything",
            answer("fire", conf=0.1, ok=False),
            "fire",
            (SAFETY_KEYWORD, FORMAT_ERROR, LOW_CONFIDENCE),
        ),
    ],
)
def test_reasons(case, ans, text, reasons):
    decision = decide(ans, ctx(text), CFG)
    assert decision.reasons == reasons, case
    assert decision.escalate == bool(reasons), case


def test_format_errors_can_be_ignored():
    config = CFG.model_copy(update={"escalate_format_errors": False})
    assert decide(answer(ok=False), ctx(), config).reasons == ()


def test_every_escalation_has_a_reason():
    for ans in (answer(), answer(conf=0.1), answer(ok=False), answer("smoke")):
        decision = decide(ans, ctx("x"), CFG)
        assert decision.escalate <= bool(decision.reasons)


# --------------------------------------------------------------- audit cadence
@pytest.mark.parametrize(
    "audit_every, processed, audited",
    [
        (0, 25, False),
        (25, 1, False),
        (25, 24, False),
        (25, 25, True),
        (25, 50, True),
        (25, 51, False),
        (1, 7, True),
    ],
)
def test_audit_cadence(audit_every, processed, audited):
    config = CFG.model_copy(update={"audit_every": audit_every})
    decision = decide(QUIET, ctx(processed=processed), config)
    assert (AUDIT in decision.reasons) == audited
    assert decision.escalate == audited


def test_audit_cadence_over_a_run():
    policy = EscalationPolicy(CFG.model_copy(update={"audit_every": 10}))
    audited = [
        i for i in range(1, 36) if policy.decide(QUIET, f"scene {i}", f"k{i}", float(i)).escalate
    ]
    assert audited == [10, 20, 30]


# --------------------------------------------------------------- budget
@pytest.mark.parametrize(
    "budget, recent, text, escalate, suppressed",
    [
        # recent escalation times relative to now=1000
        (3, (), "A cat.", True, None),
        (3, (990.0, 995.0), "A cat.", True, None),
        (3, (950.0, 990.0, 995.0), "A cat.", False, "budget"),
        (3, (900.0, 930.0, 940.0), "A cat.", True, None),  # all older than a minute
        (3, (940.0, 940.0, 950.0), "A cat.", True, None),  # 940 is exactly 60 s ago: out
        (3, (950.0, 990.0, 995.0), "Flames in the hall.", True, None),  # safety never dropped
        (0, (), "A cat.", False, "budget"),
        (0, (), "smoke in the kitchen", True, None),
    ],
)
def test_budget(budget, recent, text, escalate, suppressed):
    config = CFG.model_copy(update={"budget_per_minute": budget})
    low = answer(conf=0.2)
    decision = decide(low, ctx(text, recent_escalations=recent), config)
    assert decision.escalate == escalate
    assert decision.suppressed == suppressed
    assert decision.reasons  # it qualified either way


def test_budget_over_a_run_keeps_every_safety_case():
    policy = EscalationPolicy(CFG.model_copy(update={"budget_per_minute": 5}))
    sent = {"low": 0, "safety": 0}
    for i in range(40):  # 40 inputs within 40 seconds; every 4th names fire
        fire = i % 4 == 0
        text = f"fire number {i}" if fire else f"scene {i}"
        decision = policy.decide(answer(conf=0.2), text, text, 1000.0 + i)
        if decision.escalate:
            sent["safety" if fire else "low"] += 1
    assert sent["safety"] == 10
    assert sent["low"] <= 5


# --------------------------------------------------------------- cooldown
@pytest.mark.parametrize(
    "cooldown, last, key, escalate, suppressed",
    [
        (30, {}, "a", True, None),
        (30, {"a": 990.0}, "a", False, "cooldown"),
        (30, {"a": 970.0}, "a", True, None),  # exactly 30 s ago
        (30, {"a": 990.0}, "b", True, None),  # another scene
        (0, {"a": 999.0}, "a", True, None),  # cooldown off
    ],
)
def test_cooldown(cooldown, last, key, escalate, suppressed):
    config = CFG.model_copy(update={"cooldown_s": cooldown})
    decision = decide(answer(conf=0.2), ctx(key=key, last_escalated=last), config)
    assert (decision.escalate, decision.suppressed) == (escalate, suppressed)


def test_cooldown_also_holds_a_persistent_safety_scene():
    policy = EscalationPolicy(CFG.model_copy(update={"cooldown_s": 30}))
    sent = [
        t
        for t in range(0, 100, 2)  # the same fire scene every 2 s for 100 s
        if policy.decide(QUIET, "fire in the hall", "frame:fire", float(t)).escalate
    ]
    assert sent == [0, 30, 60, 90]


# --------------------------------------------------------------- calibration
def test_quantile_matches_numpy_linear():
    values = [0.9, 0.1, 0.5, 0.7, 0.3]
    assert quantile(values, 0.0) == 0.1
    assert quantile(values, 1.0) == 0.9
    assert quantile(values, 0.5) == 0.5
    assert quantile(values, 0.25) == pytest.approx(0.3)
    assert quantile(values, 0.1) == pytest.approx(0.18)


@pytest.mark.parametrize(
    "recent, conf, escalate, threshold",
    [
        ((), 0.5, True, 0.6),  # too few: the fixed threshold
        (tuple(0.8 + i / 100 for i in range(9)), 0.7, False, 0.6),
        (tuple(0.8 + i / 100 for i in range(11)), 0.7, True, 0.81),  # q=0.1 of 0.80..0.90
        (tuple(0.8 + i / 100 for i in range(11)), 0.85, False, 0.81),
    ],
)
def test_target_escalation_rate_sets_the_threshold(recent, conf, escalate, threshold):
    config = CFG.model_copy(update={"target_escalation_rate": 0.1})
    decision = decide(answer(conf=conf), ctx(recent_confidences=recent), config)
    assert decision.escalate == escalate
    assert decision.threshold == pytest.approx(threshold)


def test_target_rate_is_met_over_a_stream():
    config = CFG.model_copy(update={"target_escalation_rate": 0.2, "calibration_window": 100})
    policy = EscalationPolicy(config)
    sent = 0
    for i in range(1000):
        conf = ((i * 37) % 100) / 100  # a fixed spread of confidences, well above 0.6
        conf = 0.6 + conf * 0.4
        sent += policy.decide(answer(conf=conf), f"s{i}", f"s{i}", float(i)).escalate
    assert 0.15 <= sent / 1000 <= 0.25


def test_decide_is_pure():
    context = ctx("A cat.", recent_escalations=(999.0,), last_escalated={"x": 1.0})
    first = decide(answer(conf=0.2), context, CFG)
    again = decide(answer(conf=0.2), context, CFG)
    assert first == again
    assert context.recent_escalations == (999.0,) and context.last_escalated == {"x": 1.0}


# --------------------------------------------------------------- the release's safety head
from shared.calibration import Calibration  # noqa: E402
from shared.policy import UNCERTAIN_SAFETY  # noqa: E402

CAL = Calibration(lower=0.2, upper=0.8, recall_target=0.95, max_false_alert_rate=0.1,
                  delta=0.1, guaranteed=True, n_unsafe=100, n_safe=100)  # fmt: skip


def headed(p, text="A cat sleeps.", safety=False, conf=0.9, ok=True) -> Answer:
    return Answer(text, safety, conf, ok, "raw", None, p)


@pytest.mark.parametrize(
    "case, ans, text, reasons, alert",
    [
        ("ruled out", headed(0.05), "A cat sleeps.", (), False),
        ("ruled out, low stated confidence ignored", headed(0.05, conf=0.1), "A cat.", (), False),
        ("uncertain band", headed(0.5), "A cat sleeps.", (UNCERTAIN_SAFETY,), False),
        ("lower bound is in the band", headed(0.2), "A cat sleeps.", (UNCERTAIN_SAFETY,), False),
        ("alert", headed(0.9), "A man lies still.", (), True),
        ("alert even if the words say no", headed(0.95, safety=False), "x", (), True),
        ("keyword, head alerts: caught already", headed(0.9), "Smoke rises.", (), True),
        (
            "keyword, head rules out: still escalated",
            headed(0.1),
            "Smoke rises.",
            (SAFETY_KEYWORD,),
            False,
        ),  # fmt: skip
        ("format break still escalates", headed(0.1, ok=False), "A cat.", (FORMAT_ERROR,), False),
        ("format break on an alert: it stands", headed(0.9, ok=False), "A cat.", (), True),
    ],
)
def test_the_head_decides_with_the_release_thresholds(case, ans, text, reasons, alert):
    d = decide(ans, ctx(text, calibration=CAL), CFG)
    assert d.reasons == reasons, case
    assert d.alert is alert and d.escalate is bool(reasons)
    assert d.p_unsafe == ans.p_unsafe


def test_a_release_certified_without_the_keyword_rule_does_not_escalate_keywords():
    no_rule = CAL.model_copy(update={"keywords": False})
    ruled_out = decide(headed(0.1), ctx("Smoke rises.", calibration=no_rule), CFG)
    assert not ruled_out.escalate and ruled_out.keywords == ("smoke",)
    # the band still escalates, and a release without the field keeps the rule
    assert decide(headed(0.5), ctx("Smoke rises.", calibration=no_rule), CFG).reasons == (
        UNCERTAIN_SAFETY,
    )
    legacy = Calibration.model_validate_json(CAL.model_dump_json(exclude={"keywords"}))
    assert legacy.keywords is True


def test_without_a_head_the_words_alert_and_the_confidence_rules_apply():
    d = decide(answer(safety=True, conf=0.3), ctx(calibration=CAL), CFG)
    assert d.alert and d.reasons == (LOW_CONFIDENCE,)


def test_budget_and_cooldown_never_drop_a_case_the_head_cannot_rule_out():
    config = PolicyConfig(audit_every=0, cooldown_s=60, budget_per_minute=1)
    busy = ctx(now=100.0, recent_escalations=(99.0, 99.5), last_escalated={"k": 99.0}, key="k",
               calibration=CAL)  # fmt: skip
    uncertain = decide(headed(0.5), busy, config)
    assert uncertain.escalate and uncertain.suppressed is None
    broken = decide(headed(0.05, ok=False), busy, config)
    assert not broken.escalate and broken.suppressed == "cooldown"


def test_the_stateful_policy_passes_the_release_calibration():
    policy = EscalationPolicy(PolicyConfig(audit_every=0))
    assert policy.decide(headed(0.5), "a", "a", 1.0, CAL).reasons == (UNCERTAIN_SAFETY,)
    assert policy.decide(headed(0.5), "b", "b", 2.0, None).reasons == ()  # no thresholds: no head


# --------------------------------------------------------------- audits where the head is blind
def test_a_head_audits_what_it_passes_more_often_near_its_band():
    from shared.policy import audit_probability

    assert audit_probability(0.0, 0.2, 25) == 0.25 / 25  # the floor far below the band
    assert audit_probability(0.2, 0.2, 25) == 4 / 25  # the peak at its edge
    assert audit_probability(0.1, 0.2, 25) == pytest.approx(2.125 / 25)
    assert audit_probability(0.1, 0.2, 0) == 0.0
    config = CFG.model_copy(update={"audit_every": 25})
    near, far = [], []
    for i in range(4000):
        for p, drawn in ((0.19, near), (0.001, far)):
            d = decide(headed(p), ctx(f"scene {i}", processed=i + 1, calibration=CAL), config)
            if AUDIT in d.reasons:
                assert d.escalate and d.reasons == (AUDIT,) and d.audit_p is not None
                assert d.to_json()["audit_p"] == round(d.audit_p, 6)
                drawn.append(d.audit_p)
    assert 0.12 < len(near) / 4000 < 0.19 and 0.005 < len(far) / 4000 < 0.02
    # an input the head escalates or alerts is never an audit: it is a call already
    for p in (0.5, 0.9):
        d = decide(headed(p), ctx(processed=25, calibration=CAL), config)
        assert AUDIT not in d.reasons and d.audit_p is None


def test_the_same_input_and_count_draw_the_same_audit():
    from shared.policy import audit_draw

    assert audit_draw(7, "a pool") == audit_draw(7, "a pool") != audit_draw(8, "a pool")
    assert 0 <= audit_draw(1, "x") < 1


def test_a_keyword_case_under_the_certified_floor_is_not_escalated_for_its_keyword():
    from shared.calibration import Calibration

    cal = Calibration(
        lower=0.2, upper=0.7, recall_target=0.95, max_false_alert_rate=0.1, delta=0.1,
        guaranteed=True, n_unsafe=100, n_safe=100, keyword_lower=0.05,
    )  # fmt: skip
    config = PolicyConfig(audit_every=0)
    text = "A chef slices onions with a knife at the food court."
    for p, escalated in ((0.01, False), (0.049, False), (0.05, True), (0.15, True)):
        answer = Answer("", None, None, True, "", p_unsafe=p)
        context = PolicyContext(now=0.0, processed=1, input_text=text, scene_key=text,
                                calibration=cal)  # fmt: skip
        decision = decide(answer, context, config)
        assert decision.escalate is escalated, p
        assert decision.keyword_cleared == ("" if escalated else "floor")
        assert decision.keywords == ("knife",)
