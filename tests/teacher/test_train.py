"""The LoRA recipe on a tiny randomly initialised Gemma 3 (real tokenizer): fast, CPU-only.

Proves: the answer-only loss equals the full-logit loss on the answer tokens; an adapter
that does not beat the active student is not saved; a passing one becomes the active
version with its files and metadata; training resumes from a safetensors+JSON checkpoint.
"""

import json

import pytest

from shared.config import TeacherConfig
from shared.evaluation import EvalReport, bundled_cases
from shared.skill import default_skill
from teacher import gate
from teacher.dataset import build_dataset
from teacher.registry import Registry

pytestmark = pytest.mark.slow  # needs the model cache for the real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from shared.config import EmbeddedModelConfig
    from shared.models import ensure_cache, load_tokenizer

    return load_tokenizer(ensure_cache(None, EmbeddedModelConfig().cache_dir))


def tiny_model():
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=262144,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        attn_implementation="sdpa",
    )
    return Gemma3ForCausalLM(cfg)


def small_setup(tmp_path, **train):
    ds = build_dataset(
        bundled_cases("dev_scenes.jsonl"), tmp_path, default_skill().instructions, 0.1, 0
    )
    ds.train = ds.train[:8]
    cfg = TeacherConfig(home=tmp_path)
    cfg.train.batch_size = 4
    cfg.train.gate_max_new_tokens = 8
    cfg.train.device = "cpu"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg, ds


def test_answer_only_loss_matches_the_full_vocabulary_loss(tokenizer):
    import torch

    from teacher.batches import answer_loss, collate, tokenize

    model = tiny_model()
    examples = build_dataset(
        bundled_cases("dev_scenes.jsonl")[:6],
        __import__("pathlib").Path("/nonexistent"),
        "Describe.",
        0.3,
        0,
        freeze=False,
    ).train
    batch = collate(tokenize(examples, tokenizer, "Describe.", 256), 0, "cpu")
    with torch.no_grad():
        full = model(**batch).loss
        ours, n = answer_loss(model, **batch)
    assert n == int((batch["labels"][:, 1:] != -100).sum()) > 0
    assert float(ours) == pytest.approx(float(full), rel=1e-5)


def test_a_useless_adapter_is_not_saved(tmp_path, tokenizer):
    from teacher.train import train_adapter

    cfg, ds = small_setup(tmp_path, learning_rate=1e-12)  # trains nothing
    result = train_adapter(cfg, ds, tiny_model(), tokenizer, max_steps=2)
    assert not result.verdict.passed
    assert any("no gain" in r for r in result.verdict.reasons)
    assert Registry(tmp_path, "adapters").versions() == []
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["passed"] is False and report["version"] is None and report["reasons"]
    curves = json.loads((result.run_dir / "curves.json").read_text())
    assert len(curves["train"]) == 2 and curves["eval"]
    assert (result.run_dir / "curves.png").stat().st_size > 1000


def test_a_passing_adapter_becomes_the_active_version(tmp_path, tokenizer, monkeypatch):
    from teacher.train import train_adapter

    monkeypatch.setattr(gate, "compare", lambda before, after: gate.GateVerdict(True, []))
    cfg, ds = small_setup(tmp_path)
    result = train_adapter(cfg, ds, tiny_model(), tokenizer, max_steps=1)
    registry = Registry(tmp_path, "adapters")
    active = registry.active()
    assert result.version == 1 and active is not None and active.number == 1
    names = {e.name for e, _ in active.files()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert active.meta["dataset_sha256"] == ds.sha256
    assert active.meta["after"]["n"] == len(ds.eval)
    assert active.meta["instructions"] == default_skill().instructions


def test_training_resumes_from_its_checkpoint(tmp_path, tokenizer):
    from teacher.train import train_adapter

    cfg, ds = small_setup(tmp_path, checkpoint_every=1, epochs=2.0)
    run_dir = tmp_path / "run"
    first = train_adapter(cfg, ds, tiny_model(), tokenizer, run_dir=run_dir, max_steps=2)
    checkpoint = run_dir / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "adapter.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    second = train_adapter(cfg, ds, tiny_model(), tokenizer, run_dir=run_dir, resume=True)
    assert first.steps == 2 and second.steps == 4
    steps = [s for s, _ in second.history["train"]]
    assert steps == [1, 2, 3, 4]  # the history carried over, nothing re-trained


@pytest.mark.parametrize(
    "before, after, passed",
    [
        ((0.5, 0.0, 0.5), (0.75, 1.0, 0.8), True),
        ((0.5, 1.0, 0.5), (0.5, 1.0, 0.5), False),  # no gain
        ((0.5, 1.0, 0.5), (0.7, 0.9, 0.6), False),  # format fell
        ((0.6, 1.0, 0.9), (0.7, 1.0, 0.6), False),  # safety recall fell
        ((0.6, 0.5, 0.9), (0.6, 0.8, 0.88), True),  # small recall dip within tolerance
    ],
)
def test_gate_rules(before, after, passed):
    def report(agree, fmt, recall):
        return EvalReport(n=10, format_ok=fmt, safety_agreement=agree, safety_recall=recall)

    verdict = gate.compare(report(*before), report(*after))
    assert verdict.passed is passed
    assert bool(verdict.reasons) is not passed
