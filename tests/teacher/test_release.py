"""Releases: the folder format, the build (head + thresholds), the harness and the gate.

Fast: a scripted student with hidden states (``tests.fakes.FeatureBackend``) stands in
for the model; the release files, registries and the policy are the real ones.
"""

from __future__ import annotations

import json

import pytest

from shared.calibration import conservative
from shared.errors import ModelError, PushRejected
from shared.head import auc, fit_head
from shared.release import (
    build_files,
    check_files,
    default_release,
    load_release,
    skill_release,
    write_release,
)
from shared.skill import default_skill
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher.release import gate
from teacher.release.build import build_release
from teacher.release.harness import evaluate_release
from teacher.release.registry import ReleaseRegistry
from tests.fakes import FeatureBackend, hazard_cases


def small_head(dim: int = 8):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, dim))
    y = [i % 2 == 0 for i in range(20)]
    x[::2, 0] += 3
    return fit_head(x, y, layers=(1, 2))


def adapter_files() -> dict[str, bytes]:
    import numpy as np
    from safetensors.numpy import save

    tensors = {"base_model.model.x.lora_A.weight": np.zeros((2, 4), dtype=np.float32)}
    return {
        "adapter_config.json": json.dumps({"peft_type": "LORA", "r": 2}).encode(),
        "adapter_model.safetensors": save(tensors),
    }


# ---------------------------------------------------------------- the folder format
def test_a_release_round_trips_and_every_file_is_checked(tmp_path):
    files = build_files(3, default_skill(), small_head(), conservative(), adapter_files())
    release = write_release(tmp_path / "v3", files)
    again = load_release(tmp_path / "v3")
    assert again.version == release.version == 3 and again.skill.version == 3
    assert again.adapter_dir == tmp_path / "v3" and again.head.dim == 8
    assert again.calibration == conservative()
    names = {f.name for f in again.manifest.files}
    assert names == {"skill.json", "head.safetensors", *adapter_files()}
    head = tmp_path / "v3" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 1
    head.write_bytes(bytes(data))
    with pytest.raises(PushRejected, match="head.safetensors: sha256"):
        load_release(tmp_path / "v3")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("manifest.json"), "no manifest.json"),
        (lambda f: f.update({"extra.bin": b"x"}), "not in the manifest: extra.bin"),
        (lambda f: f.pop("skill.json"), "skill.json is missing"),
        (lambda f: f.update({"skill.json": f["skill.json"] + b" "}), "skill.json: size"),
        (lambda f: f.update({"manifest.json": b"{"}), "manifest.json is not valid"),
    ],
)
def test_a_bad_release_is_refused_naming_what_is_wrong(change, message):
    files = build_files(2, default_skill(), small_head(), conservative())
    change(files)
    with pytest.raises(PushRejected, match=message):
        check_files(files)


