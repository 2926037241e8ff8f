"""The one small interface every model backend implements, edge and teacher alike.

    backend.generate(GenerateRequest) -> Generation

A request carries the system prompt (the skill's instructions), few-shot
demonstrations, the input text, an optional JPEG image, stop sequences and a token
budget. A generation carries the text (always starting with ``Answer:`` when the
skill's format is used), token counts, timings and, where the backend has them,
per-token log-probabilities with the top alternatives at each step, and, where the
backend has them and the request asks (``hidden_layers``), the hidden states at the last
prompt token (``shared.head`` turns them into p(unsafe)).

Every backend can be asked about LoRA adapters (``load_adapter``, ``set_adapter``,
``adapters``, ``active_adapter``); one without them says so (``supports_adapters``
False, ``NoAdapters``) and refuses to load one with a ModelError.

Backends: ``shared.embedded.EmbeddedBackend`` (transformers, in-process, default),
``shared.llamacpp_backend.LlamaCppBackend`` (llama.cpp, in-process, no torch) and
``shared.ollama_backend.OllamaBackend``; ``hidden_spec(backend)`` says which hidden states
a backend gives and on which engine (a head runs only on the engine it was fit on);
``shared.backend_factory.make_backend`` builds the one a ``ModelConfig`` names, for the
edge and the teacher alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.errors import ModelError
from shared.skill import INPUT_LABEL, STOP_SEQUENCES, Demo


@dataclass(frozen=True)
class GenerateRequest:
    system: str
    input: str
    demos: tuple[Demo, ...] = ()
    image: bytes | None = None  # JPEG, for multimodal backends; text-only ones ignore it
    stop: tuple[str, ...] = STOP_SEQUENCES
    max_new_tokens: int = 48  # 0: run the prompt only (features, no answer)
    hidden_layers: tuple[int, ...] = ()  # hidden states wanted at the last prompt token


TOP_LOGPROBS = 5  # alternatives every backend reports at each step (TokenLogprob.top)


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)  # alternative token -> logprob


@dataclass
class Generation:
    text: str
    tokens: int  # generated tokens
    prompt_tokens: int = 0  # tokens processed for this request (excluding a cached prefix)
    ttft_s: float = 0.0  # time to first token
    total_s: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    backend: str = ""
    # the hidden states at the last prompt token at ``request.hidden_layers``, concatenated,
    # from the forward pass that answered (backends without them leave None)
    hidden: list[float] | None = None

    @property
    def decode_tokens_per_s(self) -> float:
        decode_s = self.total_s - self.ttft_s
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else 0.0


@dataclass(frozen=True)
class HiddenSpec:
    """Which hidden states a backend gives the safety head, computed by which engine."""

    engine: str  # "torch" or "llamacpp": a head runs only on the engine it was fit on
    num_layers: int
    size: int  # the width of one layer's state
    readable: tuple[int, ...] | None = None  # the indices it can give (None: 0..num_layers)


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop sequence in ``text`` begins (None: there is none)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def hidden_spec(backend: object) -> HiddenSpec | None:
    """What hidden states ``backend`` gives (None: none, as on Ollama)."""
    spec = getattr(backend, "hidden", None)
    if isinstance(spec, HiddenSpec):
        return spec
    config = getattr(getattr(backend, "model", None), "config", None)
    if config is None or not getattr(config, "num_hidden_layers", 0):
        return None
    return HiddenSpec("torch", int(config.num_hidden_layers), int(config.hidden_size))


def chat_messages(request: GenerateRequest) -> list[dict]:
    """A request as chat turns (the instructions as the system message, each demonstration
    a user and an assistant turn, the input last), for chat APIs; the caller attaches the
    image to the last turn its API's way."""
    messages: list[dict] = [{"role": "system", "content": request.system}]
    for demo in request.demos:
        messages.append({"role": "user", "content": f"{INPUT_LABEL} {demo.input.strip()}"})
        messages.append({"role": "assistant", "content": demo.answer.strip()})
    text = " ".join(request.input.split())
    messages.append({"role": "user", "content": f"{INPUT_LABEL} {text}"})
    return messages


def engine_of(backend: object) -> str:
    """The engine computing ``backend``'s hidden states ("torch" where it gives none)."""
    spec = hidden_spec(backend)
    return spec.engine if spec is not None else "torch"


@runtime_checkable
class Backend(Protocol):
    name: str
    supports_adapters: bool  # False: load_adapter raises ModelError

    def generate(self, request: GenerateRequest) -> Generation: ...

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        """Load the PEFT adapter in ``path`` under ``name`` (not active yet)."""
        ...

    def set_adapter(self, name: str | None) -> None:
        """Answer with adapter ``name`` from now on (None: the base model)."""
        ...

    @property
    def adapters(self) -> list[str]:
        """The adapter names loaded now (a backend may let old ones go)."""
        ...

    @property
    def active_adapter(self) -> str | None: ...

    def close(self) -> None: ...


class NoAdapters:
    """The adapter half of ``Backend`` for a backend that has none."""

    name = "backend"
    supports_adapters = False
    adapters: list[str] = []
    active_adapter: str | None = None

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        raise ModelError(f"the {self.name} backend cannot load a LoRA adapter")

    def set_adapter(self, name: str | None) -> None:
        if name is not None:
            raise ModelError(f"the {self.name} backend cannot load a LoRA adapter")


def generate_many(backend: Backend, requests: list[GenerateRequest]) -> list[Generation]:
    """Batch where the backend can (``generate_batch``), else one by one."""
    batch = getattr(backend, "generate_batch", None)
    if batch is not None:
        return batch(requests)
    return [backend.generate(r) for r in requests]
