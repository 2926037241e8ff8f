"""``answer: when_needed``: an input the head rules out is judged from its prefill alone;
anything the policy would act on (an alert, an escalation, an audit) gets its sentence;
the edge, the harness and the canaries judge alike."""

from __future__ import annotations

import io
import json

import pytest

from edge.canary import check_release
from edge.daemon import EdgeDaemon
from edge.events import EventLog
from edge.sources import open_source
from shared.config import EdgeConfig, PolicyConfig
from shared.policy import EscalationPolicy
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher.release.build import build_release
from teacher.release.harness import evaluate_release
from tests.fakes import FeatureBackend, hazard_cases


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    cfg = TeacherConfig(home=tmp_path_factory.mktemp("teacher"))
    cfg.policy.audit_every = 0
    cfg.student.max_new_tokens = 16
    cfg.release.keyword_sample = False  # the fake's features know nothing of those scenes
    result = build_release(cfg, FeatureBackend(), hazard_cases(400), progress=False)
    assert result.verdict.passed, result.verdict.reasons
    from shared.release import load_release

    return load_release(result.path)


def no_audits() -> PolicyConfig:
    return PolicyConfig(audit_every=0)


def judge(student: Student, policy: EscalationPolicy, text: str, now: float = 0.0):
    key = f"text:{text}"
    answered = student.answer(
        text, None, policy.needs_sentence(text, key, now, student.release.calibration)
    )
    return answered, policy.decide(answered.answer, text, key, now, student.release.calibration)


def test_a_ruled_out_input_is_judged_from_its_prefill_and_an_alert_gets_its_sentence(release):
    backend = FeatureBackend()
    student = Student(backend, release, 16, answer="when_needed")
    policy = EscalationPolicy(no_audits())
    calm, calm_decision = judge(student, policy, "calm scene by the dock")
    assert not calm.sentence and calm_decision.outcome == "pass"
    assert [r.max_new_tokens for r in backend.requests] == [0]  # the prompt only
    assert calm.answer.p_unsafe < release.calibration.lower and calm.answer.text == ""
    backend.requests.clear()
    hazard, decision = judge(student, policy, "DANGER scene by the dock")
    assert hazard.sentence and decision.alert
    assert [r.max_new_tokens for r in backend.requests] == [0, 16]  # prefill, then the answer
    assert "hazard" in hazard.answer.text


def test_a_keyword_in_the_input_or_an_audit_gets_the_sentence(release):
    student = Student(FeatureBackend(), release, 16, answer="when_needed")
    policy = EscalationPolicy(no_audits())
    fire, decision = judge(student, policy, "calm scene, smoke from the fire")
    assert fire.sentence and decision.escalate and "safety_keyword" in decision.reasons
    audited = EscalationPolicy(PolicyConfig(audit_every=1))  # most passed inputs drawn
    seen = []
    for i in range(12):
        calm, decision = judge(student, audited, f"calm scene number {i}", now=100.0 * i)
        assert calm.sentence == (decision.reasons == ("audit",))  # the audit draw agrees
        seen.append(calm.sentence)
    assert any(seen) and not all(seen)


def test_always_answers_every_input_and_without_a_head_when_needed_does_too(release):
    backend = FeatureBackend()
    judge(Student(backend, release, 16), EscalationPolicy(no_audits()), "calm scene")
    assert [r.max_new_tokens for r in backend.requests] == [16]
    from shared.release import skill_release
    from shared.skill import default_skill

    backend.requests.clear()
    bare = Student(backend, skill_release(default_skill()), 16, answer="when_needed")
    answered, _ = judge(bare, EscalationPolicy(no_audits()), "calm scene")
    assert answered.sentence and [r.max_new_tokens for r in backend.requests] == [16]
    with pytest.raises(ValueError, match="answer must be one of"):
        Student(backend, release, 16, answer="sometimes")


def test_the_harness_scores_when_needed_as_the_edge_runs_it_with_the_same_outcomes(release):
    """The policy's outcome of each case is the same both ways (no keyword rule reads these
    answers); when_needed generates sentences only for the alerted and escalated ones."""
    cases = hazard_cases(40, seed=7)
    runs = {}
    for mode in ("always", "when_needed"):
        backend = FeatureBackend()
        report = evaluate_release(Student(backend, release, 16, mode), cases, no_audits(),
                                  progress=False)  # fmt: skip
        runs[mode] = (report, sum(r.max_new_tokens > 0 for r in backend.requests))
    always, when = runs["always"][0], runs["when_needed"][0]
    assert [r.decision.outcome for r in always.cases] == [r.decision.outcome for r in when.cases]
    assert when.system_recall == always.system_recall == 1.0
    acted = sum(r.decision.outcome != "pass" for r in when.cases)
    assert runs["always"][1] == 40 and runs["when_needed"][1] == acted < 40


def test_the_edge_writes_prefill_judged_inputs_as_answers_without_a_sentence(release, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("calm scene one\nDANGER scene two\ncalm scene three\n")
    config = EdgeConfig(state_dir=tmp_path / "state")
    config.model.answer = "when_needed"
    config.policy.audit_every = 0
    out = io.StringIO()
    daemon = EdgeDaemon(config, FeatureBackend(), open_source(str(texts)),
                        EventLog(None, stream=out), release=release)  # fmt: skip
    daemon.run(progress=False)
    answers = [e for e in map(json.loads, out.getvalue().splitlines()) if e["type"] == "answer"]
    assert [(e["sentence"], e["alert"]) for e in answers] == [
        (False, False), (True, True), (False, False)
    ]  # fmt: skip
    assert all(e["p_unsafe"] is not None for e in answers) and answers[1]["answer"]


def test_a_canary_is_judged_the_edge_s_way(release):
    """The canaries run through the same when_needed judgement: a release the teacher
    certified passes them on a when_needed edge."""
    student = Student(FeatureBackend(), release, 16, answer="when_needed")
    assert release.manifest.canaries
    assert check_release(student, release, no_audits()) == []


def test_a_sampled_share_of_passed_inputs_gets_its_sentence_too(release):
    texts = [f"calm scene number {i} by the dock" for i in range(40)]

    def sentences(share: float) -> list[bool]:
        student = Student(FeatureBackend(), release, 16, answer="when_needed")
        policy = EscalationPolicy(PolicyConfig(audit_every=0, sentence_share=share))
        return [judge(student, policy, text)[0].sentence for text in texts]

    assert not any(sentences(0.0))
    assert all(sentences(1.0))
    drawn = sentences(0.25)
    assert 3 <= sum(drawn) <= 20  # a hash draw of input and count: about a quarter
    assert drawn == sentences(0.25)  # the same inputs draw alike (the harness scores them so)