def test_half_an_adapter_is_refused():
    files = build_files(2, default_skill(), None, None, adapter_files())
    assert check_files(files).version == 2
    del files["adapter_model.safetensors"]
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "adapter_model.safetensors"]
    files["manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(PushRejected, match="adapter lacks adapter_model.safetensors"):
        check_files(files)


def test_the_bundled_default_release_has_a_calibrated_head():
    release = default_release()
    assert release.version == 0 and release.head is not None and release.head.kind == "hidden"
    cal = release.calibration
    assert cal is not None and cal.guaranteed and cal.recall_target == 0.95
    assert 0 <= cal.lower <= cal.upper <= 1
    assert release.skill.instructions == default_skill().instructions
    assert release.skill.demos == default_skill().demos


# ---------------------------------------------------------------- build, harness, gate
def config(tmp_path, **policy) -> TeacherConfig:
    cfg = TeacherConfig(home=tmp_path / "teacher")
    for key, value in policy.items():
        setattr(cfg.policy, key, value)
    cfg.policy.audit_every = 0
    cfg.student.max_new_tokens = 16
    cfg.release.keyword_sample = False  # the fakes' features know nothing of those scenes
    return cfg


def test_the_keyword_sample_joins_the_head_and_the_floor_but_not_lower_or_upper(tmp_path):
    cfg = config(tmp_path)
    cfg.release.keyword_sample = True
    result = build_release(cfg, FeatureBackend(), hazard_cases(400), progress=False)
    assert result.timing["keyword_sample_cases"] == 180
    cal = result.calibration
    # lower and upper rest on the 400 reviewed cases only (minus the frozen split's)
    assert cal.n_unsafe + cal.n_safe == result.timing["calibration_cases"] - 180
    assert "hazards that name a keyword" in cal.note  # the floor was judged on the sample


def test_a_head_only_release_is_built_gated_and_activated(tmp_path):
    cfg = config(tmp_path)
    backend = FeatureBackend()
    result = build_release(cfg, backend, hazard_cases(400), progress=False)
    assert result.verdict.passed, result.verdict.reasons
    assert result.version == 1
    registry = ReleaseRegistry(cfg.home)
    assert registry.active_number() == 1
    release = registry.active()
    assert release.head is not None and release.head.layers == (1, 2)
    cal = release.calibration
    assert cal.guaranteed and cal.lower <= cal.upper
    assert cal.keywords is True  # release.keyword_rule "keep" is the default
    # The candidate answered through the edge's code: every hazard caught, few calls.
    c = result.candidate
    assert c.system_recall == 1.0 and c.auc == 1.0 and c.teacher_calls_per_100 < 20
    assert release.manifest.metrics["frozen"]["system_recall"] == 1.0
    assert json.loads((release.path / "gate.json").read_text())["passed"] is True
    # Both scores on the frozen split are kept: the next build does not re-run the active one.
    cached = sorted(p.name.split("-")[0] for p in (registry.root / "evals").iterdir())
    assert cached == ["v0", "v1"]


def test_the_next_head_starts_from_the_running_one_when_it_reads_the_same_features(tmp_path):
    from teacher.release.head_fit import prior_head

    cfg = config(tmp_path)
    cfg.release.prior_l2 = 10.0  # off by default
    backend = FeatureBackend()
    first = build_release(cfg, backend, hazard_cases(400), progress=False)
    assert first.version == 1 and first.timing["prior"] is None  # v0's head reads other layers
    running = ReleaseRegistry(cfg.home).active()
    assert prior_head(running, running.skill, None) is running.head
    other = running.skill.model_copy(update={"instructions": "Judge it."})
    assert prior_head(running, other, None) is None  # another prompt: other features
    assert prior_head(running, running.skill, adapter_files()) is None  # another adapter
    second = build_release(cfg, backend, hazard_cases(400), progress=False, keep_refused=True)
    assert second.timing["prior"] == "v1"
    head = ReleaseRegistry(cfg.home).get(second.version).head
    assert head.info.get("prior") is True and head.layers == running.head.layers


def test_crossfit_trains_and_calibrates_on_every_review_with_honest_scores(tmp_path):
    import numpy as np

    from teacher.release.head_fit import crossfit

    cfg = config(tmp_path)
    rng = np.random.default_rng(3)
    cases = hazard_cases(120)
    x = rng.normal(size=(120, 6))
    x[:, 0] += [2.0 if c.safety else 0.0 for c in cases]
    head, scores = crossfit(cfg, x, cases, "hidden", (1, 2))
    assert head.info["folds"] == 5 and head.info["n"] == 120 and 0.8 < head.info["oof_auc"] <= 1
    # The shipped head is the fold heads' average: between them, close to a head on all.
    full = fit_head(x, [c.safety for c in cases], layers=(1, 2), l2=cfg.release.head_l2)
    assert np.corrcoef(head.p_unsafe_many(x), full.p_unsafe_many(x))[0, 1] > 0.98
    # Out of fold: flipping one case's label moves every head but the one that scores it.
    flipped = list(cases)
    flipped[7] = flipped[7].__class__(**{**flipped[7].__dict__, "safety": not cases[7].safety})
    _, again = crossfit(cfg, x, flipped, "hidden", (1, 2))
    assert again[7] == pytest.approx(scores[7], abs=1e-12)
    assert not np.allclose(np.delete(again, 7), np.delete(scores, 7))


def test_site_cases_weigh_more_in_the_head_fit_and_weight_one_changes_nothing(tmp_path):
    import dataclasses

    import numpy as np

    from teacher.release.head_fit import case_weights, crossfit

    cfg = config(tmp_path)
    rng = np.random.default_rng(5)
    cases = hazard_cases(120)
    # the site's 40 cases read feature 1 the other way round from the bundled 80
    cases = [dataclasses.replace(c, site="pool-cam") if i % 3 == 0 else c
             for i, c in enumerate(cases)]  # fmt: skip
    x = rng.normal(size=(120, 4))
    sign = np.array([(-1.0 if c.site else 1.0) * (1.0 if c.safety else -1.0) for c in cases])
    x[:, 1] += 1.5 * sign
    assert case_weights(cfg, cases) is None  # site_weight 1: the unweighted fit, bit for bit
    plain, plain_scores = crossfit(cfg, x, cases, "hidden", (1, 2))
    cfg.release.site_weight = 8.0
    weights = case_weights(cfg, cases, extra=2)
    assert weights.tolist() == [8.0 if c.site else 1.0 for c in cases] + [1.0, 1.0]
    assert case_weights(cfg, [c for c in cases if not c.site]) is None  # no site: no weights
    site, _ = crossfit(cfg, x, cases, "hidden", (1, 2))
    assert site.info["site_weight"] == 8.0 and "site_weight" not in plain.info
    on_site = np.array([bool(c.site) for c in cases])
    labels = np.array([c.safety for c in cases])
    # weighted, the head follows the site on its own cases and gives up some bundled ones
    assert auc(site.p_unsafe_many(x[on_site]), labels[on_site]) > auc(
        plain.p_unsafe_many(x[on_site]), labels[on_site]) + 0.1  # fmt: skip
    # every case still scored once, out of fold, for the thresholds
    assert len(plain_scores) == 120
    with pytest.raises(ModelError, match="positive"):
        fit_head(x, labels.tolist(), weights=[1.0] * 119 + [0.0])
    # equal weights are no weights
    a = fit_head(x, labels.tolist(), l2=0.1)
    b = fit_head(x, labels.tolist(), l2=0.1, weights=[3.0] * 120)
    assert np.allclose(a.p_unsafe_many(x), b.p_unsafe_many(x), atol=1e-12)


def test_a_crossfit_release_calibrates_on_all_reviews_and_split_on_its_share(tmp_path):
    cfg = config(tmp_path)
    built = build_release(cfg, FeatureBackend(), hazard_cases(400), progress=False)
    cal, timing = built.calibration, built.timing
    assert timing["calibration"] == "crossfit" and "5-fold crossfit" in cal.method
    assert cal.n_unsafe + cal.n_safe == timing["calibration_cases"] == timing["fit_cases"]
    head = ReleaseRegistry(cfg.home).active().head
    assert head.info["folds"] == 5
    cfg2 = config(tmp_path / "split")
    cfg2.release.calibration = "split"
    split = build_release(cfg2, FeatureBackend(), hazard_cases(400), progress=False)
    assert split.timing["calibration"] == "split" and "crossfit" not in split.calibration.method
    assert split.calibration.n_unsafe + split.calibration.n_safe < cal.n_unsafe + cal.n_safe
    assert split.timing["fit_cases"] + split.timing["calibration_cases"] == timing["fit_cases"]


def test_average_heads_is_the_mean_of_their_log_odds():
    import numpy as np

    from shared.head import average_heads

    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 8)) * 5 + 3
    heads = [fit_head(x[i::3], [j % 2 == 0 for j in range(10)], layers=(1, 2)) for i in range(3)]
    mean = average_heads(heads, {"folds": 3})
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = np.mean([logit(h.p_unsafe_many(x)) for h in heads], axis=0)
    assert np.allclose(logit(mean.p_unsafe_many(x)), expected, atol=1e-9)
    assert mean.info == {"folds": 3} and mean.layers == (1, 2)
    with pytest.raises(ModelError, match="cannot join"):
        average_heads([heads[0], fit_head(x[:, :4], [j % 2 == 0 for j in range(30)])])


