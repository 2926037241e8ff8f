"""A safety head runs only on the engine it was fit on; the edge refuses it with the reason."""

from __future__ import annotations

import numpy as np

from shared.backend import HiddenSpec, hidden_spec
from shared.head import SafetyHead, fit_head
from shared.student import head_problem


class _Backend:
    def __init__(self, spec: HiddenSpec | None, name: str = "fake"):
        self.hidden = spec
        self.name = name


def _head(engine: str | None, layers=(18,), dim=640) -> SafetyHead:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, dim))
    y = [bool(v) for v in (x[:, 0] > 0)]
    head = fit_head(x, y, layers=layers)
    if engine is not None:
        head = SafetyHead(head.kind, head.layers, head.mean, head.std, head.weight, head.bias,
                          {**head.info, "engine": engine})  # fmt: skip
    return head


LLAMA = HiddenSpec("llamacpp", 18, 640, (18,))
TORCH = HiddenSpec("torch", 18, 640)


def test_a_head_without_an_engine_was_fit_on_torch_and_survives_the_file_round_trip():
    assert _head(None).engine == "torch"
    head = SafetyHead.from_bytes(_head("llamacpp").to_bytes())
    assert head.engine == "llamacpp"


def test_a_torch_head_is_refused_on_llamacpp_with_the_reason_and_the_other_way_round():
    problem = head_problem(_Backend(LLAMA, "llamacpp:gemma"), _head(None))
    assert problem is not None and "fit on the torch engine" in problem
    assert "llamacpp" in problem
    problem = head_problem(_Backend(TORCH), _head("llamacpp"))
    assert problem is not None and "fit on the llamacpp engine" in problem


def test_a_llamacpp_head_runs_on_llamacpp_and_one_reading_a_middle_layer_does_not():
    assert head_problem(_Backend(LLAMA), _head("llamacpp")) is None
    problem = head_problem(_Backend(LLAMA), _head("llamacpp", layers=(9, 18), dim=1280))
    assert problem is not None and "gives only [18]" in problem


def test_a_backend_without_hidden_states_has_no_spec_and_is_named():
    assert hidden_spec(object()) is None
    problem = head_problem(_Backend(None, "ollama:gemma3"), _head(None))
    assert problem is not None and "ollama:gemma3" in problem


LLAMA_ALL = HiddenSpec("llamacpp", 18, 640, tuple(range(1, 19)))  # with the eval callback


def test_each_engine_has_its_bundled_v0_and_runs_its_head():
    from shared.release import default_release, model_engine

    torch_v0, llama_v0 = default_release("torch"), default_release("llamacpp")
    assert torch_v0.head.engine == "torch" and llama_v0.head.engine == "llamacpp"
    assert llama_v0.head.layers == (9, 18)  # the middle layer through the eval callback
    assert head_problem(_Backend(LLAMA_ALL), llama_v0.head) is None
    assert "fit on the torch engine" in head_problem(_Backend(LLAMA_ALL), torch_v0.head)
    assert llama_v0.manifest.canaries and llama_v0.calibration.guaranteed
    assert default_release("tpu").path == torch_v0.path  # none bundled: the torch one
    assert [model_engine(b) for b in ("embedded", "llamacpp", "ollama")] == [
        "torch", "llamacpp", "torch"
    ]  # fmt: skip


def test_a_llamacpp_teacher_home_and_edge_start_from_the_llamacpp_v0(tmp_path):
    from edge.daemon import EdgeDaemon
    from edge.events import EventLog
    from edge.sources import open_source
    from shared.config import EdgeConfig
    from shared.teacher_config import TeacherConfig
    from teacher.release.registry import ReleaseRegistry
    from tests.fakes import ScriptedBackend

    cfg = TeacherConfig(home=tmp_path / "teacher")
    cfg.student.backend = "llamacpp"
    assert ReleaseRegistry.of(cfg).active().head.engine == "llamacpp"
    cfg.student.backend = "embedded"
    assert ReleaseRegistry.of(cfg).active().head.engine == "torch"
    backend = ScriptedBackend()
    backend.hidden = LLAMA_ALL
    texts = tmp_path / "in.txt"
    texts.write_text("a calm scene\n")
    daemon = EdgeDaemon(EdgeConfig(state_dir=tmp_path / "state"), backend,
                        open_source(str(texts)), EventLog(None))  # fmt: skip
    assert daemon.release.head.engine == "llamacpp" and daemon.student.head is not None
