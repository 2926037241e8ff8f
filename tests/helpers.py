"""Small helpers several test modules share: a free port, a tiny random Gemma 3."""

from __future__ import annotations

from edge.demo_pair import free_port  # noqa: F401 (one definition, the demo's)


def tiny_gemma(vocab_size: int = 512, seed: int = 0, **overrides):
    """A randomly initialised 2-layer Gemma 3 text model (hidden 32 unless overridden):
    the real architecture at a size that trains and exports in seconds."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}  # fmt: skip
    config = Gemma3TextConfig(vocab_size=vocab_size, **{**shape, **overrides})
    return Gemma3ForCausalLM(config)
