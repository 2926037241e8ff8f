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
(``answer_loss``). Run folders live under ``<home>/train/runs/<stamp>/`` with the loss
curves (JSON + PNG), the report and the checkpoint. It knows nothing about sockets:
the teacher server pushes whatever version the registry marks active.

example::

    gemma-teacher train --config teacher.yaml --labels shared/data/scenes.jsonl
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
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
from teacher.dataset import Dataset, Example, build_dataset, export_chat, import_chat, load_generic
from teacher.registry import Registry

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- data → tensors
@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    n_prompt: int  # tokens before the answer; loss is on ids[n_prompt:]


def tokenize(examples: list[Example], tokenizer, instructions: str, max_length: int):
    """BOS + prompt + answer + EOS; a too-long prompt loses its oldest tokens, never the answer."""
    out = []
    for ex in examples:
        prompt = tokenizer(ex.render_prompt(instructions), add_special_tokens=False).input_ids
        answer = tokenizer(ex.target, add_special_tokens=False).input_ids
        answer = answer[: max_length // 2] + [tokenizer.eos_token_id]
        room = max_length - len(answer) - 1
        prompt = [tokenizer.bos_token_id] + prompt[-room:]
        out.append(Tokenized(prompt + answer, len(prompt)))
    return out


def plan_batches(items: list[Tokenized], batch_size: int, seed: int, epoch: int):
    """Length-bucketed batches (little padding) in a seeded random order per epoch."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(items)))
    rng.shuffle(order)
    chunks = [order[i : i + batch_size * 16] for i in range(0, len(order), batch_size * 16)]
    batches = []
    for chunk in chunks:
        chunk.sort(key=lambda i: len(items[i].ids))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int, device) -> dict:
    import torch

    width = max(len(t.ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.ids)
        ids[row, :n] = torch.tensor(t.ids)
        mask[row, :n] = 1
        labels[row, t.n_prompt : n] = ids[row, t.n_prompt : n]
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def answer_loss(model, input_ids, attention_mask, labels, fused: bool = False, body=None):
    """Mean cross-entropy over answer tokens; the LM head runs only at those positions.

    ``model`` is a PEFT model (or a plain causal LM) of the Gemma family: its body
    (``.model``, or ``body``: e.g. a compiled view of it) gives hidden states, and its
    ``.lm_head`` maps only the gathered answer positions to logits. Batches are
    right-padded (``collate``), so causal attention alone is exact for every real token
    and no padding mask is passed: attention stays on the fused causal kernels.
    ``attention_mask`` is accepted for the batch dict's sake and not used.
    ``fused`` uses liger-kernel's chunked linear + cross-entropy instead (CUDA).
    Returns (loss, number of answer tokens).
    """
    import torch.nn.functional as F

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = (causal.model if body is None else body)(input_ids=input_ids).last_hidden_state
    targets = labels[:, 1:]
    where = targets != -100
    picked = hidden[:, :-1][where]
    wanted = targets[where]
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if fused and not cap and _liger_loss() is not None:
        return _liger_loss()(causal.lm_head.weight, picked, wanted), int(wanted.numel())
    logits = causal.lm_head(picked).float()
    if cap:
        logits = (logits / cap).tanh() * cap
    return F.cross_entropy(logits, wanted), int(wanted.numel())


_LIGER: list = []


def _liger_loss():
    """liger-kernel's fused linear + cross-entropy (an optional CUDA speed-up), or None."""
    if not _LIGER:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            _LIGER.append(LigerFusedLinearCrossEntropyLoss())
        except ImportError:
            _LIGER.append(None)
    return _LIGER[0]


# ---------------------------------------------------------------- checkpoints
def _trainable(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model, optimizer, state: dict) -> None:
    """Adapter + optimizer tensors as safetensors, the rest as JSON; atomic by rename."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = _trainable(model)
    save_file(
        {n: p.detach().contiguous().cpu() for n, p in params.items()}, tmp / "adapter.safetensors"
    )
    opt = {}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            opt[f"{name}::{key}"] = value.detach().reshape(value.shape).contiguous().cpu()
    save_file(opt, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder: Path, model, optimizer) -> dict:
    import torch
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        raise TrainingError(f"{folder}: no checkpoint to resume from")
    params = _trainable(model)
    weights = load_file(folder / "adapter.safetensors")
    missing = set(params) - set(weights)
    if missing:
        raise TrainingError(f"{folder}: checkpoint lacks {len(missing)} adapter tensors")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    for key, value in load_file(folder / "optimizer.safetensors").items():
        name, slot = key.split("::")
        p = params[name]
        optimizer.state[p][slot] = value.to(p.device) if slot != "step" else value
    return json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------- curves
def write_curves(run_dir: Path, history: dict) -> None:
    (run_dir / "curves.json").write_text(json.dumps(history, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history["train"]:
        steps, losses = zip(*history["train"], strict=True)
        ax.plot(steps, losses, label="train (answer tokens)", alpha=0.7)
    if history["eval"]:
        steps, losses = zip(*history["eval"], strict=True)
        ax.plot(steps, losses, "o-", label="eval (frozen split)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)


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


def _eval_loss(model, items, batch_size, pad_id, device, body=None) -> float:
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            batch = collate(items[start : start + batch_size], pad_id, device)
            loss, n = answer_loss(model, **batch, body=body)
            total += float(loss) * n
            count += n
    model.train()
    return total / max(1, count)


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
    best = {n: p.detach().clone() for n, p in _trainable(model).items()}

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
                ev = _eval_loss(model, eval_items, tc.batch_size, pad_id, device, body)
                history["eval"].append((state["step"], round(ev, 4)))
                if state["best_eval"] is None or ev < state["best_eval"]:
                    state["best_eval"], state["bad_evals"] = ev, 0
                    best = {n: p.detach().clone() for n, p in _trainable(model).items()}
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
        for name, p in _trainable(model).items():
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
