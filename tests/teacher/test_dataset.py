import json

import pytest

from shared.errors import ConfigError
from shared.evaluation import LabeledCase, bundled_cases
from shared.messages import Escalation, Review
from teacher.data.dataset import (
    build_dataset,
    dedupe,
    export_chat,
    frozen_path,
    import_chat,
    target_for,
    to_examples,
)
from teacher.data.store import CaseStore

INSTR = "Describe the scene."


def case(i, text, safety=False, origin="labels", answer=None):
    return LabeledCase(f"c{i}", text, safety, ("word",), answer, origin)


def test_target_is_the_answer_continuation_and_the_label_verdict_wins():
    c = case(
        1, "A pan smokes.", True, answer="Answer: A pan is smoking.\nSAFETY: no\nCONFIDENCE: 0.8"
    )
    assert target_for(c) == " A pan is smoking.\nSAFETY: yes\nCONFIDENCE: 0.80"
    # no answer: the input's first sentence becomes the description
    assert target_for(case(2, "A cat sleeps. It is calm.")).startswith(" A cat sleeps.\nSAFETY: no")


def test_exact_and_near_duplicates_are_dropped_keeping_the_stronger_label():
    examples, _ = to_examples(
        [
            case(1, "A red car is parked in the street near a shop.", origin="teacher"),
            case(2, "A red car is parked in the street near a shop!", True, origin="person"),
            case(3, "A red car is parked in the street near the shop.", origin="teacher"),
            case(4, "Two dogs play in a park."),
        ]
    )
    kept, dropped = dedupe(examples)
    assert [e.id for e in kept] == ["c2", "c4"]
    assert dropped == {"exact_duplicate": 1, "near_duplicate": 1}


def test_pii_is_redacted_before_anything_is_written(tmp_path):
    cases = [case(i, f"Scene {i}: a person waves at a camera number {i}.") for i in range(10)]
    cases.append(case(99, "Mr. Brown writes to brown@example.org, phone 555-123-4567, at a desk."))
    ds = build_dataset(cases, tmp_path, INSTR, 0.2, 0)
    out = tmp_path / "chat.jsonl"
    export_chat(ds, out)
    text = out.read_text()
    assert "brown@example.org" not in text and "555-123-4567" not in text and "Brown" not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "[NAME]" in text
    assert ds.stats["redacted"] == {"email": 1, "phone": 1, "name": 1}


def test_frozen_split_is_reused_across_rounds_and_never_holds_synthetic(tmp_path):
    cases = bundled_cases("dev_scenes.jsonl")
    first = build_dataset(cases, tmp_path, INSTR, 0.25, 0)
    assert frozen_path(tmp_path).is_file()
    eval_ids = {e.id for e in first.eval}
    assert 5 <= len(eval_ids) <= 15 and 0 < sum(e.safety for e in first.eval) < len(eval_ids)
    assert not eval_ids & {e.id for e in first.train}
    more = [
        LabeledCase(
            f"synth-{i}",
            f"A synthetic scene number {i} with a ladder {i * 7}.",
            i % 2 == 0,
            (),
            None,
            "synthetic",
        )
        for i in range(20)
    ]
    second = build_dataset(cases + more, tmp_path, INSTR, 0.9, 1)  # other fraction and seed
    assert {e.id for e in second.eval} == eval_ids
    assert all(e.origin != "synthetic" for e in second.eval)
    assert sum(e.origin == "synthetic" for e in second.train) == 20


def test_training_cases_that_nearly_repeat_an_evaluation_case_are_dropped(tmp_path):
    cases = bundled_cases("dev_scenes.jsonl")
    first = build_dataset(cases, tmp_path, INSTR, 0.25, 0)
    copy = first.eval[0]
    echo = LabeledCase("late", copy.input + " ", copy.safety, (), None, "teacher")
    second = build_dataset(cases + [echo], tmp_path, INSTR, 0.25, 0)
    assert "late" not in {e.id for e in second.train}


