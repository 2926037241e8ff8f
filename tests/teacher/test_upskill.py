"""Upskill logic with the scripted backend: splits, candidates, the writer and its JSON
repair, scoring, and the held-out comparison, and the winner handed to the release build."""

import json
import random
import sys
import uuid

import pytest

from shared.backend import GenerateRequest
from shared.errors import TrainingError
from shared.evaluation import LabeledCase, bundled_cases, bundled_labels, cases_hash
from shared.messages import Escalation, Review
from shared.skill import Skill, default_skill
from shared.teacher_config import UpskillConfig
from teacher.data.evalset import load_cases, merge_cases, split_cases, with_bundled
from teacher.data.store import CaseStore, default_store_path
from teacher.improve import candidates as cand
from teacher.improve.report import write_report
from teacher.improve.upskill import run_upskill
from tests.fakes import ScriptedBackend

CASES = bundled_cases()
FAST = UpskillConfig(candidates=4, rounds=2, demos=4)


def truth(text: str) -> bool:
    return next(c.safety for c in CASES if c.input == text)


def student(good_when):
    """A scripted student: the right verdict when ``good_when(request)``, else always 'no'."""

    def answer(req: GenerateRequest) -> str:
        verdict = truth(req.input) if good_when(req) else False
        return f"Answer: {req.input}\nSAFETY: {'yes' if verdict else 'no'}\nCONFIDENCE: 0.8"

    return ScriptedBackend(answer)


# ---------------------------------------------------------------- evaluation set
def test_split_is_disjoint_stratified_deterministic_and_stable():
    ev = split_cases(CASES, 0.3, 0.4, seed=0)
    ids = [c.id for c in ev.train + ev.select + ev.holdout]
    assert sorted(ids) == sorted(c.id for c in CASES)  # a partition
    assert len(ev.holdout) == 12 and sum(c.safety for c in ev.holdout) == 6
    assert sum(c.safety for c in ev.select) * 2 == len(ev.select)
    again = split_cases(list(reversed(CASES)), 0.3, 0.4, seed=0)
    assert {c.id for c in again.holdout} == {c.id for c in ev.holdout}
    assert ev.hashes()["holdout"] == cases_hash(ev.holdout)
    other = split_cases(CASES, 0.3, 0.4, seed=1)
    assert {c.id for c in other.holdout} != {c.id for c in ev.holdout}
    # Adding unrelated cases moves few held-out cases (ranks are per case id).
    extra = [LabeledCase(f"new-{i}", f"new scene {i}", i % 2 == 0) for i in range(4)]
    grown = split_cases(CASES + extra, 0.3, 0.4, seed=0)
    kept = {c.id for c in ev.holdout} & {c.id for c in grown.holdout}
    assert len(kept) >= 10


def test_split_refuses_too_few_cases():
    with pytest.raises(TrainingError, match="too few"):
        split_cases(CASES[:2], 0.3, 0.4)


def test_merge_keeps_the_most_trusted_label():
    teacher = LabeledCase("t1", "A candle  on a table.", False, origin="teacher")
    person = LabeledCase("p1", "a candle on a table.", True, origin="person")
    labels = LabeledCase("l1", "A candle on a table.", False, origin="labels")
    merged = merge_cases([teacher], [labels], [person])
    assert len(merged) == 1 and merged[0].id == "p1"
    assert merge_cases([teacher, labels])[0].id == "l1"


def test_builds_add_the_bundled_scenes_after_the_sites_cases_unless_turned_off():
    bundled = bundled_labels()
    person = LabeledCase("p1", bundled[5].input, not bundled[5].safety, origin="person")
    site = LabeledCase("s1", "A forklift reverses towards a picker on aisle 4.", True)
    cases = with_bundled([site, person])
    assert cases[:2] == [site, person] and len(cases) == len(bundled) + 1
    assert person in cases and bundled[5] not in cases  # a person's review outranks it
    assert with_bundled([site, person], on=False) == [site, person]


