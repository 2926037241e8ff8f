"""``gemma-teacher upskill``: the command line of ``teacher.improve.upskill``.

Loads the configuration and the cases, runs the recipe, writes its report, and hands a
winner that beat the active skill to the release build (``teacher.release.build``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from shared.backend_factory import make_backend
from shared.config import load_config, validate_config
from shared.teacher_config import TeacherConfig, UpskillConfig
from teacher.data.evalset import load_cases, with_bundled
from teacher.improve.upskill import run_upskill, writer_backend

logger = logging.getLogger(__name__)


EPILOG = """\
examples:
  gemma-teacher upskill --config teacher.yaml                 # reviewed cases in the store
  gemma-teacher upskill --config teacher.yaml --labels scenes.jsonl --no-store
  gemma-teacher upskill --labels shared/data/dev_scenes.jsonl --dry-run

Writes a report (table, JSON, PNG chart) under HOME/upskill/runs/ and prints the table.
The winner goes to a release build (safety head, thresholds, canaries) and the release
gate decides whether edges get it; the held-out comparison with the active skill is in
the report.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--config", type=Path, help="teacher YAML (default: all defaults)")
    parser.add_argument(
        "--labels",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="labelled JSONL (input, safety, keywords); may repeat",
    )
    parser.add_argument(
        "--no-store", action="store_true", help="ignore the reviewed cases in HOME/store.sqlite"
    )
    parser.add_argument("--candidates", type=int, help="candidates per round (upskill.candidates)")
    parser.add_argument("--rounds", type=int, help="rounds (upskill.rounds)")
    parser.add_argument(
        "--dry-run", action="store_true", help="score and report, store and activate nothing"
    )
    parser.add_argument("--report-dir", type=Path, help="where the report goes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from teacher.data.store import default_store_path
    from teacher.improve.report import markdown, write_report

    cfg = load_config(args.config, TeacherConfig)
    overrides = {k: getattr(args, k) for k in ("candidates", "rounds") if getattr(args, k)}
    if overrides:
        data = {**cfg.upskill.model_dump(), **overrides}
        cfg.upskill = validate_config(data, UpskillConfig, "command line (upskill)")
    store = None if args.no_store else default_store_path(cfg.home)
    cases = load_cases(store, args.labels)
    from teacher.release.build import build_release
    from teacher.release.registry import ReleaseRegistry

    active = ReleaseRegistry.of(cfg).active()
    parent = active.skill
    student = make_backend(cfg.student)
    writer = writer_backend(cfg, student)
    built = None
    try:
        result = run_upskill(
            cases,
            student,
            parent,
            cfg.upskill,
            cfg.student.max_new_tokens,
            writer=writer,
            dry_run=args.dry_run,
            progress=not args.quiet,
        )
        if result.decision.to_build:
            # The skill won on words; what edges get is a release around it (head fit on
            # its prompt, thresholds), gated through the edge's own code.
            built = build_release(
                cfg,
                student,
                with_bundled(cases, cfg.release.bundled_labels),  # as train builds
                skill=result.skill,
                adapter=active.adapter_files(),  # kept; it ships only where it pays
                note=f"upskill: {result.skill.name}",
                progress=not args.quiet,
            )
    finally:
        student.close()
        if writer is not None and writer is not student:
            writer.close()
    out = args.report_dir or cfg.home / "upskill" / "runs" / time.strftime("%Y%m%d-%H%M%S")
    command = " ".join(["gemma-teacher", *sys.argv[1:]])
    paths = write_report(result, out, "upskill", command)
    print(markdown(result, command))
    print(f"report: {paths['md']} {paths['json']} {paths['png']}")
    if built is not None:
        (out / "release.json").write_text(json.dumps(built.report(), indent=1))
        if built.verdict.passed:
            print(f"release v{built.version} ({result.skill.name}) is active")
        else:
            print("no release: " + "; ".join(built.verdict.reasons))
    return 0
