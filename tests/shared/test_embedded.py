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
    assert b.wait_ready(timeout=300)  # the int8 head, so the fast path is what is tested
    assert b._decoder.int8_ready
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
    # Everything off: no prefix cache, exact full LM head, one forward per token.
    plain_config = EmbeddedModelConfig(prefix_cache=False, int8_head=False, speculative=False)
    plain = EmbeddedBackend(plain_config, model=gemma[0], tokenizer=gemma[1])
    uncached = plain.generate(request(FENCE, max_new_tokens=8))
    assert uncached.prompt_tokens == full
    assert uncached.text == first.text
    assert [lp.token for lp in uncached.logprobs] == [lp.token for lp in first.logprobs]
    for ours, exact in zip(first.logprobs, uncached.logprobs, strict=True):
        assert ours.logprob == pytest.approx(exact.logprob, abs=0.05)


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
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            param.data.mul_(-3.0)
    lora.save_pretrained(tmp_path / "other")
    del lora
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes(
        (tmp_path / "noisy" / "adapter_config.json").read_bytes()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")

    embed = gemma[0].get_input_embeddings().weight
    pointer = embed.data_ptr()
    req = request(KITCHEN, max_new_tokens=8)
    base = backend.generate(req).text
    backend.load_adapter("noisy", tmp_path / "noisy")
    assert backend.active_adapter is None
    assert backend.generate(req).text == base
    backend.set_adapter("noisy")
    assert backend.active_adapter == "noisy"
    adapted_gen = backend.generate(req)
    adapted = adapted_gen.text
    assert adapted != base
    backend.set_adapter(None)
    assert backend.generate(req).text == base
    backend.set_adapter("noisy")
    assert backend.generate(req).text == adapted  # its own prefix cache, still right
    with pytest.raises(ModelError, match="loading"):
        backend.load_adapter("noisy", broken)
    assert backend.active_adapter == "noisy" and backend.generate(req).text == adapted
    backend.load_adapter("noisy", tmp_path / "other")  # replaces the active one in place
    assert backend.active_adapter == "noisy" and backend.adapters == ["noisy"]
    replaced = backend.generate(req)
    assert [lp.logprob for lp in replaced.logprobs] != [lp.logprob for lp in adapted_gen.logprobs]
    backend.unload_adapter("noisy")
    assert backend.active_adapter is None and backend.adapters == []
    assert backend.generate(req).text == base
    assert gemma[0].get_input_embeddings().weight.data_ptr() == pointer
    with pytest.raises(ModelError, match="not loaded"):
        backend.set_adapter("noisy")
    with pytest.raises(ModelError, match="adapter_config.json"):
        backend.load_adapter("missing", tmp_path / "nowhere")


def tiny(gemma, window: int):
    """A randomly initialised 2-layer Gemma 3 with the real tokenizer: fast exactness checks."""
    from tests.helpers import tiny_gemma

    model = tiny_gemma(gemma[0].config.vocab_size, hidden_size=64, intermediate_size=128,
                       head_dim=32, sliding_window=window,
                       layer_types=["sliding_attention", "full_attention"])  # fmt: skip
    return model.eval(), gemma[1]


def test_lean_step_equals_the_model_forward(gemma):
    import copy

    import torch
    from transformers import DynamicCache

    model, tokenizer = tiny(gemma, window=16)
    b = EmbeddedBackend(EmbeddedModelConfig(int8_head=False), model=model, tokenizer=tokenizer)
    ids = torch.tensor([tokenizer("A short prompt to fill the cache").input_ids])
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        b._decoder.forward(ids, cache)
        other = copy.deepcopy(cache)
        for token in (236, 1000, 5000, 7, 9, 11, 13, 17, 19, 23):  # past the sliding window
            ours = b._decoder.step(token, cache)
            reference = model.model(
                input_ids=torch.tensor([[token]]), past_key_values=other, use_cache=True
            ).last_hidden_state[0]
            assert torch.allclose(ours, reference, atol=1e-5)


def test_fast_paths_keep_the_greedy_tokens(gemma):
    import torch

    model, tokenizer = tiny(gemma, window=256)
    req = GenerateRequest(system="one two three", input="one two", stop=(), max_new_tokens=12)
    prompt = tokenizer("one two three\n\nScene: one two\nAnswer:").input_ids
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    truth = out[0, len(prompt) :].tolist()

    calls = 0

    def oracle(context, budget):
        """Drafts the true continuation, every other time with a wrong middle token."""
        nonlocal calls
        done = len(context) - len(prompt)
        draft = truth[done : done + min(3, budget - 1)]
        calls += 1
        if calls % 2 and len(draft) == 3:
            draft[1] = (draft[1] + 1) % 1000
        return draft

    plain = EmbeddedBackend(
        EmbeddedModelConfig(int8_head=False, speculative=False), model=model, tokenizer=tokenizer
    )
    fast = EmbeddedBackend(EmbeddedModelConfig(), model=model, tokenizer=tokenizer)
    fast._decoder.draft = oracle  # in place of prompt lookup
    assert fast.wait_ready(timeout=120) and fast._decoder.int8_ready
    a, b = plain.generate(req), fast.generate(req)
    assert tokenizer.decode(truth, skip_special_tokens=True) == a.text.removeprefix("Answer:")
    assert [lp.token for lp in b.logprobs] == [lp.token for lp in a.logprobs]
    assert b.text == a.text and b.tokens == a.tokens == 12
    assert calls >= 3  # drafts were verified, accepted and rejected