def test_cases_come_from_the_store_and_label_files(tmp_path):
    store = CaseStore(default_store_path(tmp_path))
    esc = Escalation(
        case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0, source="cam", input="Sparks fly"
    )
    store.add_case(esc)
    store.add_review(
        Review(case_id=esc.case_id, answer="Answer: Sparks.", safety=True, reviewer="t")
    )
    store.close()
    labels = tmp_path / "l.jsonl"
    labels.write_text(json.dumps({"input": "A cat naps.", "safety": False, "keywords": []}) + "\n")
    cases = load_cases(default_store_path(tmp_path), [labels])
    assert {(c.input, c.safety, c.origin) for c in cases} == {
        ("Sparks fly", True, "teacher"),
        ("A cat naps.", False, "labels"),
    }
    with pytest.raises(TrainingError, match="--labels"):
        load_cases(tmp_path / "missing" / "store.sqlite", [])
    assert not (tmp_path / "missing").exists()  # a missing store is not created


# ---------------------------------------------------------------- candidates
def test_demos_are_balanced_prefer_mistakes_and_use_the_label():
    pool = split_cases(CASES, 0.3, 0.4).train
    wrong = {c.id for c in pool if c.safety}
    picked = cand.pick_demos(pool, 4, random.Random(0), prefer=wrong, lean=True)
    assert sum(c.safety for c in picked) == 2 and len(picked) == 4
    assert picked[-1].safety is True  # the leaned verdict comes last
    no_pref = [c for c in pool if not c.safety and c.id in wrong]
    assert not no_pref  # all preferred cases are yes-cases; both of them were taken
    demo = cand.demo_for(
        LabeledCase("x", "Smoke in a hall", True, answer="Answer: Smoke fills a hall.")
    )
    assert demo.answer == "Answer: Smoke fills a hall.\nSAFETY: yes\nCONFIDENCE: 0.90"
    plain = cand.demo_for(LabeledCase("y", "A cat naps", False))
    assert plain.answer.startswith("Answer: A cat naps.\nSAFETY: no")


def test_library_candidates_are_distinct_and_take_demos_from_the_pool_only():
    ev = split_cases(CASES, 0.3, 0.4)
    made = cand.library_candidates(default_skill(), ev.train, 8, 4, set(), 0)
    assert len(made) == 8 and len({c.key() for c in made}) == 8
    pool_inputs = {c.input for c in ev.train}
    for c in made:
        assert {d.input for d in c.skill.demos} <= pool_inputs
        assert c.skill.parent == 0


GOOD = json.dumps([f"Prompt number {i}: describe the scene and flag hazards." for i in range(3)])


@pytest.mark.parametrize(
    "reply",
    [
        GOOD,
        f"Sure! Here they are:\n```json\n{GOOD}\n```\nHope this helps.",
        GOOD[:-1] + ",]",  # trailing comma
        str([f"Prompt number {i}: describe the scene and flag hazards." for i in range(3)]),
        json.dumps(
            {
                "prompts": [
                    {"prompt": f"Prompt {i}: describe scenes, flag hazards."} for i in range(3)
                ]
            }
        ),
    ],
)
def test_parse_prompt_list_repairs_common_damage(reply):
    assert len(cand.parse_prompt_list(reply)) == 3


@pytest.mark.parametrize("reply", ["no list here", "[1, 2, 3]", '["short"]', "[unclosed"])
def test_parse_prompt_list_rejects_garbage(reply):
    with pytest.raises(ValueError):
        cand.parse_prompt_list(reply)


def test_writer_good_json_needs_one_call():
    writer = ScriptedBackend(GOOD)
    prompts, how = cand.write_instructions(writer, 3, default_skill())
    assert how == "parsed" and len(prompts) == 3 and len(writer.requests) == 1
    assert "JSON array of 3 strings" in writer.requests[0].input


