"""The llamacpp backend on the bundled Gemma 3 270M: prefix reuse, the head's features, LoRA
switching on a live context, and an edge process that never imports torch.

Marked ``llamacpp`` like every llama.cpp test (llama-cpp-python is a dependency: the
install compiles it); skipped only where it is missing.
``bench/llamacpp_edge.py`` measures its speed and memory against raw llama.cpp and torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llamacpp, pytest.mark.integration, pytest.mark.slow]

from shared.answer import parse_answer, verdict_confidence  # noqa: E402
from shared.backend import GenerateRequest  # noqa: E402
from shared.config import LlamaCppModelConfig  # noqa: E402
from shared.errors import ModelError  # noqa: E402
from shared.skill import INPUT_LABEL, default_skill, render_input, render_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCENES = [
    "A pan of oil is smoking on the stove and nobody is in the kitchen.",
    "A cat is sleeping on a grey sofa next to an open window.",
    "A forklift is reversing towards a man who is looking at his phone.",
]


def _request(text: str, **kw) -> GenerateRequest:
    skill = default_skill()
    return GenerateRequest(system=skill.instructions, demos=skill.demos, input=text, **kw)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from shared.llamacpp_backend import LlamaCppBackend

    cache = tmp_path_factory.mktemp("adapters")
    b = LlamaCppBackend(LlamaCppModelConfig(threads=2, adapter_cache=cache))
    yield b
    b.close()


def test_answers_parse_the_prefix_is_reused_and_the_final_norm_state_comes_with_them(backend):
    layers = (backend.hidden.num_layers,)
    assert backend.hidden.readable == tuple(range(1, layers[0] + 1))
    first = backend.generate(_request(SCENES[0], hidden_layers=layers))
    second = backend.generate(_request(SCENES[1], hidden_layers=layers))
    for gen in (first, second):
        answer = parse_answer(gen.text, verdict_confidence(gen.logprobs))
        assert gen.text.startswith("Answer:") and answer.format_ok, gen.text
        assert 0 < len(gen.logprobs) <= gen.tokens  # a stop sequence's tokens are cut
        assert len(gen.hidden) == backend.hidden.size and np.isfinite(gen.hidden).all()
    # the skill prefix (~150 tokens) is evaluated once; the next input runs only its own
    assert first.prompt_tokens > 100 and second.prompt_tokens < 30
    # the input label ("Scene:") every input starts with is reused with the prefix
    skill = default_skill()
    prefix = render_prefix(skill.instructions, skill.demos)
    whole = backend._tokenize(prefix + render_input(SCENES[1]))
    shared_part = backend._tokenize(prefix + INPUT_LABEL)
    assert whole[: len(shared_part)] == shared_part
    assert second.prompt_tokens == len(whole) - len(shared_part)
    features_only = backend.generate(_request(SCENES[2], hidden_layers=layers, max_new_tokens=0))
    assert features_only.tokens == 0 and features_only.hidden is not None
    with pytest.raises(ModelError, match=r"\[0\] were asked"):
        backend.generate(_request(SCENES[0], hidden_layers=(0, 18)))


def test_an_earlier_layer_comes_from_the_answering_pass_and_changes_no_answer(backend):
    """The middle layer through the eval callback: the same words and final state as
    without it, and the torch backend's hidden state of that layer (same GGUF)."""
    n = backend.hidden.num_layers
    plain = backend.generate(_request(SCENES[0], hidden_layers=(n,)))
    tapped = backend.generate(_request(SCENES[0], hidden_layers=(n // 2, n)))
    again = backend.generate(_request(SCENES[0], hidden_layers=(n,)))  # the callback goes
    assert plain.text == tapped.text == again.text
    size = backend.hidden.size
    assert len(tapped.hidden) == 2 * size
    a, b = np.array(tapped.hidden[size:]), np.array(plain.hidden)
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.995  # batch-size rounding only
    from shared.config import EmbeddedModelConfig
    from shared.embedded import EmbeddedBackend

    torch_backend = EmbeddedBackend(EmbeddedModelConfig(threads=2))
    ref = torch_backend.generate(_request(SCENES[0], hidden_layers=(n // 2 - 1, n // 2, n // 2 + 1),
                                          max_new_tokens=0))  # fmt: skip
    middle = np.array(tapped.hidden[:size])
    cos = [float(middle @ r / np.linalg.norm(middle) / np.linalg.norm(r))
           for r in np.array(ref.hidden).reshape(3, size)]  # fmt: skip
    assert cos[1] > 0.999 and cos[1] > max(cos[0], cos[2]) + 0.005, cos  # the same layer


def test_the_engine_build_names_the_library_that_computes_the_numbers():
    import llama_cpp

    from shared.llamacpp_native import engine_build

    build = engine_build()
    assert build["llama_cpp"] == llama_cpp.__version__
    assert "CPU" in build["cpu_features"]  # the SIMD features it was compiled with
    assert len(build["library"]) == 16 and int(build["library"], 16) >= 0
    assert engine_build() == build  # a fingerprint: the same library, the same answer


def test_a_reused_prefix_answers_as_a_cold_start(backend):
    from shared.llamacpp_backend import LlamaCppBackend

    cold = LlamaCppBackend(LlamaCppModelConfig(threads=2, prefix_cache=False))
    try:
        layers = (backend.hidden.num_layers,)
        backend.generate(_request(SCENES[1]))  # leaves the prefix cached
        warm_gen = backend.generate(_request(SCENES[2], hidden_layers=layers))
        cold_gen = cold.generate(_request(SCENES[2], hidden_layers=layers))
    finally:
        cold.close()
    assert warm_gen.prompt_tokens < cold_gen.prompt_tokens
    assert warm_gen.text == cold_gen.text
    # the prefix is always evaluated alone and the input after it as one batch, so a
    # warm answer is a cold one bit for bit (llama.cpp's sums depend on the batching)
    assert warm_gen.hidden == cold_gen.hidden
    assert [lp.logprob for lp in warm_gen.logprobs] == [lp.logprob for lp in cold_gen.logprobs]


def test_the_sentence_after_a_prefill_continues_it_and_is_the_answer_in_one_pass(backend):
    """answer: when_needed asks the prompt twice (prefill, then the sentence); the second
    call evaluates nothing and gives what one answering pass gives, bit for bit."""
    for layers in ((backend.hidden.num_layers,), (9, backend.hidden.num_layers)):
        backend.generate(_request(SCENES[0]))
        outright = backend.generate(_request(SCENES[2], hidden_layers=layers))
        backend.generate(_request(SCENES[0]))
        prefill = backend.generate(_request(SCENES[2], hidden_layers=layers, max_new_tokens=0))
        sentence = backend.generate(_request(SCENES[2], hidden_layers=layers))
        assert prefill.prompt_tokens > 0 and sentence.prompt_tokens == 0
        assert prefill.hidden == sentence.hidden == outright.hidden
        assert sentence.text == outright.text
        assert [lp.logprob for lp in sentence.logprobs] == [lp.logprob for lp in outright.logprobs]
        again = backend.generate(_request(SCENES[2], hidden_layers=layers))  # after decoding
        assert again.prompt_tokens > 0 and again.text == outright.text


def test_a_lora_switches_on_the_live_context_and_the_base_is_never_reloaded(backend, tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench.llamacpp import random_lora

    lora = tmp_path / "lora"
    random_lora(lora, scale=0.08)
    request = _request(SCENES[0], max_new_tokens=12, stop=())
    base = backend.generate(request).text
    backend.load_adapter("r1", lora)
    assert backend.active_adapter is None and backend.generate(request).text == base
    backend.set_adapter("r1")
    adapted = backend.generate(request)
    assert adapted.text != base
    assert adapted.prompt_tokens > 100  # the prefix was recomputed under the adapter
    backend.set_adapter(None)
    assert backend.generate(request).text == base
    backend.load_adapter("r2", lora)  # the same files: converted once
    assert len(list(Path(backend.config.adapter_cache).glob("*.gguf"))) == 1
    assert backend.loads == 1
    with pytest.raises(ModelError, match="not loaded"):
        backend.set_adapter("r9")
    with pytest.raises(ModelError, match="adapter_config.json"):
        backend.load_adapter("bad", tmp_path)
    backend.unload_adapter("r1")
    backend.unload_adapter("r2")
    assert backend.adapters == []


def test_an_edge_process_on_llamacpp_answers_every_input_and_never_imports_torch(tmp_path):
    source = tmp_path / "inputs.txt"
    source.write_text("\n".join(SCENES) + "\n")
    events = tmp_path / "events.jsonl"
    code = (
        "import sys\n"
        "from edge.cli import main\n"
        f"argv = ['run', '--source', {str(source)!r}, '--backend', 'llamacpp', "
        f"'--events', {str(events)!r}, '--no-progress']\n"
        "try:\n    rc = main(argv)\nexcept SystemExit as e:\n    rc = e.code\n"
        "print('RC', rc, 'TORCH', 'torch' in sys.modules, 'TRANSFORMERS', "
        "'transformers' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert "RC 0 TORCH False TRANSFORMERS False" in done.stdout, done.stdout + done.stderr
    answers = [e for e in map(json.loads, events.read_text().splitlines()) if "answer" in e]
    assert [e["input"] for e in answers] == SCENES
    assert all(e["format_ok"] for e in answers), answers
