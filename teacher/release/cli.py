"""``gemma-teacher releases`` and ``gemma-teacher eval``: look at, roll back, score releases.

    gemma-teacher releases list                      # versions, gate metrics, the active one
    gemma-teacher releases show 3                    # manifest, files, gate report
    gemma-teacher releases rollback 2                # the server pushes v2 to every edge
    gemma-teacher releases build-default             # rebuild shared/data/release (v0)
    gemma-teacher eval --release 3 --labels held_out.jsonl [--against 0]

A rollback moves the active pointer; the whole release (skill, adapter, head,
thresholds) goes back out together. ``eval`` answers the labelled cases through
``teacher.release.harness`` exactly as an edge running that release would, and prints the
student and system metrics (with ``--against N``, side by side with release N).
It knows nothing about sockets or training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import StoreError
from shared.evaluation import bundled_labels, load_labeled
from shared.release import default_release_dir, load_release, model_engine
from shared.teacher_config import TeacherConfig, load_teacher_config
from teacher.release.harness import table
from teacher.release.registry import ReleaseRegistry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "list",
        help="every release with its frozen-split metrics",
        epilog="example:\n  gemma-teacher releases list --home ./teacher",
    )
    show = sub.add_parser(
        "show",
        help="one release's manifest and gate report",
        epilog="example:\n  gemma-teacher releases show 3",
    )
    show.add_argument("version", type=int)
    back = sub.add_parser(
        "rollback",
        help="make an older release active (0: the bundled one)",
        epilog="example:\n  gemma-teacher releases rollback 2",
    )
    back.add_argument("version", type=int)
    build = sub.add_parser(
        "build-default",
        help="rebuild the bundled release v0 from the bundled labelled scenes",
        description="Fit the default release's safety head on the bundled labelled scenes "
        "and calibrate its thresholds (reproducible: same weights, same bytes).",
        epilog="examples:\n  gemma-teacher releases build-default\n"
        "  gemma-teacher releases build-default --backend embedded   # v0 for torch edges\n"
        "  gemma-teacher releases build-default --adapter run/adapter --out v0-lora/",
    )
    for action in sub.choices.values():  # `releases list --home H` works as well
        action.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        action.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    build.add_argument(
        "--backend",
        choices=["llamacpp", "embedded", "torch"],
        help="the student engine whose hidden states the head reads (default: student.backend)",
    )
    build.add_argument(
        "--adapter",
        metavar="DIR",
        help="a LoRA adapter's folder (adapter_config.json, adapter_model.safetensors; a "
        "release that carries one will do), trained on none of the bundled scenes: v0 carries "
        "it, and its head is crossfitted and certified on the bundled scenes through it",
    )
    build.add_argument(
        "--out",
        help="where to write it (default: in the package, shared/data/release for torch, "
        "shared/data/release-llamacpp for llamacpp)",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument(
        "--release",
        required=True,
        help="release number in the registry (0: the bundled default), or a release folder",
    )
    parser.add_argument(
        "--labels",
        action="append",
        required=True,
        metavar="JSONL",
        help="labelled cases, one JSON object a line with input, safety (true/false) and "
        "keywords, as shared/data/scenes.jsonl; may repeat",
    )
    parser.add_argument("--against", help="another release to score side by side")
    parser.add_argument("--json", metavar="FILE", help="also write the reports (and per-case) here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args) -> TeacherConfig:
    return load_teacher_config(args.config, args.home)


def _release(registry: ReleaseRegistry, spec: str):
    if spec.isdigit():
        return registry.get(int(spec))
    return load_release(Path(spec))


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    registry = ReleaseRegistry.of(cfg)
    active = registry.active_number()
    if args.action == "list":
        rows = [("v0 (bundled)" + (" *" if active in (None, 0) else ""), {})]
        for number in registry.versions():
            gate = registry.gate_doc(number)
            rows.append(
                (f"v{number}" + (" *" if active == number else ""), gate.get("candidate", {}))
            )
        print(table(rows))
        print("* = active (what the server pushes to edges); metrics on the frozen split")
        return 0
    if args.action == "show":
        release = registry.get(args.version)
        doc = {
            "version": release.version,
            "active": active == release.version or (active is None and release.version == 0),
            "path": str(release.path),
            "describe": release.describe(),
            "manifest": json.loads(release.manifest.model_dump_json()),
            "gate": registry.gate_doc(args.version) if args.version else {},
        }
        print(json.dumps(doc, indent=1))
        return 0
    if args.action == "rollback":
        release = registry.activate(args.version)
        print(f"{release.describe()} is active; the teacher server pushes it to every edge")
        return 0
    if args.action == "build-default":
        if args.backend:
            engine = "embedded" if args.backend == "torch" else args.backend
            cfg.student = cfg.student.model_copy(update={"backend": engine})
        out = args.out or default_release_dir(model_engine(cfg.student.backend), fallback=False)
        return build_default(cfg, Path(out), Path(args.adapter) if args.adapter else None)
    raise StoreError(f"unknown action {args.action!r}")


def build_default(cfg: TeacherConfig, out: Path, adapter_dir: Path | None = None) -> int:
    from shared.backend_factory import make_backend
    from shared.release import read_adapter
    from teacher.release.build import build_default as build

    if adapter_dir is not None:
        read_adapter(adapter_dir)  # a wrong folder fails before the model loads
    backend = make_backend(cfg.student)
    cases = bundled_labels()
    release, timing = build(cfg, backend, cases, out, adapter_dir)
    print(release.describe())
    print(release.calibration.note if release.calibration else "no calibration")
    print(json.dumps({"head": release.head.info if release.head else None, "timing": timing}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from shared.backend_factory import make_backend
    from teacher.release.build import evaluate

    cfg = _config(args)
    registry = ReleaseRegistry.of(cfg)
    cases = [c for path in args.labels for c in load_labeled(path)]
    releases = [_release(registry, args.release)]
    if args.against is not None:
        releases.append(_release(registry, args.against))
    backend = make_backend(cfg.student)
    reports = []
    for release in releases:
        print(release.describe(), file=sys.stderr)
        reports.append(evaluate(cfg, backend, release, cases, progress=not args.no_progress))
    print(table([(f"v{r.release}", r.summary()) for r in reports]))
    for r in reports:
        if r.missed:
            print(f"v{r.release} missed: {', '.join(r.missed)}")
    if args.json:
        doc = {
            "labels": args.labels,
            "reports": [{**r.summary(), "cases": [c.to_json() for c in r.cases]} for r in reports],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0
