"""A keyword case is cleared only near reviewed safe cases of that keyword, never near a hazard."""

import json
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load, save

from shared.backend import Generation
from shared.calibration import Calibration
from shared.config import PolicyConfig
from shared.errors import ModelError, PushRejected
from shared.evaluation import LabeledCase
from shared.head import SafetyHead, safetensors_metadata
from shared.keyword_memory import (
    cleared,
    cleared_leave_one_out,
    content_words,
    remember,
    remember_sketches,
)
from shared.policy import SAFETY_KEYWORD, PolicyContext, decide
from shared.release import build_files, check_files
from shared.skill import default_skill
from shared.student import judge, judge_prefill
from teacher.release.keyword_rule import with_sketches
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
    assert not trap.escalate and trap.to_json()["keyword_cleared"] == "words"
    visitor = run("A visitor is carrying a gun in the reception area.")
    assert visitor.escalate and visitor.reasons == (SAFETY_KEYWORD,)


# ---------------------------------------------------------------- sketches (features)
def unit(*xs):
    v = np.array(xs, dtype=float)
    return v / np.linalg.norm(v)


def plain_head(sketches=None, dim=4) -> SafetyHead:
    return SafetyHead("hidden", (1,), np.zeros(dim), np.ones(dim), np.ones(dim), -3.0,
                      sketches=sketches)  # fmt: skip


def toy_memory():
    """Two reviewed gun cases (a toy, harmless; a threat, a hazard) and a harmless fire."""
    vectors = np.array([unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)])
    sketches, source = remember_sketches(
        vectors, [False, True, False], [["gun"], ["gun"], ["fire"]]
    )
    return sketches, source


def test_a_keyword_is_near_safe_only_where_its_nearest_reviewed_case_is_a_safe_lookalike():
    sketches, source = toy_memory()
    assert sketches.keywords == ("fire", "gun") and list(source) == [2, 0, 1]
    assert sketches.near_safe(unit(1, 0.2, 0, 0)) == {"gun"}  # the toy gun, cosine 0.98
    assert sketches.near_safe(unit(0.2, 1, 0, 0)) == frozenset()  # nearest is the threat
    assert sketches.near_safe(unit(1, 0, 0, 1.5)) == frozenset()  # cosine 0.55: not near
    assert sketches.near_safe(unit(0.1, 0, 1, 0)) == {"fire"}
    assert sketches.near_safe(None) == frozenset()


def test_the_policy_clears_a_keyword_case_only_when_every_keyword_it_names_is_near_safe():
    cal = Calibration(lower=0.2, upper=0.8, recall_target=0.95, max_false_alert_rate=0.1,
                      delta=0.1, guaranteed=True, n_unsafe=100, n_safe=100)  # fmt: skip
    config = PolicyConfig(audit_every=0)

    def run(text, near):
        answer = replace(headed(0.05, text=""), keywords_near_safe=frozenset(near))
        return decide(answer, PolicyContext(0.0, 1, text, text, calibration=cal), config)

    toy = run("A toy gun lies on the stage.", {"gun"})
    assert not toy.escalate and toy.keyword_cleared == "sketches"
    both = run("A toy gun lies on the stage beside a fire.", {"gun"})
    assert both.escalate and both.reasons == (SAFETY_KEYWORD,)
    assert run("A visitor is carrying a gun in reception.", set()).escalate


def test_sketches_travel_in_the_head_file_and_a_bad_one_is_refused_before_use():
    sketches, _ = toy_memory()
    head = SafetyHead.from_bytes(plain_head(sketches).to_bytes())
    assert head.sketches.keywords == ("fire", "gun") and len(head.sketches) == 3
    assert head.keywords_near_safe(unit(1, 0.1, 0, 0) * 7) == {"gun"}  # standardised, unit
    # the student's features go through the head's own standardisation
    shifted = SafetyHead("hidden", (1,), np.full(4, 5.0), np.ones(4), np.ones(4), 0.0,
                         sketches=sketches)  # fmt: skip
    assert shifted.keywords_near_safe(np.array([6.0, 5.1, 5.0, 5.0])) == {"gun"}
    good = plain_head(sketches).to_bytes()
    tensors, meta = load(good), json.loads(safetensors_metadata(good)["head"])
    wrong = {
        "features": {**tensors, "sketch_vectors": np.zeros((3, 5), np.float16)},
        "non-finite": {**tensors, "sketch_vectors": np.full((3, 4), np.nan, np.float16)},
        "incomplete": {k: v for k, v in tensors.items() if k != "sketch_unsafe"},
        "keyword 2 of 2": {**tensors, "sketch_keyword": np.array([0, 1, 2], np.int32)},
    }
    for why, bad in wrong.items():
        data = save(bad, metadata={"head": json.dumps(meta)})
        with pytest.raises(ModelError, match=why):
            SafetyHead.from_bytes(data)
        files = build_files(1, default_skill(), None, None)
        files["head.safetensors"] = data
        with pytest.raises(PushRejected, match=why):
            check_files(rehash(files))


def rehash(files):
    """``files`` with a manifest that lists their hashes (as a sender could write it)."""
    from shared.release import MANIFEST, Manifest, file_entry

    manifest = Manifest.model_validate_json(files[MANIFEST])
    entries = [file_entry(n, d) for n, d in sorted(files.items()) if n != MANIFEST]
    out = dict(files)
    out[MANIFEST] = manifest.model_copy(update={"files": entries}).model_dump_json().encode()
    return out


def test_the_student_reads_the_near_safe_keywords_from_the_same_features_as_p_unsafe():
    sketches, _ = toy_memory()
    head = plain_head(sketches)
    gen = Generation("Answer: A toy gun.\nSAFETY: no\nCONFIDENCE: 0.9", 5,
                     hidden=[1.0, 0.1, 0.0, 0.0])  # fmt: skip
    assert judge(gen, head).keywords_near_safe == {"gun"}
    assert judge_prefill(gen, head).keywords_near_safe == {"gun"}
    assert judge(replace(gen, hidden=[0.0, 1.0, 0.0, 0.0]), head).keywords_near_safe == set()
    assert judge(gen, plain_head()).keywords_near_safe == set()  # a head without sketches


def test_a_build_remembers_reviewed_cases_and_settled_alerts_and_no_case_vouches_for_itself():
    def case(i, text, unsafe):
        return LabeledCase(id=f"c{i}", input=text, safety=unsafe)

    toys = [case(i, f"A toy gun number {i} lies in the props box.", False) for i in range(3)]
    threat = case(9, "A man points a gun at the cashier.", True)
    x = np.array([[1.0, 0.05 * i, 0, 0] for i in range(3)] + [[0, 1.0, 0, 0]])
    head, near = with_sketches(plain_head(), list(zip([*toys, threat], x, strict=True)),
                               [*toys, threat], x, PolicyConfig())  # fmt: skip
    assert near == [True, True, True, False]  # each toy is vouched for by the other toys
    alone, near = with_sketches(plain_head(), [(toys[0], x[0])], [toys[0]], x[:1], PolicyConfig())
    assert near == [False] and len(alone.sketches) == 1  # never its own neighbour
    # a settled alert that looks like the case blocks it
    alert = case(7, "A toy gun number 7 is pointed at a cashier.", True)
    _, near = with_sketches(plain_head(), [(toys[0], x[0]), (alert, x[1] + 0.01)], [toys[1]],
                            x[1:2], PolicyConfig())  # fmt: skip
    assert near == [False]