def test_a_prior_holds_a_head_where_the_cases_do_not_pull(tmp_path):
    import numpy as np

    parent = small_head()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8))  # six cases with no signal at all
    y = [True, False] * 3
    strong = fit_head(x, y, layers=(1, 2), l2=100.0, prior=parent)
    assert np.allclose(strong.mean, parent.mean) and np.allclose(strong.std, parent.std)
    assert np.abs(strong.weight - parent.weight).max() < 0.05 * np.abs(parent.weight).max()
    scratch = fit_head(x, y, layers=(1, 2), l2=1)  # an int penalty works too
    assert np.isfinite(scratch.weight).all() and abs(scratch.bias) < 5
    with pytest.raises(ModelError, match="prior head has 8 features"):
        fit_head(x[:, :4], y, l2=1.0, prior=parent)


def test_too_few_cases_for_the_guarantee_escalate_conservatively(tmp_path):
    cfg = config(tmp_path)
    result = build_release(cfg, FeatureBackend(), hazard_cases(60), progress=False,
                           keep_refused=True)  # fmt: skip
    cal = result.calibration
    assert not cal.guaranteed and cal.lower == 0.0 and "needed" in cal.note
    # Nothing is ruled out: every hazard the student does not alert on goes to the teacher.
    assert result.candidate.system_recall == 1.0