def test_chat_jsonl_round_trip_and_errors_name_the_line(tmp_path):
    ds = build_dataset(bundled_cases("dev_scenes.jsonl"), tmp_path, INSTR, 0.25, 0)
    path = tmp_path / "chat.jsonl"
    assert export_chat(ds, path) == 40
    first = json.loads(path.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][2]["content"].startswith("Answer: ")
    train, evals, instructions = import_chat(path)
    assert instructions == INSTR
    assert sorted(train, key=lambda e: e.id) == sorted(ds.train, key=lambda e: e.id)
    assert sorted(evals, key=lambda e: e.id) == sorted(ds.eval, key=lambda e: e.id)
    path.write_text(path.read_text() + '{"id": "x", "messages": [], "safety": "maybe"}\n')
    with pytest.raises(ConfigError, match="line 41"):
        import_chat(path)


def test_reviewed_cases_in_a_real_store_become_examples(tmp_path):
    store = CaseStore(tmp_path / "store.sqlite")
    for i, text in enumerate(["A knife lies on the floor near a toddler.", "A calm office desk."]):
        store.add_case(
            Escalation(
                case_id=f"case-000{i}", edge_id="e1", created_at=0.0, source="test", input=text
            )
        )
    store.add_review(
        Review(
            case_id="case-0000",
            answer="Answer: A knife is near a toddler.\nSAFETY: yes\nCONFIDENCE: 0.9",
            safety=True,
            keywords=["knife"],
            reviewer="labels",
        )
    )
    store.add_review(
        Review(
            case_id="case-0001",
            answer="Answer: An office.\nSAFETY: no\nCONFIDENCE: 0.9",
            safety=False,
            reviewer="labels",
        )
    )
    store.correct("case-0001", safety=True, note="a person says so")
    ds = build_dataset(store.labeled_cases(), tmp_path, INSTR, 0.01, 0)
    store.close()
    by_id = {e.id: e for e in ds.train + ds.eval}
    assert by_id["case-0000"].target == " A knife is near a toddler.\nSAFETY: yes\nCONFIDENCE: 0.90"
    assert by_id["case-0001"].origin == "person" and by_id["case-0001"].safety is True


def test_synth_writes_new_redacted_inputs_seeded_from_real_ones(tmp_path):
    from teacher.data.synth import synthesize
    from tests.fakes import ScriptedBackend

    replies = iter(
        [
            "Answer: A man is cooking pasta in a kitchen.",  # repeats a seed: dropped
            "Answer: Dr. Jones drops a glass beaker that shatters on a lab floor.",
            "Answer: ok",  # too short: dropped
            "Answer: A forklift reverses towards a worker who is looking at a phone.\nmore",
        ]
    )
    backend = ScriptedBackend(lambda request: next(replies))
    seeds = ["A man is cooking pasta in a kitchen.", "A dog sleeps on a sofa.", "A car parks."]
    out = synthesize(backend, seeds, count=2, seed=1)
    assert out == [
        "Dr. [NAME] drops a glass beaker that shatters on a lab floor.",
        "A forklift reverses towards a worker who is looking at a phone.",
    ]
    assert all(" | " in r.input for r in backend.requests)  # several real seeds per prompt
    labelled = [LabeledCase(f"synth-{i}", t, True) for i, t in enumerate(out)]
    ds = build_dataset(bundled_cases("dev_scenes.jsonl") + labelled, tmp_path, INSTR, 0.5, 0)
    assert {e.origin for e in ds.train if e.id.startswith("synth-")} == {"synthetic"}
    assert not [e for e in ds.eval if e.id.startswith("synth-")]