def test_writer_malformed_reply_is_repaired_by_a_second_request():
    replies = iter(['Here: ["Describe the scene and flag hazards", "Describe', GOOD])
    writer = ScriptedBackend(lambda req: next(replies))
    prompts, how = cand.write_instructions(writer, 3, default_skill())
    assert how == "repaired" and len(prompts) == 3
    assert "not valid JSON" in writer.requests[1].input
    assert "Describe the scene and flag hazards" in writer.requests[1].input


def test_writer_garbage_is_an_error_not_a_placeholder():
    writer = ScriptedBackend("I cannot help with that.")
    with pytest.raises(TrainingError, match="not a JSON array"):
        cand.write_instructions(writer, 3, default_skill())
    assert len(writer.requests) == 2


def test_later_rounds_show_the_writer_scores_and_failures():
    writer = ScriptedBackend(GOOD)
    result = run_upskill(
        CASES, student(lambda r: True), default_skill(), FAST, writer=writer, progress=False
    )
    assert len(writer.requests) == 2  # one per round
    second = writer.requests[1].input
    assert "Earlier candidates" in second and "score 0." in second
    assert any(s.candidate.origin == "writer" for s in result.scored)
    assert any(s.candidate.origin == "mutation" for s in result.scored)


# ---------------------------------------------------------------- the gate
def test_a_better_skill_goes_to_the_release_build_with_its_scores(tmp_path):
    # The student only judges right with the safety-first instructions.
    backend = student(lambda r: "missed hazard" in r.system)
    result = run_upskill(CASES, backend, default_skill(), FAST, progress=False)
    d = result.decision
    assert d.to_build and d.beats_parent
    assert "missed hazard" in result.winner.candidate.skill.instructions
    assert d.winner_holdout["score"] > d.baseline_holdout["score"]
    skill = result.skill  # what the release build gets
    assert skill.parent == 0 and skill.score == round(d.winner_holdout["score"], 4)
    assert skill.eval_hash == cases_hash([c for c in CASES if c.id in set(d.holdout_ids)])
    # the held-out split never supplied a demonstration, nor ranked a candidate
    holdout_inputs = {c.input for c in result.evalset.holdout}
    for s in result.scored:
        assert not holdout_inputs & {d.input for d in s.candidate.skill.demos}
    paths = write_report(result, tmp_path / "report", "upskill", "gemma-teacher upskill")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(paths["json"].read_text())
    assert doc["decision"]["to_build"] is True and len(doc["candidates"]) == len(result.scored)
    assert "| **" in paths["md"].read_text()


def test_a_skill_that_does_not_beat_the_active_one_still_goes_to_the_one_gate(tmp_path):
    mine = default_skill().model_copy(update={"version": 1, "name": "hand-tuned"})
    # The student judges right only with the active skill's exact instructions.
    backend = student(lambda r: r.system == mine.instructions and r.demos == mine.demos)
    result = run_upskill(CASES, backend, mine, FAST, progress=False)
    d = result.decision
    assert d.to_build and not d.beats_parent  # the release gate decides, not upskill
    assert d.reason.startswith("to the release build: ") and "does not beat v1" in d.reason
    assert result.skill.parent == 1


def test_a_dry_run_builds_nothing():
    same = ScriptedBackend("Answer: Something.\nSAFETY: yes\nCONFIDENCE: 0.5")
    result = run_upskill(CASES, same, default_skill(), FAST, dry_run=True, progress=False)
    assert not result.decision.to_build and result.decision.reason.startswith("dry run")


def test_held_out_comparison_leaves_out_demonstrated_cases(tmp_path):
    ev = split_cases(CASES, FAST.holdout_fraction, FAST.select_fraction, FAST.seed)
    leaked = ev.holdout[0]
    from shared.skill import Demo

    mine = Skill(
        version=1,
        instructions="Describe.",
        demos=(Demo(input=leaked.input, answer="Answer: x\nSAFETY: yes\nCONFIDENCE: 0.9"),),
    )
    result = run_upskill(CASES, student(lambda r: True), mine, FAST, progress=False)
    assert leaked.id not in result.decision.holdout_ids
    assert len(result.decision.holdout_ids) == len(ev.holdout) - 1


