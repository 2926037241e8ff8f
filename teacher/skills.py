"""``gemma-teacher skills list|show|rollback``: the skill versions on the teacher box.

Versions live in the registry under ``HOME/skills/`` (``teacher.registry``), each with
its ``skill.json`` and the upskill run's verdict in ``meta.json``. The active version
is what the teacher server pushes to edges, so ``rollback N`` is how a person pushes an
older version again. Version 0 is the bundled default skill; it is shown, but it has
no registry folder to activate. It knows nothing about scoring or sockets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shared.config import TeacherConfig, load_config
from shared.errors import StoreError
from shared.skill import Skill, default_skill, skill_from_bytes
from teacher.registry import Registry, Version

SKILL_FILE = "skill.json"

EPILOG = """\
examples:
  gemma-teacher skills list --config teacher.yaml
  gemma-teacher skills show          # the active skill (the bundled default when none)
  gemma-teacher skills show 3 --prompt
  gemma-teacher skills rollback 2    # make v2 active again: edges receive it
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--config", type=Path, help="teacher YAML (default: all defaults)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every version with its score and whether it is active")
    show = sub.add_parser("show", help="one version's instructions, demonstrations and meta")
    show.add_argument("version", type=int, nargs="?", help="version (default: the active one)")
    show.add_argument("--prompt", action="store_true", help="print the prompt prefix as sent")
    show.add_argument("--json", action="store_true", help="print the skill file as JSON")
    back = sub.add_parser("rollback", help="activate an earlier (or any stored) version")
    back.add_argument("version", type=int, help="version number to activate")
    for p in sub.choices.values():
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="teacher YAML")


def load_version(version: Version) -> Skill:
    path = version.path / SKILL_FILE
    if not path.is_file():
        raise StoreError(f"skill v{version.number} has no {SKILL_FILE} in {version.path}")
    return skill_from_bytes(path.read_bytes(), str(path))


def list_versions(registry: Registry) -> list[str]:
    active = registry.active()
    active_n = active.number if active else 0
    lines = [
        f"{'':1} {'ver':>4}  {'score':>6}  {'parent':>6}  {'demos':>5}  "
        f"{'created':16}  {'eval hash':12}  name / verdict"
    ]
    default = default_skill()
    lines.append(
        f"{'*' if active_n == 0 else ' ':1} {0:>4}  {'-':>6}  {'-':>6}  {len(default.demos):>5}  "
        f"{'bundled':16}  {'-':12}  {default.name}"
    )
    for v in registry.versions():
        meta = v.meta
        score = meta.get("score")
        verdict = "" if meta.get("activated", True) else "  (did not beat its parent)"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("created_at", 0)))
        lines.append(
            f"{'*' if v.number == active_n else ' ':1} {v.number:>4}  "
            f"{score if score is not None else '-':>6}  "
            f"{meta.get('parent', '-') if meta.get('parent') is not None else '-':>6}  "
            f"{_demo_count(v):>5}  {created:16}  {str(meta.get('eval_hash') or '-')[:12]:12}  "
            f"{meta.get('name', '')}{verdict}"
        )
    return lines


def _demo_count(version: Version) -> int | str:
    try:
        return len(load_version(version).demos)
    except (StoreError, ValueError):
        return "?"


def show_version(registry: Registry, number: int | None, prompt: bool, as_json: bool) -> str:
    if number is None:
        active = registry.active()
        number = active.number if active else 0
    if number == 0:
        skill, meta = default_skill(), {"note": "the bundled default skill"}
    else:
        version = registry.get(number)
        skill, meta = load_version(version), version.meta
    if as_json:
        return skill.to_bytes().decode()
    if prompt:
        return skill.prompt_prefix()
    active = registry.active()
    lines = [
        f"skill v{skill.version} ({skill.name})"
        + ("  [active]" if (active.number if active else 0) == number else ""),
        f"parent: {skill.parent}  score: {skill.score}  eval hash: {skill.eval_hash}",
        f"sha256: {skill.sha256}",
        "",
        "instructions:",
        *("  " + line for line in skill.instructions.splitlines()),
        "",
        f"demonstrations ({len(skill.demos)}):",
    ]
    for demo in skill.demos:
        lines.append(f"  Scene: {demo.input}")
        lines += ["    " + line for line in demo.answer.splitlines()]
    extra = {k: v for k, v in meta.items() if k not in ("name", "score", "parent", "eval_hash")}
    lines += ["", "meta: " + json.dumps(extra, sort_keys=True)]
    return "\n".join(lines)


def rollback(registry: Registry, number: int) -> str:
    if number == 0:
        raise StoreError(
            "version 0 is the bundled default and has no registry folder; roll back to a "
            "stored version (gemma-teacher skills list)"
        )
    before = registry.active()
    version = registry.activate(number)
    was = f"v{before.number}" if before else "the bundled default"
    return f"skill v{version.number} is active (was {was}); connected edges receive it"


def run(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None), TeacherConfig)
    registry = Registry(cfg.home, "skills")
    if args.action == "list":
        print("\n".join(list_versions(registry)))
    elif args.action == "show":
        print(show_version(registry, args.version, args.prompt, args.json))
    else:
        print(rollback(registry, args.version))
    return 0
