"""A keyword case is cleared only near reviewed safe cases of that keyword, never near a hazard."""

from shared.calibration import Calibration
from shared.config import PolicyConfig
from shared.keyword_memory import cleared, cleared_leave_one_out, content_words, remember
from shared.policy import SAFETY_KEYWORD, PolicyContext, decide
from tests.shared.test_policy import headed

KW = PolicyConfig().safety_keywords
REVIEWED = [
    ("A toy gun lies in the props box of the drama studio.", False, ["gun"]),
    ("The drama studio props box holds a toy gun and two hats.", False, ["gun"]),
    ("A toy gun sits on top of the props box in the drama studio.", False, ["gun"]),
    ("Smoke drifts from the sauna heater and a bather coughs.", True, ["smoke"]),
    ("Smoke from the sauna heater fills the cabin, a bather coughs.", True, ["smoke"]),
    ("Smoke from the sauna heater, the stove vents are clear.", False, ["smoke"]),
]


def test_near_reviewed_safe_cases_clear_a_keyword_and_nothing_else_does():
    memory = remember(REVIEWED, KW)
    assert cleared(memory, "In the drama studio a toy gun is in the props box again.", ["gun"], KW)
    # unlike anything reviewed: the rule stays
    assert not cleared(memory, "A visitor is carrying a gun in the reception area.", ["gun"], KW)
    # near a reviewed hazard: the rule stays, however many safe ones are near too
    assert not cleared(memory, "Smoke from the sauna heater, a bather is coughing.", ["smoke"], KW)
    # every keyword it matched must be covered
    text = "A toy gun is in the props box of the drama studio, with smoke."
    assert not cleared(memory, text, ["gun", "smoke"], KW)
    assert not cleared({}, "A toy gun in the props box.", ["gun"], KW)


def test_no_text_travels_and_no_case_vouches_for_itself():
    memory = remember(REVIEWED, KW)
    words = {w for entries in memory.values() for ws, _ in entries for w in ws}
    assert words and all(len(w) == 8 and w not in "toy gun props box drama studio" for w in words)
    assert content_words("The gun, a GUN!", ["gun"]) == frozenset()
    # one toy-gun review among others alone cannot clear itself: two others must vouch
    loo = cleared_leave_one_out(REVIEWED, KW)
    assert loo[:3] == [True, True, True] and not any(loo[3:])
    assert cleared_leave_one_out(REVIEWED[1:], KW)[:2] == [False, False]


def test_the_policy_escalates_a_keyword_case_unless_the_release_memory_clears_it():
    cal = Calibration(lower=0.2, upper=0.8, recall_target=0.95, max_false_alert_rate=0.1,
                      delta=0.1, guaranteed=True, n_unsafe=100, n_safe=100,
                      keyword_memory=remember(REVIEWED, KW))  # fmt: skip
    cal = Calibration.model_validate_json(cal.model_dump_json())  # as an edge reads it
    config = PolicyConfig(audit_every=0)

    def run(text):
        return decide(headed(0.05, text=""), PolicyContext(0.0, 1, text, text, calibration=cal),
                      config)  # fmt: skip

    trap = run("In the drama studio a toy gun is in the props box again.")
    assert not trap.escalate and trap.keyword_cleared and trap.to_json()["keyword_cleared"]
    visitor = run("A visitor is carrying a gun in the reception area.")
    assert visitor.escalate and visitor.reasons == (SAFETY_KEYWORD,)
