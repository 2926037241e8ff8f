"""What the two command-line programs share: subcommand wiring, logging, clean errors.

Each subcommand lives in the module that does the work and exposes
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when
their subcommand runs, so ``--help`` stays fast. A ``GemmaEdgeError`` ends the
program with its message and exit status 2 (1 for other failures), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from shared.errors import ConfigError, GemmaEdgeError

logger = logging.getLogger(__name__)


class Subcommand:
    def __init__(self, name: str, module: str, help: str, epilog: str = ""):
        self.name, self.module, self.help, self.epilog = name, module, help, epilog

    def load(self):
        return importlib.import_module(self.module)


def build_parser(
    prog: str, description: str, commands: list[Subcommand]
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(_command=command)
        p.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="more logging (-vv: debug)",
        )
        command.load().add_arguments(p)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_main(parser_factory: Callable[[], argparse.ArgumentParser], argv: list[str] | None) -> int:
    parser = parser_factory()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args._command.load().run(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GemmaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check_config_command(model_type: type, path: str) -> int:
    """Validate a YAML file; print every problem as 'key: value: reason'; exit 0 or 2."""
    from shared.config import load_config

    try:
        load_config(path, model_type)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"{path}: ok")
    return 0
