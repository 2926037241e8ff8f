"""Self-training on the edges' own traffic: which inputs become cases, with which label,
and that they train the head but never calibrate it or reach the frozen split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.skill import default_skill
from shared.teacher_config import TeacherConfig
from teacher.data.traffic import load_traffic
from teacher.release.head_fit import crossfit, make_splits
from tests.fakes import hazard_cases


def answer(text: str, *, escalate=False, alert=False, p=0.5, **extra) -> dict:
    decision = {"escalate": escalate, "reasons": ["audit"] if escalate else []}
    return {"type": "answer", "input": text, "p_unsafe": p, "alert": alert,
            "decision": decision, **extra}  # fmt: skip


def write(path, docs, tail: str = "") -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs) + tail)


def test_what_an_edge_settled_itself_becomes_a_case_labelled_with_what_it_did(tmp_path):
    events = tmp_path / "events.jsonl"
    write(
        events,
        [
            answer("A forklift reverses towards a man.", alert=True, p=0.97),
            answer("A cat sleeps on the sofa.", p=0.01),
            answer("Smoke rises from the fryer.", escalate=True, p=0.4),  # the review labels it
            answer("No head decided this one.", p=None),
            {"type": "review", "case_id": "c1", "input": "A cat sleeps on the sofa."},
            answer("Call   Jane at jane@example.com by the door.", p=0.02),
            answer("A cat sleeps on the sofa.", alert=True, p=0.9),  # the latest decision wins
        ],
        tail='{"type": "answer", "inp',
    )  # a line still being written
    cases = {c.input: c for c in load_traffic([events])}
    assert set(cases) == {
        "A forklift reverses towards a man.",
        "A cat sleeps on the sofa.",
        "Call [NAME] at [EMAIL] by the door.",  # redacted like every other case
    }
    assert cases["A forklift reverses towards a man."].safety is True
    assert cases["A cat sleeps on the sofa."].safety is True
    assert all(c.origin == "self" and c.id.startswith("self-") for c in cases.values())
    # A cap keeps the most recently seen: the cat (seen again last) and the redacted call.
    newest = [c.input for c in load_traffic([events], limit=2)]
    assert newest == ["Call [NAME] at [EMAIL] by the door.", "A cat sleeps on the sofa."]
    assert load_traffic([events], limit=0) == []


def test_a_broken_line_in_the_middle_is_an_error_naming_it(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps(answer("A cat.")) + "\n{not json\n" + json.dumps(answer("B.")) + "\n"
    )
    with pytest.raises(ConfigError, match="line 2"):
        load_traffic([events])
    with pytest.raises(ConfigError, match="missing.jsonl"):
        load_traffic([tmp_path / "missing.jsonl"])


def test_traffic_with_a_real_label_or_in_the_frozen_split_is_dropped(tmp_path):
    cfg = TeacherConfig(home=tmp_path / "teacher")
    cases = hazard_cases(200)
    events = tmp_path / "events.jsonl"
    write(events, [answer(c.input, alert=not c.safety) for c in cases[:60]]  # wrong labels
          + [answer(f"new scene {i}", alert=i % 2 == 0) for i in range(10)])  # fmt: skip
    splits = make_splits(cfg, cases, default_skill(), load_traffic([events]))
    assert sorted(c.input for c in splits.traffic) == sorted(f"new scene {i}" for i in range(10))
    frozen = {c.input for c in splits.frozen}
    assert frozen and not frozen & {c.input for c in splits.traffic}


def reviews_and_traffic(cut: float):
    """100 reviewed cases that read feature 0, and 40 self-labelled inputs whose verdicts
    follow feature 1 above ``cut``: the site's own direction, only the traffic shows it."""
    rng = np.random.default_rng(4)
    cases = hazard_cases(100)
    x = rng.normal(size=(100, 6))
    x[:, 0] += [2.0 if c.safety else 0.0 for c in cases]
    x_extra = rng.normal(size=(40, 6))
    x_extra[:, 1] += 3.0
    return cases, x, x_extra, [bool(v > cut) for v in x_extra[:, 1]]


def test_self_labelled_cases_train_every_fold_but_are_never_scored(tmp_path):
    cfg = TeacherConfig(home=tmp_path / "teacher")
    cases, x, x_extra, y_extra = reviews_and_traffic(1.5)
    plain, scores = crossfit(cfg, x, cases, "hidden", (1, 2))
    head, with_traffic = crossfit(cfg, x, cases, "hidden", (1, 2), extra=(x_extra, y_extra))
    assert len(with_traffic) == len(scores) == 100  # only reviewed cases are scored
    assert head.info["self_labelled"] == 40 and "self_labelled" not in plain.info
    assert not np.allclose(with_traffic, scores)  # the traffic moved every fold's head
    assert abs(head.weight[1]) > abs(plain.weight[1])


def test_self_labels_weigh_self_label_weight_against_a_review(tmp_path):
    from teacher.release.head_fit import case_weights

    cfg = TeacherConfig(home=tmp_path / "teacher")
    cases, x, x_extra, y_extra = reviews_and_traffic(3.0)
    assert case_weights(cfg, cases, extra=40) is None  # weight 1: the unweighted fit
    full, _ = crossfit(cfg, x, cases, "hidden", (1, 2), extra=(x_extra, y_extra))
    cfg.release.self_label_weight = 0.1
    assert case_weights(cfg, cases, extra=2).tolist() == [1.0] * 100 + [0.1, 0.1]
    assert case_weights(cfg, cases) is None  # no self-labels: nothing to weigh
    light, scores = crossfit(cfg, x, cases, "hidden", (1, 2), extra=(x_extra, y_extra))
    assert light.info["self_label_weight"] == 0.1 and "self_label_weight" not in full.info
    assert len(scores) == 100  # reviews are still each scored once, out of fold
    # weighed less, the edge's own verdicts pull the head less along their axis
    assert abs(light.weight[1]) < abs(full.weight[1])


def test_release_self_labels_chooses_which_settled_inputs_train_the_head(tmp_path):
    from teacher.data.traffic import self_labels

    events = tmp_path / "events.jsonl"
    write(
        events,
        [
            answer("A forklift reverses towards a man.", alert=True, p=0.97),
            answer("A cat sleeps on the sofa.", p=0.01),
        ],
    )
    traffic = load_traffic([events])
    assert [c.safety for c in self_labels(traffic, "all")] == [True, False]
    assert [c.input for c in self_labels(traffic, "passed")] == ["A cat sleeps on the sofa."]
    assert self_labels(traffic, "off") == []
    with pytest.raises(ValueError, match="self_labels"):
        TeacherConfig.model_validate({"release": {"self_labels": "alerts"}})
