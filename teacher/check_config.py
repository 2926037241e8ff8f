"""``gemma-teacher check-config FILE``."""

from __future__ import annotations

from shared.cli import check_config_command
from shared.teacher_config import TeacherConfig


def add_arguments(parser) -> None:
    parser.add_argument("file", help="teacher YAML configuration")


def run(args) -> int:
    return check_config_command(TeacherConfig, args.file)
