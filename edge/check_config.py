"""``gemma-edge check-config FILE``."""

from __future__ import annotations

from shared.cli import check_config_command
from shared.config import EdgeConfig


def add_arguments(parser) -> None:
    parser.add_argument("file", help="edge YAML configuration")


def run(args) -> int:
    return check_config_command(EdgeConfig, args.file)