def test_the_gate_refuses_an_adapter_that_answers_no_under_the_edges_prompt(tmp_path):
    """The measured failure: an adapter scored without demonstrations looked good, and
    under the edge's real prompt said "SAFETY: no" to every hazard."""
    cfg = config(tmp_path)
    backend = FeatureBackend(bad_adapter="bad-adapter")
    cases = hazard_cases(400)
    assert build_release(cfg, backend, cases, progress=False).verdict.passed  # v1: head only
    folder = tmp_path / "bad-adapter"
    folder.mkdir()
    for name, data in adapter_files().items():
        (folder / name).write_bytes(data)
    frozen = cases[:40]
    # Scored the old way (instructions only, no demonstrations) it looks perfect ...
    old_way = skill_release(default_skill().model_copy(update={"demos": ()}), folder)
    old = evaluate_release(Student(backend, old_way), frozen, cfg.policy, progress=False)
    assert old.words_accuracy == 1.0
    # ... but the edge runs it with its demonstrations: the harness sees what edges would.
    candidate = evaluate_release(Student(backend, skill_release(default_skill(), folder)),
                                 frozen, cfg.policy, progress=False)  # fmt: skip
    active = evaluate_release(Student(backend, ReleaseRegistry(cfg.home).active()), frozen,
                              cfg.policy, progress=False)  # fmt: skip
    assert candidate.recall == 0.0 and candidate.system_recall < 0.95
    verdict = gate.compare(candidate, active, cfg.policy.recall_target)
    assert not verdict.passed
    assert any("below the target 0.95" in r for r in verdict.reasons)
    assert any("fell against the active release v1" in r for r in verdict.reasons)
    # Built as a release (head refit on the adapter's own states), the adapter does not
    # ship: it does not pay against the head alone, which is the candidate instead ...
    built = build_release(cfg, backend, cases, adapter=adapter_files(), progress=False)
    assert built.timing["lora"]["paid"] is False
    assert built.verdict.passed and load_release(built.path).adapter_dir is None
    # ... and a gate that asks for a gain refuses that twin of v1 for none.
    cfg.release.must_gain = True
    again = build_release(cfg, backend, cases, adapter=adapter_files(), progress=False)
    assert not again.verdict.passed and again.version is None
    assert any(r.startswith("no gain over the active release") for r in again.verdict.reasons)
    assert ReleaseRegistry(cfg.home).active_number() == 2


