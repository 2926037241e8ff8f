"""What the two command-line programs share: subcommand wiring, logging, clean errors.

Each subcommand lives in the module that does the work and exposes
``add_arguments(parser)`` and ``run(args) -> int``; only the module of the subcommand
given on the command line is imported (``--help`` of the program imports none), so
start-up stays fast and one broken optional dependency breaks only its own command. A ``GemmaEdgeError`` ends the
program with its message and exit status 2 (1 for other failures), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
    prog: str, description: str, commands: list[Subcommand], argv: list[str] | None = None
) -> argparse.ArgumentParser:
    """The program's parser. With ``argv``, only the subcommand it names gets its module
    imported and its arguments added; without, every subcommand's (tests, docs)."""
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
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
        if chosen is None or command.name == chosen:
            command.load().add_arguments(p)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_main(
    parser_factory: Callable[[list[str] | None], argparse.ArgumentParser], argv: list[str] | None
) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = parser_factory(given).parse_args(given)
    setup_logging(args.verbose)
    try:
        return int(args._command.load().run(args) or 0)
    except GemmaEdgeError as exc:  # one line, whatever it is
        text = exc.one_line() if isinstance(exc, ConfigError) else " ".join(str(exc).split())
        print(f"error: {text}", file=sys.stderr)
        return _exit(2, argv)
    except KeyboardInterrupt:
        return _exit(130, argv)


def _exit(code: int, argv: list[str] | None) -> int:
    """From the installed command (``argv`` None), end the process here with ``code``: a
    model's native threads torn down by the interpreter after an error can abort it
    (SIGABRT, exit 134), and a supervisor must be able to tell a start-up error (2) from
    a crash. Called in-process (tests), return the code."""
    if argv is not None:
        return code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


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
