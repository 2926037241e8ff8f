"""The LoRA recipe on a tiny randomly initialised Gemma 3 (real tokenizer): fast, CPU-only.

Proves: the answer-only loss equals the full-logit loss on the answer tokens; training
returns a PEFT adapter (safetensors) and leaves the base model as it was; the adapter is
trained under the edge's prompt (demonstrations included); training resumes from a
safetensors+JSON checkpoint. Gating lives with releases (tests/teacher/test_release.py).
"""

import json

import pytest

from shared.evaluation import bundled_cases
from shared.skill import default_skill
from shared.teacher_config import TeacherConfig
from teacher.data.dataset import build_dataset

pytestmark = pytest.mark.slow  # needs the model cache for the real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from shared.config import EmbeddedModelConfig
    from shared.models import ensure_cache, load_tokenizer

    return load_tokenizer(ensure_cache(None, EmbeddedModelConfig().cache_dir))


def tiny_model():
    from tests.helpers import tiny_gemma

    return tiny_gemma(vocab_size=262144, attn_implementation="sdpa")


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

    from teacher.train.batches import answer_loss, collate, tokenize

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
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss
        ours, n = answer_loss(model, **batch)
    assert n == int((batch["labels"][:, 1:] != -100).sum()) > 0
    assert float(ours) == pytest.approx(float(full), rel=1e-5)


def test_training_returns_a_peft_adapter_and_leaves_the_base_model(tmp_path, tokenizer):
    from peft import PeftModel
    from safetensors.numpy import load

    from teacher.train.lora import train_adapter

    cfg, ds = small_setup(tmp_path)
    model = tiny_model()
    before = {n for n, _ in model.named_parameters()}
    result = train_adapter(cfg, ds, default_skill(), model, tokenizer, max_steps=2)
    assert {n for n, _ in model.named_parameters()} == before  # no LoRA layers left behind
    assert set(result.adapter) == {"adapter_config.json", "adapter_model.safetensors"}
    tensors = load(result.adapter["adapter_model.safetensors"])
    assert tensors and all("lora_" in name for name in tensors)
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, data in result.adapter.items():
        (folder / name).write_bytes(data)
    assert isinstance(PeftModel.from_pretrained(tiny_model(), str(folder)), PeftModel)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["steps"] == 2
    curves = json.loads((result.run_dir / "curves.json").read_text())
    assert len(curves["train"]) == 2 and curves["eval"]
    assert (result.run_dir / "curves.png").stat().st_size > 1000


def test_the_adapter_trains_under_the_edges_prompt_with_demonstrations(tmp_path, tokenizer):
    from teacher.train.batches import tokenize

    skill = default_skill()
    ds = build_dataset(bundled_cases("dev_scenes.jsonl"), tmp_path, skill.instructions, 0.1, 0,
                       freeze=False)  # fmt: skip
    item = tokenize(ds.train[:1], tokenizer, skill.instructions, 512, skill.demos)[0]
    prompt = tokenizer.decode(item.ids[: item.n_prompt], skip_special_tokens=True)
    assert prompt == skill.prompt(ds.train[0].input)  # exactly what Student sends the edge model
    assert skill.demos[0].input in prompt


def test_training_resumes_from_its_checkpoint(tmp_path, tokenizer):
    from teacher.train.lora import train_adapter

    cfg, ds = small_setup(tmp_path, checkpoint_every=1, epochs=2.0)
    run_dir = tmp_path / "run"
    skill = default_skill()
    first = train_adapter(cfg, ds, skill, tiny_model(), tokenizer, run_dir=run_dir, max_steps=2)
    checkpoint = run_dir / "checkpoint"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "adapter.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    second = train_adapter(cfg, ds, skill, tiny_model(), tokenizer, run_dir=run_dir, resume=True)
    assert first.steps == 2 and second.steps == 4
    steps = [s for s, _ in second.history["train"]]
    assert steps == [1, 2, 3, 4]  # the history carried over, nothing re-trained


def test_the_head_objective_adds_a_probe_term_that_trains_the_adapter_and_is_never_shipped(
    tmp_path, tokenizer
):
    import torch
    from safetensors.numpy import load

    from shared.head import default_layers
    from teacher.train.batches import answer_loss, collate, tokenize
    from teacher.train.lora import train_adapter
    from teacher.train.probe import SafetyProbe

    cfg, ds = small_setup(tmp_path)
    model = tiny_model()
    items = tokenize(ds.train[:4], tokenizer, default_skill().instructions, 256)
    assert {i.unsafe for i in items} <= {0.0, 1.0}  # the edge's format: every row has a verdict
    batch = collate(items, 0, "cpu")
    assert batch["last"].tolist() == [i.n_prompt - 1 for i in items]
    layers = default_layers(model.config.num_hidden_layers)
    probe = SafetyProbe(layers, model.config.hidden_size)
    answer, _ = answer_loss(model, **batch)
    joint, _ = answer_loss(model, **batch, probe=probe)
    assert float(joint.detach()) > float(answer.detach())  # a logistic loss is positive
    joint.backward()
    assert probe.linear.weight.grad is not None and probe.linear.weight.grad.abs().sum() > 0
    none = collate([items[0].__class__(items[0].ids, items[0].n_prompt)], 0, "cpu")
    alone, _ = answer_loss(model, **none, probe=probe)  # a row without a verdict: no term
    with torch.no_grad():
        assert float(alone) == pytest.approx(float(answer_loss(model, **none)[0]), rel=1e-6)

    cfg.train.objective = "answer+head"
    result = train_adapter(cfg, ds, default_skill(), model, tokenizer, max_steps=2)
    tensors = load(result.adapter["adapter_model.safetensors"])
    assert tensors and all("lora_" in name for name in tensors)  # the probe stays behind
    assert not any("probe" in n for n, _ in model.named_parameters())