def test_racing_scores_only_the_better_half_on_the_whole_selection_split(tmp_path):
    backend = student(lambda r: "missed hazard" in r.system)
    result = run_upskill(
        CASES,
        backend,
        default_skill(),
        FAST.model_copy(update={"rounds": 1}),
        progress=False,
    )
    n = len(result.select)
    full = [s for s in result.scored if s.full]
    raced = [s for s in result.scored if not s.full]
    assert len(full) == len(raced) == 2
    assert all(s.report.n == n for s in full) and all(s.report.n == n // 2 for s in raced)
    assert (
        result.winner.full
        and min(s.report.score for s in full) >= max(s.report.score for s in raced) - 0.2
    )
    # the first half is balanced, so partial scores compare like with like
    assert n == 12 and sum(c.safety for c in result.select[:6]) == 3
    calls = len(backend.requests)
    plain = student(lambda r: "missed hazard" in r.system)
    run_upskill(
        CASES,
        plain,
        default_skill(),
        FAST.model_copy(update={"rounds": 1, "race": False}),
        progress=False,
    )
    assert len(plain.requests) - calls == 2 * (n - n // 2)


def test_student_failure_is_a_training_error(tmp_path):
    from shared.errors import BackendError

    broken = ScriptedBackend(fail_on=" ", error=BackendError("model fell over"))
    with pytest.raises(TrainingError, match="model fell over"):
        run_upskill(CASES, broken, default_skill(), FAST, progress=False)


def test_writer_failure_is_reported_and_the_variants_still_run(tmp_path):
    result = run_upskill(
        CASES,
        student(lambda r: True),
        default_skill(),
        FAST,
        writer=ScriptedBackend("garbage"),
        progress=False,
    )
    assert any("writer failed" in n for n in result.writer_notes)
    assert result.scored and all(s.candidate.origin != "writer" for s in result.scored)


def test_cli_errors_are_clear_without_a_model(tmp_path):
    import subprocess

    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"home: {tmp_path}\nreviewer: {{backend: embedded}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "teacher", "upskill", "--config", str(cfg), "--quiet"],
        capture_output=True,
        text=True,
        cwd=__import__("pathlib").Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    assert "no labelled cases" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x", "safety": "maybe"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "teacher", "upskill", "--config", str(cfg), "--labels", str(bad)],
        capture_output=True,
        text=True,
        cwd=__import__("pathlib").Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2 and "line 1" in proc.stderr and "safety" in proc.stderr


# ---------------------------------------------------------------- the real thing
@pytest.mark.slow
@pytest.mark.integration
def test_cli_upskills_the_real_student_from_labels_and_the_store(tmp_path):
    """The real command line on the bundled Gemma 3 270M: labels file + store → a winner,
    and a release build around it when it beat the default."""
    import subprocess

    picked = [c for c in CASES if c.safety][:3] + [c for c in CASES if not c.safety][:3]
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps(
                {"id": c.id, "input": c.input, "safety": c.safety, "keywords": list(c.keywords)}
            )
            + "\n"
            for c in picked
        )
    )
    store = CaseStore(default_store_path(tmp_path))
    for c in [c for c in CASES if c.safety][3:4] + [c for c in CASES if not c.safety][3:4]:
        esc = Escalation(
            case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0, source="t", input=c.input
        )
        store.add_case(esc)
        store.add_review(
            Review(case_id=esc.case_id, answer=f"Answer: {c.input}", safety=c.safety, reviewer="t")
        )
    store.close()
    cfg = tmp_path / "teacher.yaml"
    cfg.write_text(
        f"home: {tmp_path}\nreviewer: {{backend: embedded}}\n"
        "student: {backend: embedded, max_new_tokens: 32, embedded: {threads: 2}}\n"
        "upskill: {candidates: 1, rounds: 1, demos: 2}\n"
        "release: {bundled_labels: false}\n"  # the build on these 8 cases, not the library
    )
    proc = subprocess.run(
        [sys.executable, "-m", "teacher", "upskill", "--config", str(cfg), "--labels", str(labels)]
        + ["--quiet", "--report-dir", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        cwd=__import__("pathlib").Path(__file__).resolve().parents[2],
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "report" / "upskill.json").read_text())
    split = doc["evalset"]
    assert split["train"]["n"] + split["select"]["n"] + split["holdout"]["n"] == 8
    assert doc["baseline"]["name"] == "default v0" and len(doc["candidates"]) == 1
    assert 0 < doc["candidates"][0]["format_ok"] <= 1  # the real student answered
    skill = doc["skill"]
    assert skill["parent"] == 0 and skill["eval_hash"]
    built = tmp_path / "report" / "release.json"
    assert doc["decision"]["to_build"] and built.is_file()  # the winner went to the build
    assert json.loads(built.read_text())["passed"] in (True, False)  # the gate's verdict
    assert (tmp_path / "report" / "upskill.png").stat().st_size > 1000