def test_gate_rules_are_named():
    from teacher.release.harness import HarnessReport

    def rep(release, caught, calls, accuracy, hazards=32):
        missed = [f"h{i}" for i in range(hazards - caught)]
        return HarnessReport(release, 64, 1.0, accuracy, 1.0, 1.0, 0.5, 1.0, 1.0,
                             caught / hazards, calls, 0.0, 0.0, 0.0, 0.1, 0.2,
                             hazards=hazards, missed=missed)  # fmt: skip

    active = rep(1, 30, 30.0, 0.9)  # 30 of 32 frozen hazards: a point estimate of 0.938
    assert gate.compare(rep(2, 31, 20.0, 0.9), active, 0.95).passed
    assert gate.compare(rep(2, 30, 30.0, 0.95), active, 0.95).passed  # more accurate
    # 30/32 is no evidence that recall is under 0.95 (upper 90% bound 0.983) ...
    assert gate.compare(rep(2, 30, 20.0, 0.9), active, 0.95).passed
    # ... 26/32 is (bound 0.898); 4 more misses than the edges run now are not yet
    # beyond noise (exact McNemar p 0.0625), 25/32 are (p 0.031)
    refused = gate.compare(rep(2, 26, 10.0, 0.99), active, 0.95)
    assert refused.reasons == [
        "system safety recall 0.812 (26/32) is below the target 0.95 beyond doubt "
        "(upper 90% bound 0.898); missed: h0, h1, h2, h3, h4"
    ]
    refused = gate.compare(rep(2, 25, 10.0, 0.99), active, 0.95)
    assert len(refused.reasons) == 2
    assert refused.reasons[1].startswith("system safety recall fell against the active release")
    # one more miss than the active release is noise (exact McNemar p 0.5) ...
    assert gate.compare(rep(2, 29, 10.0, 0.99), active, 0.95).passed
    # ... five more with none gained are not, even where the bound allows it (195/200)
    worse = gate.compare(rep(2, 195, 10.0, 0.99, 200), rep(1, 200, 30.0, 0.9, 200), 0.95)
    assert worse.reasons == [
        "system safety recall fell against the active release v1 beyond noise: 5 hazard(s) "
        "it missed that v1 caught, 0 the other way (exact McNemar p 0.031 < 0.05)"
    ]
    assert gate.compare(rep(2, 30, 30.0, 0.9), active, 0.95).passed  # not worse: ships
    no_gain = gate.compare(rep(2, 30, 30.0, 0.9), active, 0.95, must_gain=True)
    assert no_gain.reasons == [
        "no gain over the active release: teacher calls per 100 30.0 -> 30.0, "
        "student accuracy 0.900 -> 0.900"
    ]


