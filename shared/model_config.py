"""The model backends' configuration (the student on an edge, the teacher's student and
reviewer): which backend answers and each backend's settings.

It knows nothing about what the backends do; it only says what is valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shared.config_base import DEFAULT_HOME, Strict


class EmbeddedModelConfig(Strict):
    gguf_path: Path | None = Field(
        None, description="GGUF file to load; empty means the bundled Gemma 3 270M."
    )
    cache_dir: Path = Field(
        DEFAULT_HOME / "models",
        description="Where converted safetensors weights are cached (converted once).",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Weight dtype in memory. bfloat16 halves memory traffic; float32 is exact.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    threads: int | None = Field(
        None, ge=1, le=256, description="torch CPU threads; empty means torch's default."
    )
    prefix_cache: bool = Field(
        True, description="Reuse the KV cache of the skill prefix across inputs."
    )
    int8_head: bool = Field(
        True,
        description="CPU: pick each token's candidates with an int8 copy of the LM head, "
        "then rescore the best 64 exactly (same greedy tokens, ~3x less head traffic).",
    )
    speculative: bool = Field(
        True,
        description="Prompt-lookup decoding: draft tokens copied from the prompt are "
        "verified in one forward (greedy output unchanged, fewer forwards).",
    )


class LlamaCppModelConfig(Strict):
    gguf_path: Path | None = Field(
        None, description="GGUF file llama.cpp runs; empty means the bundled Gemma 3 270M."
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="llama.cpp threads; empty means min(4, CPU cores)."
    )
    n_ctx: int = Field(
        2048, ge=256, le=131072, description="Context length in tokens (prompt + answer)."
    )
    n_batch: int = Field(
        512, ge=16, le=8192, description="Prompt tokens evaluated per llama_decode call."
    )
    prefix_cache: bool = Field(
        True, description="Reuse the keys and values of the skill prefix across inputs."
    )
    adapter_cache: Path = Field(
        DEFAULT_HOME / "adapters",
        description="Where releases' LoRA adapters are kept converted to GGUF (once each).",
    )
    mmproj: Path | None = Field(
        None,
        description="The multimodal projector GGUF (mmproj) of the model in gguf_path: frames "
        "then reach the model as images (llama.cpp's mtmd); empty means text only (the scene "
        "sketch).",
    )

    @model_validator(mode="after")
    def _mmproj_needs_its_model(self) -> LlamaCppModelConfig:
        if self.mmproj is not None and self.gguf_path is None:
            raise ValueError(
                "mmproj is set without gguf_path: give the multimodal GGUF the projector "
                "belongs to (the bundled Gemma 3 270M reads no images)"
            )
        return self


class OllamaModelConfig(Strict):
    host: str = Field("http://127.0.0.1:11434", min_length=1, description="Ollama server URL.")
    model: str = Field("gemma3:4b", min_length=1, description="Ollama model name (tag).")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Per-request timeout in seconds.")
    keep_alive: str = Field("10m", description="How long Ollama keeps the model loaded.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra Ollama options (num_ctx, temperature, ...)."
    )
    logprobs: bool = Field(True, description="Ask the server for token log-probabilities.")
    stream: bool = Field(
        True, description="Stream the reply (measures time to first token); same result."
    )
    release_model: str = Field(
        "gemma-edge-student",
        min_length=1,
        pattern=r"^[a-z0-9][a-z0-9._/-]*$",
        description="Name of the models built for releases with an adapter (tag :r<N>).",
    )
    keep_release_models: int = Field(
        3, ge=2, le=100, description="Release models kept on the server (older are deleted)."
    )


class OpenAIModelConfig(Strict):
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        min_length=1,
        description="An OpenAI-compatible API (vLLM, SGLang, llama-server, LM Studio), "
        "up to and including /v1.",
    )
    model: str = Field("google/gemma-3-27b-it", min_length=1, description="Model name served.")
    api_key: str | None = Field(
        None, description="Bearer token; unset: the environment variable api_key_env, if any."
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Where to read the key from.")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Per-request timeout.")
    max_in_flight: int = Field(
        8, ge=1, le=256, description="Requests in flight at once (reviewer.batch_size at least)."
    )
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of a 429, a 5xx, a timeout or a refused connection."
    )
    retry_initial_s: float = Field(0.5, gt=0, le=60, description="First back-off (doubles).")
    retry_max_s: float = Field(30.0, gt=0, le=600, description="Longest back-off, Retry-After too.")


class ModelConfig(Strict):
    backend: Literal["llamacpp", "embedded", "ollama", "openai"] = Field(
        "llamacpp",
        description="Which backend answers: in-process llama.cpp on the GGUF (llamacpp, the "
        "default: no torch in the process), in-process transformers + PyTorch (embedded; "
        "`torch` is accepted for it), an Ollama server, or an OpenAI-compatible server (openai).",
    )
    embedded: EmbeddedModelConfig = Field(default_factory=EmbeddedModelConfig)
    llamacpp: LlamaCppModelConfig = Field(default_factory=LlamaCppModelConfig)
    ollama: OllamaModelConfig = Field(default_factory=OllamaModelConfig)
    openai: OpenAIModelConfig = Field(default_factory=OpenAIModelConfig)
    max_new_tokens: int = Field(48, ge=1, le=4096, description="Token budget per answer.")
    answer: Literal["always", "when_needed"] = Field(
        "when_needed",
        description="when_needed: with a release's head, an input is judged from its prefill "
        "and the sentence is generated only for an alert, an escalation, an audit or "
        "policy.sentence_share of the rest; always: every input gets its sentence (set the "
        "same on the teacher's student).",
    )
    adapter: Path | None = Field(
        None, description="LoRA adapter directory to activate at start (embedded, llamacpp)."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _torch_is_embedded(cls, value: object) -> object:
        return "embedded" if value == "torch" else value
