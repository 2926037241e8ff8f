"""The one place a backend is built from its configuration, edge and teacher alike.

``make_backend(model)`` imports the backend's module only when it is asked for (torch
loads only for the embedded one), so an Ollama edge never pays for it. It knows the
backends' constructors, nothing about what they answer.
"""

from __future__ import annotations

from shared.backend import Backend
from shared.config import ModelConfig
from shared.errors import BackendError


def make_backend(model: ModelConfig) -> Backend:
    """The backend ``model`` names (its module imported only now: torch loads only for
    the embedded one). BackendError if it is not installed."""
    try:
        if model.backend == "ollama":
            from shared.ollama_backend import OllamaBackend

            return OllamaBackend(model.ollama, model.max_new_tokens)
        if model.backend == "openai":
            from shared.openai_backend import OpenAIBackend

            return OpenAIBackend(model.openai, model.max_new_tokens)
        if model.backend == "llamacpp":
            from shared.llamacpp_backend import LlamaCppBackend

            return LlamaCppBackend(model.llamacpp)
        from shared.embedded import EmbeddedBackend

        return EmbeddedBackend(model.embedded)
    except ImportError as exc:
        raise BackendError(f"the {model.backend} backend is not installed: {exc}") from None
