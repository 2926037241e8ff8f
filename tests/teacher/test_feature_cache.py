"""The build's feature cache: a prefill already run is read back, nothing else is.

Fast: the scripted student with hidden states (``tests.fakes.FeatureBackend``) counts its
prefills; the cache is a real SQLite file.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from shared.release import default_release, skill_release
from shared.student import Student
from shared.teacher_config import TeacherConfig
from teacher.release.build import build_release
from teacher.release.feature_cache import FeatureCache, features, open_cache, student_identity
from teacher.release.registry import ReleaseRegistry
from tests.fakes import FeatureBackend, hazard_cases


class CountingBackend(FeatureBackend):
    def __init__(self):
        super().__init__()
        self.prefills = 0

    def generate(self, request):
        if request.max_new_tokens == 0 and request.hidden_layers:
            self.prefills += 1
        return super().generate(request)


def config(home, cache: bool = True) -> TeacherConfig:
    cfg = TeacherConfig(home=home)
    cfg.policy.audit_every = 0
    cfg.student.max_new_tokens = 16
    cfg.release.keyword_sample = False
    cfg.release.feature_cache = cache
    return cfg


def test_the_next_build_reads_known_cases_back_and_fits_the_same_head(tmp_path):
    cases = hazard_cases(400)
    plain = build_release(config(tmp_path / "plain", cache=False), CountingBackend(), cases,
                          progress=False)  # fmt: skip
    assert plain.timing["features_from_cache"] == 0
    assert not (tmp_path / "plain" / "cache").exists()

    cfg = config(tmp_path / "cached")
    first = build_release(cfg, CountingBackend(), cases, progress=False)
    assert first.timing["features_from_cache"] == 0
    backend = CountingBackend()
    second = build_release(cfg, backend, cases + hazard_cases(10, seed=1), progress=False,
                           keep_refused=True)  # fmt: skip
    fitted, cached = second.timing["fit_cases"], second.timing["features_from_cache"]
    # every case of the first build came from the cache; only the new ones (those outside
    # the frozen split) ran for the head; the gate still scores through the answer path
    assert fitted - 10 <= cached < fitted
    registry = ReleaseRegistry(cfg.home)
    plain_head = ReleaseRegistry(tmp_path / "plain").get(plain.version).head
    first_head = registry.get(first.version).head
    assert np.array_equal(first_head.weight, plain_head.weight)  # bit for bit, cache or not
    assert first_head.bias == plain_head.bias


def test_another_prompt_or_another_adapter_misses(tmp_path):
    backend = CountingBackend()
    release = default_release()
    student = Student(backend, release, 16)
    cases = hazard_cases(20)
    cache = FeatureCache(tmp_path / "features.sqlite")
    ident = student_identity(backend, "settings", None)
    x = features(student, cases, "hidden", (1, 2), "test", cache, ident)
    assert backend.prefills == 20
    again = features(student, cases, "hidden", (1, 2), "test", cache, ident)
    assert backend.prefills == 20 and np.array_equal(x, again)

    other = release.skill.model_copy(update={"instructions": "Judge the scene."})
    features(Student(backend, skill_release(other, None), 16), cases, "hidden", (1, 2), "t",
             cache, ident)  # fmt: skip
    assert backend.prefills == 40  # another prompt: every case runs again

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights one")
    one = student_identity(backend, "settings", folder)
    (folder / "adapter_model.safetensors").write_bytes(b"weights two")
    assert student_identity(backend, "settings", folder) != one != ident
    assert student_identity(backend, "other settings", None) != ident
    features(student, cases, "hidden", (1,), "t", cache, ident)
    assert backend.prefills == 60  # other layers: another request


def test_a_row_that_does_not_read_back_is_run_again(tmp_path):
    backend = CountingBackend()
    student = Student(backend, default_release(), 16)
    cases = hazard_cases(6)
    path = tmp_path / "features.sqlite"
    cache = FeatureCache(path)
    x = features(student, cases, "hidden", (1, 2), "t", cache, "id")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE features SET data = x'0011' WHERE rowid = 1")
    again = features(student, cases, "hidden", (1, 2), "t", cache, "id")
    assert backend.prefills == 7 and np.array_equal(x, again)


def test_the_oldest_rows_go_beyond_the_cap(tmp_path):
    cache = FeatureCache(tmp_path / "features.sqlite", max_rows=3)
    cache.put({f"k{i}": np.full(4, float(i)) for i in range(5)})
    assert sorted(cache.get([f"k{i}" for i in range(5)])) == ["k2", "k3", "k4"]


def test_a_cache_that_cannot_be_opened_is_left_out(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").write_text("a file where the cache folder would be")
    assert open_cache(home) is None
    built = build_release(config(home), CountingBackend(), hazard_cases(400), progress=False)
    assert built.verdict.passed and built.timing["features_from_cache"] == 0


def test_a_cache_that_fails_to_read_or_write_costs_the_build_nothing(tmp_path):
    backend = CountingBackend()
    student = Student(backend, default_release(), 16)
    cache = FeatureCache(tmp_path / "features.sqlite")
    cache.close()  # every read and write now raises sqlite3.Error inside the cache
    x = features(student, hazard_cases(4), "hidden", (1, 2), "t", cache, "id")
    assert x.shape == (4, 8) and backend.prefills == 4
