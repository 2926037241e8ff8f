"""YAML configuration of the edge daemon and the teacher box, as pydantic models.

Every model forbids unknown keys and every field has bounds and a description, so a
typo'd key, a negative threshold or a wrong type fails at start with the YAML key
path, the bad value and the reason (``load_config`` raises ``ConfigError``).

The teacher box's models are in ``shared.teacher_config``.
This module knows nothing about what the settings do; it only says what is valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import ConfigError

DEFAULT_HOME = Path.home() / ".cache" / "gemma-edge"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- model backends
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


# ---------------------------------------------------------------- edge
class SourceConfig(Strict):
    realtime: bool = Field(
        False, description="Play files at their own frame rate instead of as fast as possible."
    )
    reconnect_initial_s: float = Field(
        0.5, gt=0, le=60, description="First back-off before reopening a dropped stream."
    )
    reconnect_max_s: float = Field(
        10.0, gt=0, le=600, description="Longest back-off between reopen attempts."
    )
    open_timeout_s: float = Field(
        10.0, gt=0, le=600, description="How long to wait for a stream to open."
    )


class GateConfig(Strict):
    max_pixels: int = Field(
        16_777_216,
        ge=4096,
        le=1_073_741_824,
        description="Largest image or frame (width x height) an edge decodes or looks at; an "
        "image file is checked from its header before it is decoded. Over it: skipped, "
        "logged and counted. The default (16 MP, 48 MB decoded) fits a 2 GB Raspberry Pi.",
    )
    sample_fps: float = Field(
        2.0, gt=0, le=120, description="Frames per second looked at; the rest are skipped."
    )
    motion_threshold: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Fraction of pixels that must change against the last processed frame.",
    )
    dedupe_hamming: int = Field(
        6,
        ge=0,
        le=64,
        description="Perceptual-hash distance at or under which a scene counts as a duplicate.",
    )
    audit_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Let a duplicate scene through after this many gated frames (0 = never).",
    )
    same_sketch_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="Text-only backends: skip the model when the same sketch text was answered "
        "within this many seconds (0 = off).",
    )


class SketchConfig(Strict):
    width: int = Field(
        640, ge=64, le=4096, description="Frames are resized to this width before sketching."
    )
    people: bool = Field(True, description="Count people with OpenCV's HOG detector.")
    people_min_score: float = Field(
        0.3, ge=-10, le=10, description="Lowest HOG SVM score counted as a person."
    )
    faces: bool = Field(True, description="Count faces with OpenCV's frontal-face Haar cascade.")
    motion_min_area: float = Field(
        0.002, ge=0, le=1, description="Smallest moving region, as a fraction of the frame."
    )
    fire_min_fraction: float = Field(
        0.005, gt=0, le=1, description="Fire-like pixels needed before the sketch mentions them."
    )
    smoke_min_fraction: float = Field(
        0.05, gt=0, le=1, description="Smoke-like pixels needed before the sketch mentions them."
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of frames sent on.")


class PolicyConfig(Strict):
    confidence_threshold: float = Field(
        0.6, ge=0, le=1, description="Escalate answers whose confidence is below this."
    )
    safety_keywords: list[str] = Field(
        default_factory=lambda: [
            "fire",
            "flame",
            "flames",
            "smoke",
            "knife",
            "blood",
            "weapon",
            "gun",
            "fallen",
            "collapsed",
            "unconscious",
            "injured",
        ],
        description="Whole words that make a case escalate when they appear in input or answer.",
    )
    keyword_exceptions: list[str] = Field(
        default_factory=lambda: ["fire extinguisher", "fire exit", "fire alarm"],
        description="Phrases whose keyword does not count (e.g. 'fire extinguisher').",
    )
    audit_every: int = Field(
        25,
        ge=0,
        le=1_000_000,
        description="Audit about one in N inputs the head passes, more often near its band "
        "(no head: every Nth input; 0 = never).",
    )
    escalate_format_errors: bool = Field(
        True, description="Escalate answers that break the output format."
    )
    sentence_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="With model.answer when_needed: this share of the inputs that need no "
        "sentence get one anyway (a hash draw), for the people reading the events.",
    )
    budget_per_minute: int = Field(
        30,
        ge=0,
        le=100_000,
        description="Most escalations per minute; safety-keyword cases are never dropped.",
    )
    cooldown_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="Do not escalate the same scene again within this many seconds.",
    )
    target_escalation_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="If set, the threshold becomes this quantile of recent confidences.",
    )
    calibration_window: int = Field(
        200, ge=10, le=100_000, description="Recent confidences used for the quantile."
    )
    recall_target: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="System safety recall (alerted or escalated) the teacher certifies when it "
        "calibrates a release's thresholds.",
    )
    recall_delta: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="The recall guarantee holds with probability at least 1 - recall_delta.",
    )
    max_false_alert_rate: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Most safe inputs per unit that may alert locally (above this, the band "
        "escalates instead).",
    )


class MqttConfig(Strict):
    host: str = Field(..., min_length=1, description="MQTT broker host (Mosquitto, EMQX, ...).")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 with TLS, usually).")
    topic_prefix: str = Field(
        "gemma-edge", min_length=1, description="Topics: <prefix>/events, <prefix>/<edge>/..."
    )
    qos: int = Field(1, ge=0, le=2, description="QoS of event messages (1: at least once).")
    client_id: str | None = Field(
        None, description="MQTT client id (default gemma-edge-<edge_id>)."
    )
    username: str | None = Field(None, description="Broker user name.")
    password: str | None = Field(None, description="Broker password (never logged).")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: Path | None = Field(None, description="CA certificate file (TLS).")
    cert_file: Path | None = Field(None, description="Client certificate (TLS, optional).")
    key_file: Path | None = Field(None, description="Client key (TLS, optional).")
    max_queue: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Events kept while the broker is away (oldest dropped).",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive.")
    heartbeat_s: float = Field(30.0, gt=0, le=3600, description="Heartbeat message interval.")
    reconnect_min_s: int = Field(1, ge=1, le=600, description="First reconnect back-off.")
    reconnect_max_s: int = Field(30, ge=1, le=3600, description="Longest reconnect back-off.")


class EventsConfig(Strict):
    path: Path | None = Field(None, description="JSONL events file; empty means stdout.")
    rotate_mb: float = Field(64.0, gt=0, le=100_000, description="Rotate the file at this size.")
    keep: int = Field(5, ge=1, le=1000, description="Rotated files kept.")
    safety_command: str | None = Field(
        None, description="Command run for each safety event; the event JSON is on its stdin."
    )
    safety_pub: str | None = Field(
        None, description="ZeroMQ PUB endpoint that publishes safety events (e.g. tcp://*:5560)."
    )
    mqtt: MqttConfig | None = Field(
        None, description="Publish safety events, availability and heartbeats to an MQTT broker."
    )


class MetricsConfig(Strict):
    port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics port on 127.0.0.1; empty = off."
    )
    host: str = Field("127.0.0.1", description="Address the metrics server binds.")


class LinkConfig(Strict):
    teacher: str | None = Field(
        None,
        description="Teacher endpoint, e.g. tcp://teacher.local:5555; empty = no teacher.",
    )
    insecure: bool = Field(
        False, description="Plain-text ZeroMQ without CurveZMQ. Only for local tests."
    )
    edge_secret_key: Path | None = Field(
        None, description="This edge's secret key file (written by gemma-teacher keys new-edge)."
    )
    teacher_public_key: Path | None = Field(None, description="The teacher's public key file.")
    heartbeat_s: float = Field(2.0, gt=0, le=3600, description="Heartbeat interval.")
    timeout_s: float = Field(
        10.0, gt=0, le=86_400, description="Link is declared dead after this much silence."
    )
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect back-off.")
    outbox: Path = Field(
        DEFAULT_HOME / "edge" / "outbox.sqlite", description="SQLite outbox of escalations."
    )
    outbox_max: int = Field(
        100_000, ge=10, le=100_000_000, description="Most cases kept; oldest non-safety go first."
    )
    send_frames: bool = Field(True, description="Send the JPEG frame with frame escalations.")
    settled_share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the inputs the edge settled itself (alerted, or passed below "
        "the band) sent to the teacher, redacted, for self-training (0 = none).",
    )
    settled_per_minute: int = Field(
        120, ge=0, le=100_000, description="Most settled inputs sent per minute."
    )
    max_message_bytes: int = Field(
        8 * 2**20, ge=1024, le=2**31, description="Largest message accepted from the teacher."
    )


class EdgeConfig(Strict):
    edge_id: str = Field(
        "edge-1",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Name of this edge (letters, digits, . _ -).",
    )
    state_dir: Path = Field(
        DEFAULT_HOME / "edge", description="Where the releases pushed to this edge live."
    )
    skill: Path | None = Field(
        None,
        description="Skill file (YAML/JSON) run bare, without a safety head, when no release "
        "was given or pushed (read at start); empty means the bundled release.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    sketch: SketchConfig = Field(default_factory=SketchConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    link: LinkConfig = Field(default_factory=LinkConfig)

    @model_validator(mode="after")
    def _link_keys(self) -> EdgeConfig:
        link = self.link
        if link.teacher and not link.insecure:
            if link.edge_secret_key is None or link.teacher_public_key is None:
                raise ValueError(
                    "link.teacher is set without keys: give link.edge_secret_key and "
                    "link.teacher_public_key, or set link.insecure: true for local tests"
                )
        return self


# ---------------------------------------------------------------- loading
M = TypeVar("M", bound=BaseModel)


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def validate_config(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate a parsed YAML document; raise ConfigError with (path, value, reason)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("<top>", data, "the file must hold a mapping of keys")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            path = ".".join(str(p) for p in loc) or "<top>"
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            else:
                reason = err["msg"].removeprefix("Value error, ")
            value = err.get("input") if err["type"] != "missing" else None
            if err["type"] not in ("extra_forbidden", "missing"):
                value = _value_at(data, loc) if loc else value
            problems.append((path, value, reason))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path | None, model: type[M]) -> M:
    """Read a YAML file (or nothing: all defaults) into ``model``."""
    if path is None:
        return model()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("<file>", str(path), exc.strerror or str(exc))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [("<yaml>", None, f"not valid YAML: {exc}")]) from None
    return validate_config(data, model, str(path))
