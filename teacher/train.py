"""``gemma-teacher train``: a release (LoRA adapter + safety head + thresholds) from reviews.

A straight-line recipe, read top to bottom::

    setup     cases (store + labelled files) ─► frozen split + fit + calibration
              (teacher.head_fit.make_splits); model (fp32 on CPU, bf16 on CUDA), PEFT LoRA
    train     on the fit split only, under the EDGE's prompt (the active release's skill:
              instructions AND demonstrations, so the adapter learns the prompt it will
              answer with); AdamW, cosine schedule with warm-up; loss on answer tokens
              only, logits computed only at those positions; eval loss for early stopping;
              resumable checkpoints (safetensors + JSON, never pickle)
    release   the adapter with a safety head fit on its own hidden states and thresholds
              calibrated on the calibration split, scored with ``teacher.harness`` against
              the active release on the frozen split (``teacher.gate``), saved and
              activated only if it passed (``teacher.releases.build_release``)

``--head-only`` skips the LoRA: the head and thresholds alone take seconds to minutes on
a CPU. The vocabulary head (262k rows) is the main cost of a small Gemma, so the model
body runs once to hidden states and the head is applied only at the answer positions
(``teacher.batches.answer_loss``). Run folders live under ``<home>/train/runs/<stamp>/``
with the loss curves (JSON + PNG), the report and the checkpoint (``teacher.checkpoint``).
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

from shared.config import load_config
from shared.errors import TrainingError
from shared.evaluation import LabeledCase, load_labeled
from shared.release import ADAPTER_FILES
from shared.skill import Skill
from shared.teacher_config import TeacherConfig, TrainConfig
from teacher.batches import answer_loss, collate, eval_loss, plan_batches, tokenize
from teacher.checkpoint import load_checkpoint, save_checkpoint, trainable_params, write_curves
from teacher.dataset import Dataset, Example, choose_eval, dedupe, export_chat, to_examples

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
        "--traffic",
        action="append",
        default=[],
        metavar="EVENTS_JSONL",
        help="an edge's event log (gemma-edge run --events): the inputs it alerted on or "
        "passed by itself train the safety head, labelled with what it did (never the "
        "thresholds or the gate)",
    )
    parser.add_argument(
        "--dataset", help="take the cases from this chat JSONL (as written by --export-dataset)"
    )
    parser.add_argument(
        "--head-only",
        action="store_true",
        help="no LoRA: a release with a new safety head and thresholds only (fast)",
    )
    parser.add_argument(
        "--export-dataset", metavar="JSONL", help="write the LoRA's training set as chat JSONL"
    )
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
        "--no-activate", action="store_true", help="save a passing release inactive"
    )
    parser.add_argument(
        "--keep-refused",
        action="store_true",
        help="store a release the gate refused (inactive, never pushed) to inspect or eval it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def gather_cases(cfg: TeacherConfig, args) -> list[LabeledCase]:
    """Reviewed cases (a person's corrections outrank the teacher) and labelled files."""
    from teacher.evalset import merge_cases

    sources: list[list[LabeledCase]] = []
    if args.dataset:
        from teacher.dataset import import_chat

        train, evals, _ = import_chat(Path(args.dataset))
        sources.append([e.labeled() for e in train + evals])
    if not args.no_store:
        from teacher.store import CaseStore, default_store_path

        path = default_store_path(cfg.home)
        if path.exists():
            store = CaseStore(path, recover=False)
            try:
                sources.append(store.labeled_cases())
            finally:
                store.close()
    sources += [load_labeled(labels) for labels in args.labels]
    cases = merge_cases(*sources)
    if not cases:
        raise TrainingError("no reviewed cases: the store has none and no --labels were given")
    return cases


def run(args) -> int:
    from teacher.head_fit import make_splits
    from teacher.releases import ReleaseRegistry, build_release

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
    cases = gather_cases(cfg, args)
    skill = ReleaseRegistry(cfg.home).active().skill
    traffic = []
    if args.traffic:
        from teacher.traffic import load_traffic

        traffic = load_traffic([Path(p) for p in args.traffic], cfg.release.max_self_labelled)
    splits = make_splits(cfg, cases, skill, traffic)
    sizes = {"fit": len(splits.fit), "calibration": len(splits.calibration),
             "frozen": len(splits.frozen), "self_labelled": len(splits.traffic)}  # fmt: skip
    print(json.dumps({"cases": len(cases), "splits": sizes}))
    generic = []
    if cfg.train.generic_examples:
        from teacher.dataset import load_generic

        generic = load_generic(cfg.train.generic_examples)
    dataset = fit_dataset(splits.fit, skill, cfg.train.seed, generic)
    if args.export_dataset:
        n = export_chat(dataset, Path(args.export_dataset))
        print(f"wrote {n} examples to {args.export_dataset}")
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    adapter, backend, trained = None, None, None
    if args.head_only:
        from shared.backend import make_backend

        backend = make_backend(cfg.student)
    else:
        backend, trained = _train_lora(cfg, dataset, skill, args)
        adapter = trained.adapter
        print(json.dumps(trained.report()))
    result = build_release(
        cfg,
        backend,
        cases,
        skill=skill,
        adapter=adapter,
        activate=not args.no_activate,
        splits=splits,
        note="head only" if args.head_only else f"LoRA ({trained.steps} steps) + head",
        progress=not args.no_progress,
        keep_refused=args.keep_refused,
    )
    report = {**result.report(), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=1))
    from teacher.harness import table

    print(table([(f"candidate v{result.candidate.release}", result.candidate.summary()),
                 (f"active v{result.active.release}", result.active.summary())]))  # fmt: skip
    print(result.calibration.note)
    if result.verdict.passed:
        print(f"release v{result.version} saved in {result.path}"
              + ("" if args.no_activate else " and active"))  # fmt: skip
        return 0
    kept = f" (kept inactive as v{result.version} in {result.path})" if result.version else ""
    print("refused" + kept + ": " + "; ".join(result.verdict.reasons))
    return 1


def _train_lora(cfg: TeacherConfig, dataset: Dataset, skill: Skill, args):
    """Train the LoRA on the fit split; a backend over the same base weights for the build."""
    from shared.embedded import EmbeddedBackend
    from shared.models import load_model, resolve_device

    if cfg.student.backend != "embedded":
        raise TrainingError(
            "a LoRA can only be trained for the embedded student; use --head-only for "
            f"a {cfg.student.backend} student"
        )
    device = resolve_device(cfg.train.device)
    dtype = "bfloat16" if device == "cuda" else "float32"
    emb = cfg.student.embedded
    model, tokenizer = load_model(emb.gguf_path, emb.cache_dir, dtype, device)
    trained = train_adapter(
        cfg,
        dataset,
        skill,
        model,
        tokenizer,
        run_dir=Path(args.resume) if args.resume else None,
        resume=bool(args.resume),
        max_steps=args.max_steps,
    )
    config = emb.model_copy(update={"device": device, "dtype": dtype})
    return EmbeddedBackend(config, model=model, tokenizer=tokenizer), trained
