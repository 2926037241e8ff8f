"""``gemma-teacher train``: a release (LoRA adapter + safety head + thresholds) from reviews.

A straight-line recipe, read top to bottom::

    setup     cases (store + labelled files) ─► frozen split + fit + calibration
              (teacher.release.head_fit.make_splits); model (fp32 on CPU, bf16 on CUDA), PEFT LoRA
    train     on the fit split only, under the EDGE's prompt (the active release's skill:
              instructions AND demonstrations, so the adapter learns the prompt it will
              answer with); AdamW, cosine schedule with warm-up; loss on answer tokens
              only, logits computed only at those positions (``train.objective:
              answer+head`` adds a head term: ``teacher.train.probe``); eval loss for
              early stopping;
              resumable checkpoints (safetensors + JSON, never pickle)
    release   the adapter with a safety head fit on its own hidden states and thresholds
              calibrated on the calibration split, scored with ``teacher.release.harness`` against
              the active release on the frozen split (``teacher.release.gate``), saved and
              activated only if it passed (``teacher.release.build.build_release``)

``--head-only`` skips the LoRA: the head and thresholds alone take seconds to minutes on
a CPU. The vocabulary head (262k rows) is the main cost of a small Gemma, so the model
body runs once to hidden states and the head is applied only at the answer positions
(``teacher.train.batches.answer_loss``). Run folders live under ``<home>/train/runs/<stamp>/``
with the loss curves (JSON + PNG), the report and the checkpoint (``teacher.train.checkpoint``).
It knows nothing about sockets: the teacher server pushes whatever release is active.

examples::

    gemma-teacher train --config teacher.yaml --labels shared/data/scenes.jsonl
    gemma-teacher train --no-store --labels scenes.jsonl --home ./teacher --head-only
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shared.errors import TrainingError
from shared.evaluation import LabeledCase
from shared.release import ADAPTER_FILES
from shared.skill import Skill
from shared.teacher_config import TeacherConfig, TrainConfig
from teacher.data.dataset import Dataset, Example, choose_eval, dedupe, to_examples
from teacher.train.batches import answer_loss, collate, eval_loss, plan_batches, tokenize
from teacher.train.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    trainable_params,
    write_curves,
)

logger = logging.getLogger(__name__)

EARLY_STOP_FRACTION = 0.1  # of the fit split, held for the eval loss (early stopping)


# ---------------------------------------------------------------- the recipe
@dataclass
class TrainResult:
    run_dir: Path
    adapter: dict[str, bytes]  # PEFT files: adapter_config.json, adapter_model.safetensors
    steps: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    history: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "train_seconds": round(self.seconds, 1),
            "train_tokens_per_s": round(self.tokens_per_s, 1),
        }


def fit_dataset(
    cases: list[LabeledCase], skill: Skill, seed: int, generic: list[Example] = ()
) -> Dataset:
    """Training examples from the fit split (plus ``generic`` ones against forgetting); a
    small stratified share of the fit split for the eval loss."""
    examples, _ = to_examples(cases)
    examples, _ = dedupe(examples)
    held = set(choose_eval(examples, EARLY_STOP_FRACTION, seed))
    train = [e for e in examples if e.id not in held] + list(generic)
    evals = [e for e in examples if e.id in held] or train[:1]
    stats = {"train": len(train), "eval_loss": len(evals)}
    return Dataset(train, evals, skill.instructions, stats)


def train_adapter(
    cfg: TeacherConfig,
    dataset: Dataset,
    skill: Skill,
    model,
    tokenizer,
    run_dir: Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
) -> TrainResult:
    """Setup → train → the adapter's files; ``model`` is left as it came (no LoRA layers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from shared.models import resolve_device

    tc: TrainConfig = cfg.train
    # ------------------------------------------------------------ setup
    if not dataset.train:
        raise TrainingError("the dataset has no training examples")
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    model.to(device)
    home = Path(cfg.home)
    run_dir = Path(run_dir or home / "train" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    instructions, demos = skill.instructions, skill.demos

    lora = LoraConfig(
        r=tc.lora.r,
        lora_alpha=tc.lora.alpha,
        lora_dropout=tc.lora.dropout,
        target_modules=list(tc.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    probe = None
    if tc.objective == "answer+head":  # the head's classes separate (teacher.train.probe)
        from shared.head import default_layers
        from teacher.train.probe import SafetyProbe

        base = model.get_base_model().config
        text = getattr(base, "text_config", None) or base  # a multimodal Gemma's text half
        layers = default_layers(text.num_hidden_layers)
        probe = SafetyProbe(layers, text.hidden_size, tc.head_weight).to(device)
        model.add_module("safety_probe", probe)  # trains and checkpoints; never saved
    train_items = tokenize(dataset.train, tokenizer, instructions, tc.max_length, demos)
    eval_items = tokenize(dataset.eval, tokenizer, instructions, tc.max_length, demos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps_per_epoch = math.ceil(len(train_items) / tc.batch_size)
    total_steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    eval_every = max(1, steps_per_epoch // tc.evals_per_epoch)
    body = None
    if device == "cuda" and tc.compile:
        body = torch.compile(model.get_base_model().model, dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, round(tc.warmup_fraction * total_steps), total_steps
    )
    history: dict[str, Any] = {"train": [], "eval": []}
    state = {"step": 0, "best_eval": None, "bad_evals": 0, "tokens": 0, "seconds": 0.0}
    checkpoint = run_dir / "checkpoint"
    if resume:
        state = load_checkpoint(checkpoint, model, optimizer)
        history = state.pop("history")
        scheduler.load_state_dict(state.pop("scheduler"))
        logger.info("resumed %s at step %d", run_dir, state["step"])
    best = {n: p.detach().clone() for n, p in trainable_params(model).items()}

    # ------------------------------------------------------------ train
    model.train()
    schedule = [
        batch
        for epoch in range(math.ceil(total_steps / steps_per_epoch))
        for batch in plan_batches(train_items, tc.batch_size, tc.seed, epoch)
    ][:total_steps]
    stopped_early = False
    bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step")
    try:
        while state["step"] < total_steps:
            t_step = time.perf_counter()
            batch = collate([train_items[i] for i in schedule[state["step"]]], pad_id, device)
            loss, _ = answer_loss(model, **batch, body=body, probe=probe)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["seconds"] += time.perf_counter() - t_step
            state["tokens"] += int(batch["attention_mask"].sum())
            loss_value = float(loss.detach())
            history["train"].append((state["step"], round(loss_value, 4)))
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.3f}")
            at_end = state["step"] == total_steps
            if state["step"] % eval_every == 0 or at_end:
                ev = eval_loss(model, eval_items, tc.batch_size, pad_id, device, body, probe)
                history["eval"].append((state["step"], round(ev, 4)))
                if state["best_eval"] is None or ev < state["best_eval"]:
                    state["best_eval"], state["bad_evals"] = ev, 0
                    best = {n: p.detach().clone() for n, p in trainable_params(model).items()}
                else:
                    state["bad_evals"] += 1
                logger.info("step %d eval loss %.4f", state["step"], ev)
                if tc.early_stop_patience and state["bad_evals"] >= tc.early_stop_patience:
                    stopped_early = True
                    logger.info("eval loss rose %d times: stopping early", state["bad_evals"])
            if state["step"] % tc.checkpoint_every == 0 or at_end or stopped_early:
                save_checkpoint(
                    checkpoint,
                    model,
                    optimizer,
                    {**state, "history": history, "scheduler": scheduler.state_dict()},
                )
            if stopped_early:
                break
    finally:
        bar.close()
    seconds = state["seconds"]
    with torch.no_grad():
        for name, p in trainable_params(model).items():
            p.copy_(best[name])
    write_curves(run_dir, history)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        files = {name: (Path(tmp) / name).read_bytes() for name in ADAPTER_FILES}
    model.unload()  # the caller's base model, without LoRA layers again
    result = TrainResult(
        run_dir,
        files,
        steps=state["step"],
        stopped_early=stopped_early,
        seconds=seconds,
        tokens_per_s=state["tokens"] / max(seconds, 1e-9),
        history=history,
    )
    (run_dir / "report.json").write_text(json.dumps(result.report(), indent=1))
    return result