def test_train_cli_builds_and_exports_the_dataset(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from shared.evaluation import bundled_labels

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "chat.jsonl"
    own = tmp_path / "own.yaml"  # the reviews and --labels only
    own.write_text("release:\n  bundled_labels: false\n")
    args = [sys.executable, "-m", "teacher", "train", "--home", str(tmp_path), "--no-store"]
    labels = ["--labels", "shared/data/dev_scenes.jsonl", "--dry-run"]

    def splits_of(*extra: str, home: Path = tmp_path) -> dict:
        done = subprocess.run([*args, *labels, *extra, "--home", str(home)], cwd=root,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[0])["splits"]

    splits = splits_of("--config", str(own), "--export-dataset", str(out))
    assert (
        3 <= splits["frozen"] <= 16
        and splits["fit"] + splits["calibration"] + splits["frozen"] == 40
    )
    assert len(out.read_text().splitlines()) == splits["fit"]  # the LoRA trains on fit only
    # by default every build adds the bundled scenes (the dev scenes are among them)
    splits = splits_of(home=tmp_path / "another")
    assert splits["fit"] + splits["calibration"] + splits["frozen"] == len(bundled_labels())
    empty = subprocess.run([*args, "--config", str(own)], cwd=root, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert empty.returncode == 2 and "no reviewed cases" in empty.stderr


def test_a_sites_new_reviews_join_the_frozen_split_by_hash_and_are_never_trained_on(tmp_path):
    from teacher.data.dataset import frozen_member, load_frozen

    generic = bundled_cases("dev_scenes.jsonl")
    first = build_dataset(generic, tmp_path, INSTR, 0.25, 0)
    site = [
        LabeledCase(
            f"r{i}",
            f"Camera {i} at the pool sees lane {i} and swimmer {i * 3}.",
            i % 2 == 0,
            (),
            None,
            "teacher",
            "edge-pool",
        )  # fmt: skip
        for i in range(40)
    ]
    second = build_dataset(generic + site, tmp_path, INSTR, 0.25, 0)
    joined = {e.id for e in second.eval if e.site}
    expected = {c.id for c in site if frozen_member(c.input, 0.25, 0)}
    assert joined == expected and 4 <= len(joined) <= 18  # about a quarter of 40
    assert not joined & {e.id for e in second.train}
    assert second.stats["frozen_joined"] == len(joined)
    assert second.stats["eval_sites"] == {"edge-pool": len(joined)}
    assert {e.id for e in second.eval} == {e.id for e in first.eval} | joined
    # a case trained on in one round never joins later; joined ones stay frozen
    third = build_dataset(generic + site, tmp_path, INSTR, 0.25, 0)
    assert {e.id for e in third.eval} == {e.id for e in second.eval}
    assert third.stats["frozen_joined"] == 0
    ids, seen = load_frozen(tmp_path)
    assert len(seen) == len(generic) + len(site) and set(ids) >= joined


def test_a_split_frozen_before_sites_joined_lets_only_later_reviews_in(tmp_path):
    generic = bundled_cases("dev_scenes.jsonl")
    first = build_dataset(generic, tmp_path, INSTR, 0.25, 0)
    old = [e.id for e in first.eval]
    frozen_path(tmp_path).write_text(json.dumps({"ids": old}))  # as older releases wrote it
    early = [LabeledCase(f"e{i}", f"Early review {i} of bay {i * 5} at the dock.", True, (),
                         None, "teacher", "edge-a") for i in range(30)]  # fmt: skip
    second = build_dataset(generic + early, tmp_path, INSTR, 0.25, 0)
    assert sorted(e.id for e in second.eval) == sorted(old)  # they may have been trained on
    late = [LabeledCase(f"l{i}", f"Late review {i} of gate {i * 11} at the yard.", True, (),
                        None, "teacher", "edge-a") for i in range(30)]  # fmt: skip
    third = build_dataset(generic + early + late, tmp_path, INSTR, 0.25, 0)
    assert {e.id for e in third.eval if e.site} and all(
        i.startswith("l") for i in (e.id for e in third.eval if e.site)
    )
