"""``gemma-teacher train``: a LoRA adapter for the student from reviewed cases.

A straight-line recipe, read top to bottom::

    setup     dataset (teacher.dataset), model (fp32 on CPU, bf16 on CUDA), PEFT LoRA
    baseline  the active student on the frozen split (teacher.gate)
    train     AdamW, cosine schedule with warm-up; loss on answer tokens only, logits
              computed only at those positions; eval loss for early stopping;
              resumable checkpoints (safetensors + JSON, never pickle)
    evaluate  the trained student on the frozen split; compare with the baseline
    save      only if it beats the baseline: a new adapter version in the registry
              (safetensors + config + metrics + dataset hash), made active

The vocabulary head (262k rows) is the main cost of a small Gemma, so the model body
runs once to hidden states and the head is applied only at the answer positions
(``teacher.batches.answer_loss``). Run folders live under ``<home>/train/runs/<stamp>/``
with the loss curves (JSON + PNG), the report and the checkpoint (``teacher.checkpoint``).
It knows nothing about sockets: the teacher server pushes whatever version the registry
marks active.

example::

    gemma-teacher train --config teacher.yaml --labels shared/data/scenes.jsonl
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

from shared.config import TeacherConfig, TrainConfig, load_config
from shared.errors import TrainingError
from shared.evaluation import EvalReport, load_labeled
from teacher import gate
from teacher.batches import answer_loss, collate, eval_loss, plan_batches, tokenize
from teacher.checkpoint import load_checkpoint, save_checkpoint, trainable_params, write_curves
from teacher.dataset import Dataset, build_dataset, export_chat, import_chat, load_generic
from teacher.registry import Registry

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the recipe
@dataclass
class TrainResult:
    run_dir: Path
    before: EvalReport
    after: EvalReport
    verdict: gate.GateVerdict
    version: int | None = None
    steps: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    history: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "passed": self.verdict.passed,
            "reasons": self.verdict.reasons,
            "version": self.version,
            "before": self.before.summary(),
            "after": self.after.summary(),
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "train_seconds": round(self.seconds, 1),
            "train_tokens_per_s": round(self.tokens_per_s, 1),
        }


def train_adapter(
    cfg: TeacherConfig,
    dataset: Dataset,
    model=None,
    tokenizer=None,
    run_dir: Path | None = None,
    resume: bool = False,
    activate: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    """Setup → baseline → train → evaluate → save (if it beats the active student)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import get_cosine_schedule_with_warmup

    from shared.models import load_model, resolve_device

    tc: TrainConfig = cfg.train
    # ------------------------------------------------------------ setup
    if not dataset.train:
        raise TrainingError("the dataset has no training examples")
    if not dataset.eval:
        raise TrainingError("the frozen evaluation split is empty: nothing to gate on")
    device = resolve_device(tc.device)
    dtype = "bfloat16" if device == "cuda" else "float32"
    torch.manual_seed(tc.seed)
    if model is None:
        model, tokenizer = load_model(
            cfg.student.embedded.gguf_path, cfg.student.embedded.cache_dir, dtype, device
        )
    model.to(device)
    home = Path(cfg.home)
    run_dir = Path(run_dir or home / "train" / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(home, "adapters")
    instructions = dataset.instructions
    max_new = tc.gate_max_new_tokens

    # ------------------------------------------------------------ baseline: the active student
    active = registry.active()
    eval_hash = _eval_hash(dataset)
    saved = run_dir / "baseline.json"
    saved_doc = json.loads(saved.read_text()) if resume and saved.is_file() else {}
    if saved_doc.get("eval_hash") == eval_hash:
        before = EvalReport(**{**saved_doc["before"], "failures": []})
        logger.info("baseline: as scored before this run was interrupted")
    elif active is not None and active.meta.get("eval_hash") == eval_hash:
        before = EvalReport(**{**active.meta["after"], "failures": []})
        logger.info("baseline: active adapter v%d as scored on this frozen split", active.number)
    elif active is not None:
        scored = PeftModel.from_pretrained(model, str(active.path))
        before = gate.evaluate_student(
            scored, tokenizer, dataset.eval, instructions, max_new, desc=f"eval v{active.number}"
        )
        model = scored.unload()
    else:
        before = gate.evaluate_student(
            model, tokenizer, dataset.eval, instructions, max_new, desc="eval before"
        )
    logger.info("before: %s", before.summary())
    saved.write_text(json.dumps({"eval_hash": eval_hash, "before": before.summary()}))

    lora = LoraConfig(
        r=tc.lora.r,
        lora_alpha=tc.lora.alpha,
        lora_dropout=tc.lora.dropout,
        target_modules=list(tc.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    train_items = tokenize(dataset.train, tokenizer, instructions, tc.max_length)
    eval_items = tokenize(dataset.eval, tokenizer, instructions, tc.max_length)
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
            loss, _ = answer_loss(model, **batch, body=body)
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
                ev = eval_loss(model, eval_items, tc.batch_size, pad_id, device, body)
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

    # ------------------------------------------------------------ evaluate
    after = gate.evaluate_student(
        model, tokenizer, dataset.eval, instructions, max_new, desc="eval after"
    )
    verdict = gate.compare(before, after)
    result = TrainResult(
        run_dir,
        before,
        after,
        verdict,
        steps=state["step"],
        stopped_early=stopped_early,
        seconds=seconds,
        tokens_per_s=state["tokens"] / max(seconds, 1e-9),
        history=history,
    )

    # ------------------------------------------------------------ save (only if it passed)
    if verdict.passed:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            files = {p.name: p.read_bytes() for p in Path(tmp).rglob("*") if p.is_file()}
        meta = {
            "kind": "lora",
            "base_model": "gemma-3-270m"
            if cfg.student.embedded.gguf_path is None
            else str(cfg.student.embedded.gguf_path),
            "instructions": instructions,
            "lora": tc.lora.model_dump(),
            "train": tc.model_dump(mode="json", exclude={"lora"}),
            "dataset_sha256": dataset.sha256,
            "dataset_stats": dataset.stats,
            "eval_hash": eval_hash,
            "before": before.summary(),
            "after": after.summary(),
            "steps": state["step"],
            "run_dir": str(run_dir),
        }
        version = registry.add(files, meta)
        result.version = version.number
        if activate:
            registry.activate(version.number)
    (run_dir / "report.json").write_text(json.dumps(result.report(), indent=1))
    return result


def _eval_hash(dataset: Dataset) -> str:
    import hashlib

    digest = hashlib.sha256(dataset.instructions.encode())
    for ex in sorted(dataset.eval, key=lambda e: e.id):
        digest.update(f"{ex.id}\0{ex.input}\0{ex.safety}\0".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="JSONL",
        help="labelled JSONL (input, safety, keywords[, answer]) added to the store's cases",
    )
    parser.add_argument("--no-store", action="store_true", help="ignore the teacher's case store")
    parser.add_argument(
        "--dataset", help="train on this chat JSONL (as written by --export-dataset)"
    )
    parser.add_argument("--export-dataset", metavar="JSONL", help="write the dataset as chat JSONL")
    parser.add_argument(
        "--dry-run", action="store_true", help="build (and export) the dataset only"
    )
    parser.add_argument("--epochs", type=float, help="override train.epochs")
    parser.add_argument("--lr", type=float, help="override train.learning_rate")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--max-length", type=int, help="override train.max_length")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument(
        "--no-activate", action="store_true", help="save a passing adapter inactive"
    )


def active_instructions(home: Path) -> str:
    """The active skill's instructions (the bundled default skill when none is active)."""
    from shared.errors import ConfigError
    from shared.skill import default_skill, skill_from_bytes

    version = Registry(Path(home), "skills").active()
    if version is not None:
        for entry, data in version.files():
            try:
                return skill_from_bytes(data, entry.name).instructions
            except ConfigError:
                continue
    return default_skill().instructions


def gather_dataset(cfg: TeacherConfig, args) -> Dataset:
    """The dataset for a run: imported chat JSONL, or store cases + labelled files."""
    if args.dataset:
        train, evals, instructions = import_chat(Path(args.dataset))
        return Dataset(train, evals, instructions or active_instructions(cfg.home))
    cases = []
    if not args.no_store:
        from teacher.store import CaseStore, default_store_path

        path = default_store_path(cfg.home)
        if path.exists():
            store = CaseStore(path)
            try:
                cases += store.labeled_cases()
            finally:
                store.close()
    for labels in args.labels:
        cases += load_labeled(labels)
    if not cases:
        raise TrainingError("no reviewed cases: the store has none and no --labels were given")
    generic = load_generic(cfg.train.generic_examples) if cfg.train.generic_examples else None
    return build_dataset(
        cases,
        Path(cfg.home),
        active_instructions(cfg.home),
        cfg.train.eval_fraction,
        cfg.train.seed,
        generic,
    )


def run(args) -> int:
    cfg = load_config(args.config, TeacherConfig)
    if cfg.student.embedded.threads:
        import torch

        torch.set_num_threads(cfg.student.embedded.threads)
    updates = {
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "device": args.device,
    }
    for key, value in updates.items():
        if value is not None:
            setattr(cfg.train, key, value)
    if args.home:
        cfg.home = Path(args.home)
    dataset = gather_dataset(cfg, args)
    print(json.dumps({"dataset": dataset.stats, "sha256": dataset.sha256}))
    if args.export_dataset:
        n = export_chat(dataset, Path(args.export_dataset))
        print(f"wrote {n} examples to {args.export_dataset}")
    if args.dry_run:
        return 0
    result = train_adapter(
        cfg,
        dataset,
        run_dir=Path(args.resume) if args.resume else None,
        resume=bool(args.resume),
        activate=not args.no_activate,
        max_steps=args.max_steps,
    )
    print(json.dumps(result.report(), indent=1))
    if result.verdict.passed:
        print(f"adapter v{result.version} saved" + ("" if args.no_activate else " and active"))
        return 0
    print("not saved: " + "; ".join(result.verdict.reasons))
    return 1