def test_who_writes_candidates():
    from shared.teacher_config import ReviewerConfig, TeacherConfig
    from teacher.improve.upskill import writer_backend

    embedded = TeacherConfig()  # the default reviewer is the bundled base model
    assert writer_backend(embedded) is None  # auto: a base model cannot write prompts
    labels = TeacherConfig(reviewer=ReviewerConfig(backend="labels", labels="x.jsonl"))
    assert writer_backend(labels.model_copy(update={"upskill": FAST})) is None
    forced = TeacherConfig(upskill=UpskillConfig(writer="reviewer"))
    mine = ScriptedBackend()
    assert writer_backend(forced, student=mine) is mine  # same model as the student: reused
    never = TeacherConfig(
        reviewer=ReviewerConfig(backend="ollama"), upskill=UpskillConfig(writer="none")
    )
    assert writer_backend(never) is None


def test_the_decision_says_when_recall_was_bought_with_false_alarms():
    from teacher.improve.scoring import tradeoff

    base = {"safety_recall": 0.5, "safe_specificity": 0.5, "format_ok": 1.0, "keyword_recall": 1.0}
    yes_man = {**base, "safety_recall": 1.0, "safe_specificity": 0.0}
    better = {**base, "safety_recall": 1.0, "safe_specificity": 0.75}
    assert "recall bought with false alarms" in tradeoff(yes_man, base)
    assert "balanced agreement 0.50->0.50" in tradeoff(yes_man, base)
    assert "false alarms" not in tradeoff(better, base)


def test_a_flag_everything_skill_does_not_win_on_recall_alone(tmp_path):
    def answer(req: GenerateRequest) -> str:
        if "missed hazard" in req.system:  # the "yes-man": recall 1, specificity 0
            verdict = True
        else:  # the default judges half the safety cases right, never a false alarm
            verdict = truth(req.input) and sum(map(ord, req.input)) % 2 == 0
        return f"Answer: {req.input}\nSAFETY: {'yes' if verdict else 'no'}\nCONFIDENCE: 0.8"

    guarded = run_upskill(CASES, ScriptedBackend(answer), default_skill(), FAST, progress=False)
    unguarded = run_upskill(
        CASES,
        ScriptedBackend(answer),
        default_skill(),
        FAST.model_copy(update={"max_balanced_drop": None}),
        progress=False,
    )
    assert "missed hazard" in unguarded.winner.candidate.skill.instructions
    assert unguarded.decision.beats_parent  # on score alone the yes-man wins
    assert unguarded.decision.winner_holdout["safe_specificity"] == 0.0
    assert not guarded.decision.beats_parent
    assert "judges worse" in guarded.decision.reason or "does not beat" in guarded.decision.reason
