"""Fixtures shared by the tests of ``shared``: one real Gemma 3 270M per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer) of the bundled Gemma 3 270M, fp32, loaded once per session."""
    import torch

    from shared.models import load_model

    torch.set_num_threads(2)
    return load_model(dtype="float32", device="cpu")
