"""YAML configuration of the teacher box, as pydantic models (see ``shared.config``).

Same rules as the edge's: unknown keys are refused, every field has bounds and a
description, and ``shared.config.load_config`` reports a bad file by key path, value
and reason. It knows nothing about what the settings do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from shared.config import (
    DEFAULT_HOME,
    ModelConfig,
    OllamaModelConfig,
    PolicyConfig,
    Strict,
)


class ReviewerConfig(Strict):
    backend: Literal["ollama", "openai", "embedded", "labels"] = Field(
        "labels",
        description="Who reviews: an Ollama model, an OpenAI-compatible server (vLLM, SGLang, "
        "llama-server), a local model, or labelled JSONL.",
    )
    labels: Path | None = Field(
        None, description="Labelled JSONL (input, safety, keywords[, answer]) for 'labels'."
    )
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig(
            backend="ollama", ollama=OllamaModelConfig(model="gemma3:27b"), max_new_tokens=96
        ),
        description="Backend settings when backend is 'ollama', 'openai' or 'embedded'.",
    )
    workers: int = Field(1, ge=1, le=64, description="Review worker threads.")
    batch_size: int = Field(8, ge=1, le=1024, description="Cases reviewed together.")

    @model_validator(mode="after")
    def _labels_need_file(self) -> ReviewerConfig:
        if self.backend == "labels" and self.labels is None:
            raise ValueError("reviewer.backend is 'labels' but reviewer.labels names no file")
        return self


class ServerConfig(Strict):
    bind: str = Field("tcp://127.0.0.1:5555", description="ROUTER endpoint the edges connect to.")
    insecure: bool = Field(
        False, description="Plain-text ZeroMQ without CurveZMQ. Only for local tests."
    )
    keys_dir: Path = Field(
        DEFAULT_HOME / "teacher" / "keys",
        description="Teacher key pair and the allow-list of edge public keys.",
    )
    max_message_bytes: int = Field(
        8 * 2**20, ge=1024, le=2**31, description="Largest message accepted from an edge."
    )
    heartbeat_s: float = Field(2.0, gt=0, le=3600, description="Heartbeat interval.")
    commit_batch: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most escalations stored in one transaction before they are acknowledged.",
    )
    edge_timeout_s: float = Field(
        10.0, gt=0, le=86_400, description="An edge silent this long counts as disconnected."
    )
    push_retry_s: float = Field(
        30.0, gt=0, le=86_400, description="Wait before pushing the same version to an edge again."
    )


class ConsoleConfig(Strict):
    host: str = Field(
        "127.0.0.1",
        description="Address the console listens on. Anything but loopback needs `token`.",
    )
    port: int = Field(8765, ge=0, le=65535, description="TCP port (0: any free one).")
    token: SecretStr | None = Field(
        None,
        description="Shared secret a person types once to sign in (a session cookie "
        "follows); scripts may send it as `Authorization: Bearer`. Never shown on a page.",
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="How long a sign-in lasts.")
    page_size: int = Field(48, ge=1, le=500, description="Cases per page of the review queue.")


class UpskillConfig(Strict):
    candidates: int = Field(6, ge=1, le=100, description="Candidate skills per round.")
    rounds: int = Field(2, ge=1, le=20, description="Rounds of candidate generation.")
    demos: int = Field(4, ge=0, le=64, description="Few-shot demonstrations per candidate.")
    holdout_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of the evaluation set held out for the final gate."
    )
    max_eval_cases: int = Field(
        40, ge=1, le=100_000, description="Most cases scored per candidate."
    )
    seed: int = Field(0, description="Random seed for splits and demonstration picks.")
    select_fraction: float = Field(
        0.4,
        gt=0,
        lt=1,
        description="Share of the non-held-out cases that ranks candidates; the rest is the "
        "pool demonstrations are picked from.",
    )
    writer: Literal["auto", "reviewer", "none"] = Field(
        "auto",
        description="Who writes candidate prompts besides the built-in variants: 'reviewer' "
        "asks the reviewer model; 'auto' does so only for an Ollama reviewer (the bundled "
        "base model and label files cannot write prompts); 'none' never.",
    )
    max_balanced_drop: float | None = Field(
        0.0,
        ge=0,
        le=1,
        description="A winner may lose at most this much balanced safety agreement (mean of "
        "recall and specificity) against the active skill, on the selection and the held-out "
        "split; stops 'flag everything' from winning on recall. Empty: no such check.",
    )
    race: bool = Field(
        True,
        description="Score each round's candidates on half the selection split first and "
        "only the better half on the rest (saves a quarter of the student's time).",
    )
    min_gain: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How much the winner's held-out score must exceed the active skill's for "
        "the report to say it beats it (the release gate alone decides what edges get).",
    )


class LoraConfig(Strict):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=4096, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names that get adapters.",
    )


class TrainConfig(Strict):
    lora: LoraConfig = Field(default_factory=LoraConfig)
    epochs: float = Field(4.0, gt=0, le=1000, description="Passes over the training set.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Share of steps warming up.")
    batch_size: int = Field(4, ge=1, le=4096, description="Sequences per step.")
    max_length: int = Field(256, ge=16, le=32768, description="Longest training sequence.")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of cases frozen as the evaluation split."
    )
    early_stop_patience: int = Field(
        2, ge=0, le=100, description="Evaluations of rising eval loss before stopping (0 = off)."
    )
    seed: int = Field(0, description="Random seed.")
    evals_per_epoch: int = Field(
        2, ge=1, le=1000, description="Evaluation-loss checks per epoch (for early stopping)."
    )
    checkpoint_every: int = Field(
        50, ge=1, le=1_000_000, description="Steps between resumable checkpoints."
    )
    gate_max_new_tokens: int = Field(
        40, ge=8, le=512, description="Token budget per answer when the gate scores a student."
    )
    generic_examples: Path | None = Field(
        None, description="JSONL of {prompt, completion} mixed in against forgetting."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where training runs: fp32 on CPU, bf16 on CUDA."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model body (CUDA only; ~2.7x faster steps, minutes to compile).",
    )
    objective: Literal["answer", "answer+head"] = Field(
        "answer",
        description="What a LoRA learns: answer (the answer tokens under the edge's prompt); "
        "answer+head (plus a linear probe's logistic loss on the states the safety head "
        "reads, so its classes separate: teacher.train.probe).",
    )
    head_weight: float = Field(
        1.0, gt=0, le=100, description="Weight of the head term under objective answer+head."
    )
    lora_cases: Literal["all", "sites"] = Field(
        "all",
        description="Which fit-split cases train a LoRA: all; or sites (the edges' reviewed "
        "cases only: the bundled ones join the calibration split, so a release with an "
        "adapter certifies its thresholds on as many cases as one without).",
    )


class ReleaseConfig(Strict):
    bundled_labels: bool = Field(
        True,
        description="Every build (train, upskill) adds the bundled labelled scenes "
        "(shared.evaluation.BUNDLED_LABELS, 300) to "
        "the store's cases and --labels, as v0 was built: the head and its thresholds rest "
        "on them beside the site's reviews. Off: the reviews and --labels only.",
    )
    calibration_fraction: float = Field(
        0.55,
        gt=0,
        lt=1,
        description="Share of the non-frozen cases the LoRA never trains on; with "
        "calibration: split, also the share that calibrates the thresholds (the rest "
        "trains the head).",
    )
    calibration: Literal["crossfit", "split"] = Field(
        "crossfit",
        description="crossfit: every reviewed case trains and calibrates: `folds` heads, "
        "each fitted with one fold left out, score their fold; the thresholds are "
        "certified on those out-of-fold scores and the release ships the heads' average; "
        "split: a head on the fit share, thresholds on the never-trained calibration share "
        "(`calibration_fraction`; the exact finite-sample guarantee, on fewer cases).",
    )
    folds: int = Field(5, ge=2, le=50, description="Folds of the crossfit calibration.")
    canaries: int = Field(
        6,
        ge=0,
        le=32,
        description="Frozen-split cases (half hazards the harness caught, half safe scenes) "
        "written into each release with the p_unsafe the harness computed; an edge reruns "
        "them before it activates the release.",
    )
    canary_tolerance: float = Field(
        0.05,
        gt=0,
        le=1,
        description="The largest |p_unsafe - the teacher's| a canary may show on an edge "
        "(the same engine agrees to ~1e-6; another engine or a broken one does not).",
    )
    max_self_labelled: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="Most self-labelled traffic cases (train --traffic) a head trains on: "
        "the most recent; each costs one prefill per build.",
    )
    self_labels: Literal["all", "passed", "off"] = Field(
        "all",
        description="Which settled inputs train the head: all (alerted -> unsafe, passed -> "
        "safe), passed (only what the edge ruled out: its alerts at a new site include "
        "false alerts, and training on them makes the next head alert more), off.",
    )
    head_l2: float = Field(
        0.1,
        gt=0,
        le=100,
        description="L2 penalty of a safety head fitted from scratch (0.03 needed fewer band "
        "calls in the three tuning sites' replays, but more calls in the factory demo: "
        "bench/results/flywheel_screens/demo-head_l2_0.03-seed0).",
    )
    keyword_rule: Literal["keep", "certify"] = Field(
        "keep",
        description="keep: every release keeps the safety-keyword rule (rare severe hazards, "
        "a weapon, may be absent from the calibration cases); certify: keep it only where "
        "it saves teacher calls at the certified recall on the calibration split.",
    )
    must_gain: bool = Field(
        False,
        description="The gate also asks a candidate to gain (fewer teacher calls on the frozen "
        "split or a site's share, or a higher student accuracy); False: a candidate ships when "
        "it is not worse beyond noise (recall floor, and exact McNemar tests on misses and on "
        "escalations), so each build's new reviews reach the edges.",
    )
    lora_must_pay: bool = Field(
        True,
        description="A release with a LoRA ships only if the adapter lowers teacher calls "
        "per 100 on the frozen split, at no lower system recall, against the same release "
        "without it; else the build ships the head alone and says why.",
    )
    feature_cache: bool = Field(
        True,
        description="Keep the head's features of every case a build runs in the home "
        "(cache/features.sqlite), keyed by the student, the request and the adapter's weights, "
        "so the next build runs the student only on new cases (teacher.release.feature_cache). "
        "False: every build runs the student on every case.",
    )
    keyword_sample: bool = Field(
        True,
        description="Every build scores the bundled keyword scenes (shared/data/"
        "keyword_scenes.jsonl: 120 hazards and 60 harmless uses of the safety keywords) with "
        "its head and certifies the keyword floor on their hazards; they train nothing, never "
        "set lower or upper and never join the gate's frozen split. False: the floor rests "
        "on reviews alone.",
    )
    keyword_memory: bool = Field(
        True,
        description="A release remembers its reviewed keyword cases, so a keyword case near "
        "reviewed safe ones only (and no hazard) is not escalated (shared.keyword_memory); "
        "calibration counts those as passed. False: every keyword case escalates.",
    )
    keyword_sketches: bool = Field(
        False,
        description="A hidden-state head also remembers its reviewed keyword cases as the "
        "student saw them (standardised features, no text; the settled alerts as hazards), "
        "so a keyword case whose nearest remembered case of each keyword is a safe "
        "lookalike (cosine >= 0.6) is not escalated; calibration counts those as passed "
        "(leave-one-out). Off by default: the replay cut keyword calls by about 1 per 100, "
        "the railway station's demo (seed 0) by none.",
    )
    site_weight: float = Field(
        1.0,
        ge=1,
        le=100,
        description="Weight of a site's reviewed case in the head's fit, against 1 for a "
        "bundled case (an edge's self-labelled input weighs self_label_weight): above 1, a "
        "head fits the sites it serves sooner. Thresholds are certified as before, every case "
        "counted once.",
    )
    self_label_weight: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Weight of an edge's self-labelled input in the head's fit, against 1 for "
        "a reviewed case: below 1, the edges' own verdicts (its false alerts among them) "
        "count for less than the teacher's.",
    )
    prior_l2: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Pull of a new head toward the running release's head when both read the "
        "same features (same skill prompt, same adapter); 0 fits every head from scratch.",
    )
    eval_pace_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="Seconds between inputs when the harness replays cases through the "
        "policy (budget and cooldown run on this clock).",
    )


class TeacherConfig(Strict):
    home: Path = Field(
        DEFAULT_HOME / "teacher", description="Store, registries and runs live here."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    reviewer: ReviewerConfig = Field(
        default_factory=lambda: ReviewerConfig(backend="embedded", model=ModelConfig())
    )
    student: ModelConfig = Field(
        default_factory=ModelConfig,
        description="The student as the edges run it (used to score skills and adapters).",
    )
    upskill: UpskillConfig = Field(default_factory=UpskillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    policy: PolicyConfig = Field(
        default_factory=PolicyConfig,
        description="The escalation policy as the edges run it (releases are scored with it; "
        "recall_target sets the calibration goal).",
    )
    release: ReleaseConfig = Field(default_factory=lambda: ReleaseConfig())
    console: ConsoleConfig = Field(
        default_factory=ConsoleConfig, description="`gemma-teacher console`, the web page."
    )


def load_teacher_config(path: str | Path | None, home: str | Path | None = None) -> TeacherConfig:
    """The teacher's configuration from ``path`` (None: all defaults), with ``home``
    overriding ``home:`` when given (every command's ``--home``)."""
    from shared.config import load_config

    cfg = load_config(path, TeacherConfig)
    if home:
        cfg.home = Path(home)
    return cfg
