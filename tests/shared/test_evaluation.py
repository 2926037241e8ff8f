from pathlib import Path

import pytest

from shared.answer import parse_answer
from shared.config import PolicyConfig
from shared.errors import ConfigError
from shared.evaluation import (
    BUNDLED_LABELS,
    LabeledCase,
    bundled_cases,
    bundled_labels,
    cases_hash,
    evaluate,
    load_labeled,
)
from shared.release import default_release


def ans(safety, text="A knife lies on a table."):
    verdict = {True: "yes", False: "no", None: "maybe"}[safety]
    return parse_answer(f"Answer: {text}\nSAFETY: {verdict}\nCONFIDENCE: 0.8")


CASES = [
    LabeledCase("a", "knife on table", True, ("knife", "table")),
    LabeledCase("b", "cat on sofa", False, ("cat",)),
    LabeledCase("c", "smoke in kitchen", True, ("smoke",)),
    LabeledCase("d", "empty room", False, ()),
]


def test_perfect_answers_score_highest():
    perfect = evaluate(CASES, [ans(True), ans(False), ans(True), ans(False)])
    always_no = evaluate(CASES, [ans(False)] * 4)
    always_yes = evaluate(CASES, [ans(True)] * 4)
    assert perfect.safety_agreement == 1.0 and perfect.safety_recall == 1.0
    assert always_no.safety_recall == 0.0 and always_no.safety_agreement == 0.5
    assert always_yes.safety_recall == 1.0 and always_yes.safe_specificity == 0.0
    assert perfect.score > always_yes.score > always_no.score


def test_missing_verdict_counts_as_wrong_and_unformatted():
    report = evaluate(CASES[:1], [ans(None)])
    assert report.format_ok == 0.0
    assert report.safety_agreement == 0.0
    assert report.failures and report.failures[0]["id"] == "a"


def test_keyword_recall_counts_whole_words_and_plurals():
    report = evaluate(CASES[:1], [ans(True, "Two knives near tables.")])
    assert report.keyword_recall == 0.5  # "tables" matches table; "knives" is not "knife"


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        evaluate(CASES, [ans(True)])


def test_bundled_dev_scenes_and_hash():
    cases = bundled_cases()
    assert len(cases) == 40
    assert {c.safety for c in cases} == {True, False}
    assert cases_hash(cases) == cases_hash(list(reversed(cases)))
    assert cases_hash(cases) != cases_hash(cases[1:])


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_the_bundled_labels_hold_no_scene_of_the_sites_that_measure_the_loop():
    cases = bundled_labels()
    assert [len(bundled_cases(name)) for name in BUNDLED_LABELS] == [260, 40]
    assert len({c.id for c in cases}) == len(cases)  # no id twice
    # the demo's site and the held-out sites stay unseen by every release
    seen = {_norm(c.input) for c in cases}
    root = Path(__file__).resolve().parents[2]
    for unseen in ("shared/data/demo/scenes.jsonl", "bench/data/farm_site/scenes.jsonl",
                   "bench/data/quay_site/scenes.jsonl", "bench/data/heldout_scenes.jsonl"):  # fmt: skip
        assert not seen & {_norm(c.input) for c in load_labeled(root / unseen)}, unseen


def test_the_default_engines_v0_is_certified_at_the_policys_recall_target():
    calibration = default_release().calibration  # llama.cpp's, the edges' default engine
    assert calibration is not None and calibration.guaranteed
    assert calibration.recall_target == PolicyConfig().recall_target


def test_bad_labelled_line_names_the_line(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"input": "ok", "safety": true}\n{"input": "x", "safety": "maybe"}\n')
    with pytest.raises(ConfigError) as info:
        load_labeled(path)
    assert info.value.problems[0][0] == "line 2"
    assert "safety" in info.value.problems[0][2]
