"""``gemma-teacher train``: the command line of ``teacher.train.lora``.

Gathers the cases (labels, the store, exported chats, edge traffic), trains a LoRA (unless
``--head-only``) and hands it to the release build (``teacher.release.build``), which fits
the head, calibrates, gates and activates.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from shared.errors import TrainingError
from shared.evaluation import LabeledCase, load_labeled
from shared.skill import Skill
from shared.teacher_config import TeacherConfig, load_teacher_config
from teacher.data.dataset import Dataset, export_chat
from teacher.train.lora import fit_dataset, train_adapter

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="JSONL",
        help="labelled JSONL (input, safety, keywords[, answer]) added to the store's cases "
        "(and to the bundled scenes, release.bundled_labels)",
    )
    parser.add_argument("--no-store", action="store_true", help="ignore the teacher's case store")
    parser.add_argument(
        "--traffic",
        action="append",
        default=[],
        metavar="EVENTS_JSONL",
        help="an edge's event log (gemma-edge run --events): the inputs it alerted on or "
        "passed by itself train the safety head, labelled with what it did (never the "
        "thresholds or the gate); the settled inputs edges sent over the link are used "
        "without it",
    )
    parser.add_argument(
        "--dataset", help="take the cases from this chat JSONL (as written by --export-dataset)"
    )
    parser.add_argument(
        "--head-only",
        action="store_true",
        help="no new LoRA: a new safety head and thresholds (fast), on the active "
        "release's adapter if it has one",
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
    from teacher.data.evalset import merge_cases, with_bundled

    sources: list[list[LabeledCase]] = []
    if args.dataset:
        from teacher.data.dataset import import_chat

        train, evals, _ = import_chat(Path(args.dataset))
        sources.append([e.labeled() for e in train + evals])
    if not args.no_store:
        from teacher.data.store import CaseStore, default_store_path

        path = default_store_path(cfg.home)
        if path.exists():
            store = CaseStore(path, recover=False)
            try:
                sources.append(store.labeled_cases())
            finally:
                store.close()
    sources += [load_labeled(labels) for labels in args.labels]
    cases = with_bundled(merge_cases(*sources), cfg.release.bundled_labels)
    if not cases:
        raise TrainingError(
            "no reviewed cases: the store has none, no --labels were given and "
            "release.bundled_labels is off"
        )
    return cases


def merge_traffic(stored: list, logged: list, limit: int) -> list:
    """The store's settled inputs and an event log's, one per input, the ``limit`` latest."""
    from teacher.data.dataset import case_key

    merged = {case_key(c.input): c for c in [*stored, *logged]}
    return list(merged.values())[-limit:] if limit else []


def _note(head_only: bool, adapter, trained, active: int) -> str:
    """The release's note: what this build trained, and what it kept."""
    if not head_only:
        return f"LoRA ({trained.steps} steps) + head"
    return f"head only (v{active}'s LoRA kept)" if adapter else "head only"


def run(args) -> int:
    from teacher.release.build import build_release
    from teacher.release.head_fit import make_splits
    from teacher.release.registry import ReleaseRegistry

    cfg = load_teacher_config(args.config, args.home)
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
    cases = gather_cases(cfg, args)
    active = ReleaseRegistry.of(cfg).active()
    skill = active.skill
    from teacher.data.traffic import load_traffic, self_labels, stored_traffic

    limit = cfg.release.max_self_labelled
    traffic = [] if args.no_store else stored_traffic(cfg.home, limit)  # what edges sent
    if args.traffic:
        traffic = merge_traffic(traffic, load_traffic([Path(p) for p in args.traffic]), limit)
    traffic = self_labels(traffic, cfg.release.self_labels)
    splits = make_splits(cfg, cases, skill, traffic)
    sizes = {
        "fit": len(splits.fit),
        "calibration": len(splits.calibration),
        "frozen": len(splits.frozen),
        "self_labelled": len(splits.traffic),
    }
    print(json.dumps({"cases": len(cases), "splits": sizes}))
    generic = []
    if cfg.train.generic_examples:
        from teacher.data.dataset import load_generic

        generic = load_generic(cfg.train.generic_examples)
    dataset = fit_dataset(splits.fit, skill, cfg.train.seed, generic)
    if args.export_dataset:
        n = export_chat(dataset, Path(args.export_dataset))
        print(f"wrote {n} examples to {args.export_dataset}")
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    adapter, backend, trained = None, None, None
    if args.head_only:  # the active release's adapter, if any, stays: a new head on it
        from shared.backend_factory import make_backend

        backend = make_backend(cfg.student)
        adapter = active.adapter_files()
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
        note=_note(args.head_only, adapter, trained, active.version),
        progress=not args.no_progress,
        keep_refused=args.keep_refused,
    )
    report = {**result.report(), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=1))
    lora = result.timing.get("lora")
    if lora:
        verdict = "paid" if lora["paid"] else "did not pay: the release carries the head alone"
        print(
            f"the LoRA {verdict} (teacher calls per 100 on the frozen split: "
            f"{lora['calls_with']:.1f} with it, {lora['calls_without']:.1f} without; system "
            f"recall {lora['recall_with']:.3f}, {lora['recall_without']:.3f})"
        )
    from teacher.release.harness import table

    print(
        table(
            [
                (f"candidate v{result.candidate.release}", result.candidate.summary()),
                (f"active v{result.active.release}", result.active.summary()),
            ]
        )
    )
    print(result.calibration.note)
    if result.verdict.passed:
        print(
            f"release v{result.version} saved in {result.path}"
            + ("" if args.no_activate else " and active")
        )
        return 0
    kept = f" (kept inactive as v{result.version} in {result.path})" if result.version else ""
    print("refused" + kept + ": " + "; ".join(result.verdict.reasons))
    return 1


def _train_lora(cfg: TeacherConfig, dataset: Dataset, skill: Skill, args):
    """Train the LoRA (PyTorch) on the fit split; the backend the build scores it on: the
    same base weights in torch for an embedded student, else the student's own engine
    (llama.cpp loads the trained adapter converted to GGUF), so the head, thresholds and
    gate see what the edges will run."""
    from shared.embedded import EmbeddedBackend
    from shared.models import load_model, resolve_device

    if cfg.student.backend == "ollama":
        raise TrainingError(
            "a LoRA is trained for a llamacpp or embedded student: Ollama 0.34.1 and later "
            "no longer create models with a LoRA ADAPTER, so releases for Ollama edges carry "
            "the skill and head only (gemma-teacher train --head-only)"
        )
    device = resolve_device(cfg.train.device)
    dtype = "bfloat16" if device == "cuda" else "float32"
    emb = cfg.student.embedded
    if cfg.student.backend == "llamacpp":
        emb = emb.model_copy(update={"gguf_path": cfg.student.llamacpp.gguf_path})
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
    if cfg.student.backend == "llamacpp":
        from shared.backend_factory import make_backend

        del model, tokenizer
        return make_backend(cfg.student), trained
    config = emb.model_copy(update={"device": device, "dtype": dtype})
    return EmbeddedBackend(config, model=model, tokenizer=tokenizer), trained