def test_releases_cli_lists_shows_and_rolls_back(tmp_path, capsys):
    from teacher.cli import main

    registry = ReleaseRegistry(tmp_path)
    for version in (1, 2):
        files = build_files(version, default_skill(), small_head(), conservative())
        registry.add(files, {"passed": True, "candidate": {"release": version, "n": 10,
                                                           "system_recall": 1.0}})  # fmt: skip
    registry.activate(2)
    assert main(["releases", "list", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "v2 *" in out and "v1 " in out and "v0 (bundled)" in out
    assert main(["releases", "--home", str(tmp_path), "show", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1 and not doc["active"] and doc["manifest"]["files"]
    assert main(["releases", "rollback", "1", "--home", str(tmp_path)]) == 0
    assert registry.active_number() == 1
    assert main(["releases", "show", "7", "--home", str(tmp_path)]) == 2
    assert "no release v7" in capsys.readouterr().err


def test_an_ollama_student_gets_a_head_calibrated_on_its_verdict_logprobs(tmp_path):
    """No hidden states over HTTP: the release's head is a logistic fit on the log-odds of
    the SAFETY verdict token, and every answer of the Ollama edge carries its p_unsafe."""
    from shared.config import OllamaModelConfig
    from shared.ollama_backend import OllamaBackend
    from tests.ollama_server import FakeOllama

    def reply(body):
        unsafe = "DANGER" in body["messages"][-1]["content"]
        return f"Answer: A scene.\nSAFETY: {'yes' if unsafe else 'no'}\nCONFIDENCE: 0.5"

    cfg = config(tmp_path)
    with FakeOllama(models={"gemma3:270m"}, reply=reply) as server:
        backend = OllamaBackend(OllamaModelConfig(host=server.url, model="gemma3:270m"), 16)
        result = build_release(cfg, backend, hazard_cases(100), progress=False,
                               keep_refused=True)  # fmt: skip
        release = load_release(result.path)
        assert release.head.kind == "verdict" and release.head.dim == 1
        answered = Student(backend, release).answer("DANGER at the dock")
        calm = Student(backend, release).answer("calm at the dock")
    assert answered.answer.p_unsafe > 0.8 and calm.answer.p_unsafe < 0.2
    assert result.candidate.auc == 1.0 and result.candidate.system_recall == 1.0


def test_a_new_skill_over_the_same_adapter_does_not_reload_it(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, data in adapter_files().items():
        (folder / name).write_bytes(data)
    backend = FeatureBackend()
    loads = []

    def load(name, path, system=""):  # count the loads
        loads.append(path)
        backend.loaded[name] = path

    backend.load_adapter = load
    student = Student(backend, skill_release(default_skill(), folder))
    student.use(skill_release(default_skill().model_copy(update={"name": "edited"}), folder))
    assert loads == [folder] and student.skill.name == "edited"
    student.use(skill_release(default_skill(), None))
    assert backend.active_adapter is None
    student.use(skill_release(default_skill(), folder))  # back to it: still loaded
    assert loads == [folder] and backend.active_adapter == "r0"


def test_a_lora_that_does_not_lower_teacher_calls_is_not_shipped(tmp_path):
    cfg = config(tmp_path)
    backend = FeatureBackend()  # an adapter changes nothing: it cannot pay
    built = build_release(cfg, backend, hazard_cases(400), adapter=adapter_files(), progress=False)
    lora = built.timing["lora"]
    assert lora["paid"] is False and lora["calls_with"] == lora["calls_without"]
    if built.version is not None:  # the head alone may still beat v0; it carries no adapter
        release = ReleaseRegistry(cfg.home).get(built.version)
        assert release.adapter_dir is None and "the LoRA did not lower" in release.manifest.note


def test_a_lora_that_lowers_teacher_calls_ships(tmp_path):
    cfg = config(tmp_path)
    # noisy base states put some cases in the band; the adapter's quieter ones need fewer
    backend = FeatureBackend(good_adapter="gemma-release-", noise=10.0)
    built = build_release(cfg, backend, hazard_cases(400), adapter=adapter_files(), progress=False)
    lora = built.timing["lora"]
    assert lora["paid"] is True and lora["calls_with"] < lora["calls_without"]
    assert built.verdict.passed, built.verdict.reasons
    assert ReleaseRegistry(cfg.home).get(built.version).adapter_dir is not None


def test_a_site_lora_trains_on_the_sites_reviews_and_the_bundled_cases_calibrate(tmp_path):
    from dataclasses import replace

    from teacher.release.head_fit import make_splits

    cases = hazard_cases(200)
    cases = [replace(c, site="edge-1") if i % 3 == 0 else c for i, c in enumerate(cases)]
    cfg = config(tmp_path)
    every = make_splits(cfg, cases, default_skill())
    cfg.train.lora_cases = "sites"
    sites = make_splits(cfg, cases, default_skill())
    assert sites.frozen == every.frozen  # the gate's split is the same
    assert {c.id for c in sites.fit + sites.calibration} == {
        c.id for c in every.fit + every.calibration
    }  # a head without a LoRA sees the same cases
    assert sites.fit and all(c.site for c in sites.fit)  # the LoRA: the site's reviews only
    assert {c.id for c in every.fit if not c.site} <= {c.id for c in sites.calibration}
    few = [replace(c, site="") if c.safety else c for c in cases]  # no site hazard
    other = config(tmp_path / "few")
    other.train.lora_cases = "sites"
    fallback = make_splits(other, few, default_skill()).fit  # the LoRA needs both verdicts
    assert any(not c.site for c in fallback) and any(c.site for c in fallback)


def test_an_active_release_cached_without_its_escalations_is_scored_again(tmp_path):
    """A cached report written before escalations were recorded would skip the gate's
    paired test on calls: the build scores the active release anew instead."""
    cfg = config(tmp_path)
    cases = hazard_cases(400)
    assert build_release(cfg, FeatureBackend(), cases, progress=False).verdict.passed  # v1
    second = build_release(cfg, FeatureBackend(), cases, progress=False)  # v1 scored, cached
    assert "calls" in second.verdict.groups
    evals = ReleaseRegistry(cfg.home).root / "evals"
    for path in evals.glob("v2-*.json"):  # v2's report, as an older teacher cached it
        doc = json.loads(path.read_text())
        doc.pop("escalated")
        path.write_text(json.dumps(doc))
    third = build_release(cfg, FeatureBackend(), cases, progress=False)
    assert third.active.escalated is not None and "calls" in third.verdict.groups


def test_a_head_only_build_keeps_the_active_releases_adapter(tmp_path, monkeypatch):
    import argparse

    import shared.backend_factory
    from teacher.train import cli

    cfg = config(tmp_path)
    cfg.release.bundled_labels = False
    backend = FeatureBackend(good_adapter="gemma-release-", noise=10.0)
    first = build_release(cfg, backend, hazard_cases(400), adapter=adapter_files(), progress=False)
    assert first.timing["lora"]["paid"] and first.verdict.passed  # v1 runs on an adapter
    own = tmp_path / "teacher.yaml"
    own.write_text(cfg.model_dump_json())
    labels = tmp_path / "labels.jsonl"
    rows = [{"id": c.id, "input": c.input, "safety": c.safety, "keywords": list(c.keywords)}
            for c in hazard_cases(400)]  # fmt: skip
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(shared.backend_factory, "make_backend", lambda student: backend)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--config", str(own), "--no-store", "--labels", str(labels),
                              "--head-only", "--keep-refused", "--no-progress"])  # fmt: skip
    assert cli.run(args) in (0, 1)
    second = ReleaseRegistry(cfg.home).get(2)
    kept = ReleaseRegistry(cfg.home).get(1).adapter_files()
    assert second.adapter_files() == kept == adapter_files()  # a new head, the same adapter
    assert second.manifest.note == "head only (v1's LoRA kept)"


def test_v0_built_on_an_adapter_carries_it_and_its_head_reads_the_adapted_states(tmp_path):
    from shared.release import load_release
    from teacher.release.build import build_default

    cfg = config(tmp_path)
    folder = tmp_path / "lora-run"
    folder.mkdir()
    for name, data in adapter_files().items():
        (folder / name).write_bytes(data)
    cases = hazard_cases(400)
    plain, _ = build_default(cfg, FeatureBackend(noise=10.0), cases, tmp_path / "v0")
    backend = FeatureBackend(good_adapter="lora-run", noise=10.0)
    adapted, _ = build_default(cfg, backend, cases, tmp_path / "v0-lora", folder)
    again = load_release(tmp_path / "v0-lora")  # what an edge loads: checked, adapter and all
    assert again.version == 0 and again.adapter_files() == adapter_files()
    assert plain.adapter_dir is None and "with a LoRA adapter" in again.manifest.note
    assert adapted.head.info["n"] == plain.head.info["n"]  # every kept case fits, certifies
    plain_band, adapted_band = (r.calibration.upper - r.calibration.lower for r in (plain, adapted))
    assert adapted_band < plain_band  # a fifth of the noise: a narrower band


def test_build_default_names_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    from teacher.cli import main

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    argv = ["releases", "--home", str(tmp_path), "build-default", "--adapter",
            str(tmp_path / "half"), "--out", str(tmp_path / "v0")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "half: not a LoRA adapter (no adapter_model.safetensors)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "v0").exists()
