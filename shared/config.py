"""YAML configuration of the edge daemon and the teacher box, as pydantic models.

Every model forbids unknown keys and every field has bounds and a description, so a
typo'd key, a negative threshold or a wrong type fails at start with the YAML key
path, the bad value and the reason (``load_config`` raises ``ConfigError``).

The model backends' settings are in ``shared.model_config``, the teacher box's models in
``shared.teacher_config``, loading in ``shared.config_base``.
This module knows nothing about what the settings do; it only says what is valid.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

# Callers take every configuration model and the loaders from here, wherever they live.
from shared.config_base import DEFAULT_HOME, Strict, load_config, validate_config  # noqa: F401
from shared.model_config import (  # noqa: F401
    EmbeddedModelConfig,
    LlamaCppModelConfig,
    ModelConfig,
    OllamaModelConfig,
    OpenAIModelConfig,
)


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
        True,
        description="Escalate answers that break the output format (with a safety head, "
        "only those the head does not alert on).",
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
