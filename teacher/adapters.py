"""``gemma-teacher adapters``: list, show and roll back the versioned LoRA adapters.

Adapters live in ``teacher.registry.Registry(home, "adapters")``; ``gemma-teacher
train`` adds a version only when it beat the active student, and activates it. The
teacher server pushes the active version to edges, so ``rollback N`` is how a person
sends an older adapter back out. ``rollback 0`` deactivates adapters (edges run the
base student). It knows nothing about training or sockets.

examples::

    gemma-teacher adapters list
    gemma-teacher adapters show 3
    gemma-teacher adapters rollback 2
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.config import TeacherConfig, load_config
from shared.errors import StoreError
from teacher.registry import Registry


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every adapter version with its gate metrics")
    show = sub.add_parser("show", help="one version's metadata and files")
    show.add_argument("version", type=int)
    back = sub.add_parser("rollback", help="make an older version active (0: none)")
    back.add_argument("version", type=int)


def registry_for(args) -> Registry:
    cfg = load_config(args.config, TeacherConfig)
    return Registry(Path(args.home) if args.home else cfg.home, "adapters")


def deactivate(registry: Registry) -> None:
    pointer = registry.root / "active"
    pointer.unlink(missing_ok=True)


def run(args) -> int:
    registry = registry_for(args)
    active = registry.active()
    if args.action == "list":
        versions = registry.versions()
        if not versions:
            print(f"no adapter versions in {registry.root}")
            return 0
        print(
            f"{'':1s} {'ver':>4s} {'safety':>7s} {'recall':>7s} {'format':>7s} {'steps':>6s}  dataset"
        )
        for v in versions:
            after = v.meta.get("after", {})
            mark = "*" if active and active.number == v.number else " "
            print(
                f"{mark} {v.number:4d} {after.get('safety_agreement', 0):7.3f}"
                f" {after.get('safety_recall', 0):7.3f} {after.get('format_ok', 0):7.3f}"
                f" {v.meta.get('steps', 0):6d}  {str(v.meta.get('dataset_sha256', ''))[:12]}"
            )
        return 0
    if args.action == "show":
        version = registry.get(args.version)
        doc = {
            "version": version.number,
            "active": bool(active and active.number == version.number),
            "path": str(version.path),
            "files": [e.model_dump() for e, _ in version.files()],
            "meta": version.meta,
        }
        print(json.dumps(doc, indent=1))
        return 0
    if args.action == "rollback":
        if args.version == 0:
            deactivate(registry)
            print("no adapter active: edges run the base student")
            return 0
        registry.activate(args.version)
        print(f"adapter v{args.version} is active; the teacher server pushes it to edges")
        return 0
    raise StoreError(f"unknown action {args.action!r}")
