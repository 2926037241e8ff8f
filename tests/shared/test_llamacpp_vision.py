"""Frames for a multimodal GGUF (``model.llamacpp.mmproj``): a JPEG reaches the model as an
image through llama.cpp's mtmd, the head's features come from the pass that answers, and
the prefix cache stays exact around it.

Real components only: a tiny random multimodal Gemma 3 converted by llama.cpp's own
converter (``tests/shared/tiny_gemma3_vision.py``: about 70 s the first time, then cached
under ~/.cache/gemma-edge/test-models); skipped, saying why, if the llama-cpp-python sdist
that ships the converter cannot be fetched.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

from shared.backend import GenerateRequest  # noqa: E402
from shared.config import EdgeConfig, LlamaCppModelConfig, validate_config  # noqa: E402
from shared.errors import BackendError, ConfigError, ModelError  # noqa: E402
from shared.skill import default_skill  # noqa: E402
from tests.shared.tiny_gemma3_vision import Unavailable, tiny_gemma3_vision  # noqa: E402

SCENE = "Two people, one face, motion in the lower left, no fire-like colour, bright."
TOKENS = 4  # a random model's words: few, and no stop sequences to cut them
THREADS = 1


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _request(text: str, image: bytes | None = None, **kw) -> GenerateRequest:
    skill = default_skill()
    kw.setdefault("max_new_tokens", TOKENS)
    return GenerateRequest(
        system=skill.instructions, demos=skill.demos, input=text, image=image, stop=(), **kw
    )


@pytest.fixture(scope="module")
def tiny():
    try:
        return tiny_gemma3_vision()
    except Unavailable as exc:
        pytest.skip(str(exc))


def _backend(gguf, mmproj=None):
    from shared.llamacpp_backend import LlamaCppBackend

    return LlamaCppBackend(LlamaCppModelConfig(gguf_path=gguf, mmproj=mmproj, threads=THREADS))


@pytest.fixture(scope="module")
def backend(tiny):
    b = _backend(*tiny)
    yield b
    b.close()


def test_a_frame_reaches_the_model_and_the_head_reads_the_answering_pass(backend):
    assert backend.accepts_images  # the edge sends it JPEGs, not only the sketch
    n, size = backend.hidden.num_layers, backend.hidden.size
    layers = (n // 2, n)  # an earlier layer (eval callback) and the final-norm state
    a = backend.generate(_request(SCENE, _jpeg(1), hidden_layers=layers))
    assert a.text.startswith("Answer:") and len(a.text) > len("Answer:")
    assert a.tokens == TOKENS and len(a.logprobs) == TOKENS
    assert all(lp.logprob <= 0 and 0 < len(lp.top) <= 5 for lp in a.logprobs)
    assert len(a.hidden) == 2 * size and np.isfinite(a.hidden).all()
    # another frame: the skill prefix is reused, the image and what follows it are new
    b = backend.generate(_request(SCENE, _jpeg(2), hidden_layers=layers))
    assert 16 < b.prompt_tokens < 60 < 100 < a.prompt_tokens  # 16 positions per image
    assert np.abs(np.subtract(a.hidden, b.hidden)).max() > 1e-3  # the image reaches the state
    # the first frame again, after the other: evaluated again, the same state and words
    again = backend.generate(_request(SCENE, _jpeg(1), hidden_layers=layers))
    assert again.prompt_tokens == b.prompt_tokens and again.text == a.text
    np.testing.assert_allclose(again.hidden, a.hidden, rtol=1e-5, atol=1e-6)
    # and once more at once: its whole prompt is cached but the last token; identical
    same = backend.generate(_request(SCENE, _jpeg(1), hidden_layers=layers))
    assert same.prompt_tokens == 1 and same.text == a.text and same.hidden == again.hidden


def test_the_prefill_then_the_sentence_reuse_the_frame(backend):
    """``answer: when_needed``: the prompt alone, then the sentence, for one frame."""
    n = backend.hidden.num_layers
    frame = _jpeg(3)
    quick = backend.generate(_request(SCENE, frame, hidden_layers=(n,), max_new_tokens=0))
    full = backend.generate(_request(SCENE, frame, hidden_layers=(n,)))
    assert quick.tokens == 0 and quick.logprobs is None and full.tokens == TOKENS
    # the sentence continues the prefill: nothing evaluated again, one answering pass's bits
    assert full.prompt_tokens == 0 and full.hidden == quick.hidden
    backend.generate(_request(SCENE, _jpeg(4), hidden_layers=(n,)))
    outright = backend.generate(_request(SCENE, frame, hidden_layers=(n,)))
    assert outright.prompt_tokens > 0 and outright.text == full.text
    assert outright.hidden == full.hidden


def test_text_after_a_frame_reads_as_on_a_fresh_text_only_backend(tiny, backend):
    """The image's keys and values never leak into a text request; without mmproj, an
    image request is today's: the image is ignored, the text (the sketch) answered."""
    n = backend.hidden.num_layers
    backend.generate(_request(SCENE, _jpeg(4), hidden_layers=(n,)))
    after = backend.generate(_request(SCENE, hidden_layers=(n,)))
    text_only = _backend(tiny[0])
    try:
        assert not getattr(text_only, "accepts_images", False)
        fresh = text_only.generate(_request(SCENE, hidden_layers=(n,)))
        ignored = text_only.generate(_request(SCENE, _jpeg(4), hidden_layers=(n,)))
    finally:
        text_only.close()
    assert after.text == fresh.text == ignored.text
    assert fresh.prompt_tokens > 100 and ignored.prompt_tokens < 30  # the input alone again
    np.testing.assert_allclose(after.hidden, fresh.hidden, rtol=1e-5, atol=1e-6)
    assert ignored.hidden == fresh.hidden
    for x, y in zip(after.logprobs, fresh.logprobs, strict=True):
        assert x.token == y.token and abs(x.logprob - y.logprob) < 1e-4


def test_a_frame_llama_cpp_cannot_read_fails_alone(backend):
    with pytest.raises(BackendError, match="not an image"):
        backend.generate(_request(SCENE, b"\xff\xd8 not really a JPEG"))
    assert backend.generate(_request(SCENE, _jpeg(1))).text.startswith("Answer:")


def test_a_missing_or_wrong_projector_fails_at_start_with_one_line(tiny, tmp_path):
    from shared.models import bundled_gguf

    gguf, mmproj = tiny
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a GGUF file " * 64)
    cases = [
        (gguf, tmp_path / "absent.gguf", "no such file"),
        (gguf, junk, "not a GGUF file"),
        (gguf, gguf, "not a multimodal projector .*general.type is 'model'"),
        (bundled_gguf().path, mmproj, r"could not put this projector on .*n_embd = 640"),
    ]
    for model, projector, reason in cases:
        with pytest.raises(ModelError, match=reason) as caught:
            _backend(model, projector)
        assert str(caught.value).startswith("model.llamacpp.mmproj: ")
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="mmproj is set without gguf_path") as caught:
        validate_config({"model": {"llamacpp": {"mmproj": str(mmproj)}}}, EdgeConfig, "edge.yaml")
    assert "\n" not in caught.value.one_line()
