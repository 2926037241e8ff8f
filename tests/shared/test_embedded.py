"""The embedded backend on the real bundled Gemma 3 270M (one model load per session)."""

from __future__ import annotations

import threading

import pytest

from shared.answer import parse_answer, verdict_confidence
from shared.backend import GenerateRequest, generate_many
from shared.config import EmbeddedModelConfig
from shared.embedded import EmbeddedBackend
from shared.errors import ModelError
from shared.skill import default_skill

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SKILL = default_skill()
KITCHEN = "A man is cooking pasta in a kitchen."
FENCE = "A child climbs over a pool fence."


def request(text: str, **kw) -> GenerateRequest:
    return GenerateRequest(system=SKILL.instructions, demos=SKILL.demos, input=text, **kw)


@pytest.fixture(scope="module")
def backend(gemma):
    model, tokenizer = gemma
    b = EmbeddedBackend(EmbeddedModelConfig(), model=model, tokenizer=tokenizer)
    yield b
    b.close()


def naive(gemma, text: str, max_new_tokens: int) -> str:
    import torch

    model, tokenizer = gemma
    ids = tokenizer(SKILL.prompt(text), return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_same_text_as_naive_generate_and_parses(backend, gemma):
    gen = backend.generate(request(KITCHEN, max_new_tokens=32))
    assert gen.text.startswith("Answer:")
    reference = "Answer:" + naive(gemma, KITCHEN, gen.tokens)
    # Ours cuts the stop sequence ("\n\n"); naive generate ran into it.
    assert reference.startswith(gen.text)
    assert "\n\n" not in gen.text and "\nScene:" not in gen.text
    answer = parse_answer(gen.text, verdict_confidence(gen.logprobs))
    assert answer.format_ok, gen.text
    assert answer.prob_confidence is not None and 0.5 <= answer.prob_confidence <= 1.0
    assert gen.backend.startswith("embedded:")


def test_prefix_cache_processes_only_the_input(backend, gemma):
    first = backend.generate(request(FENCE, max_new_tokens=8))
    second = backend.generate(request(FENCE, max_new_tokens=8))
    full = len(gemma[1](SKILL.prompt(FENCE)).input_ids)
    assert second.prompt_tokens < 30 < full
    assert second.text == first.text
    uncached = EmbeddedBackend(
        EmbeddedModelConfig(prefix_cache=False), model=gemma[0], tokenizer=gemma[1]
    ).generate(request(FENCE, max_new_tokens=8))
    assert uncached.prompt_tokens == full
    assert uncached.text == first.text
    assert [lp.token for lp in uncached.logprobs] == [lp.token for lp in first.logprobs]


def test_logprobs_and_budget(backend):
    gen = backend.generate(request(KITCHEN, max_new_tokens=5, stop=()))
    assert gen.tokens == 5 and len(gen.logprobs) == 5
    text = "".join(lp.token for lp in gen.logprobs)
    assert gen.text == "Answer:" + text
    for lp in gen.logprobs:
        assert lp.logprob <= 0
        assert len(lp.top) == 5 and lp.top[lp.token] == pytest.approx(lp.logprob)
        assert max(lp.top.values()) == pytest.approx(lp.logprob)
    assert 0 < gen.ttft_s <= gen.total_s


def test_threads_are_serialised_and_agree(backend):
    expected = backend.generate(request(KITCHEN, max_new_tokens=6)).text
    results: list[str] = []

    def worker():
        results.append(backend.generate(request(KITCHEN, max_new_tokens=6)).text)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3
    assert [g.text for g in generate_many(backend, [request(KITCHEN, max_new_tokens=6)])] == [
        expected
    ]


def test_adapters_switch_without_reloading_base(backend, gemma, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(gemma[0]),
        LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(tmp_path / "noisy")
    assert (tmp_path / "noisy" / "adapter_model.safetensors").is_file()
    del lora

    embed = gemma[0].get_input_embeddings().weight
    pointer = embed.data_ptr()
    req = request(KITCHEN, max_new_tokens=8)
    base = backend.generate(req).text
    backend.load_adapter("noisy", tmp_path / "noisy")
    assert backend.active_adapter is None
    assert backend.generate(req).text == base
    backend.set_adapter("noisy")
    assert backend.active_adapter == "noisy"
    adapted = backend.generate(req).text
    assert adapted != base
    backend.set_adapter(None)
    assert backend.generate(req).text == base
    backend.set_adapter("noisy")
    assert backend.generate(req).text == adapted  # its own prefix cache, still right
    backend.unload_adapter("noisy")
    assert backend.active_adapter is None and backend.adapters == []
    assert backend.generate(req).text == base
    assert gemma[0].get_input_embeddings().weight.data_ptr() == pointer
    with pytest.raises(ModelError, match="not loaded"):
        backend.set_adapter("noisy")
    with pytest.raises(ModelError, match="adapter_config.json"):
        backend.load_adapter("missing", tmp_path / "nowhere")
