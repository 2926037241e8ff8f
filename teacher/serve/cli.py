"""``gemma-teacher serve``: run ``teacher.serve.server.TeacherServer`` until a signal.

Builds the store and the configured reviewer, prints the endpoint once it is bound, and
stops cleanly on SIGTERM/SIGINT (the store is closed, nothing queued is lost).
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from shared.teacher_config import load_teacher_config
from teacher.data.store import CaseStore, default_store_path
from teacher.serve.review import make_reviewer
from teacher.serve.server import TeacherServer

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="teacher YAML file (default: all defaults)")
    parser.add_argument("--bind", help="override server.bind, e.g. tcp://0.0.0.0:5555")
    parser.add_argument("--home", type=Path, help="override home (store and registries)")


def run(args: argparse.Namespace) -> int:
    config = load_teacher_config(args.config, args.home)
    if args.bind:
        config.server.bind = args.bind
    store = CaseStore(default_store_path(config.home))
    server = TeacherServer(config, make_reviewer(config, store), store)

    def _stop(signum, _frame):
        logger.info("signal %s: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.on_ready = lambda: print(
        f"gemma-teacher serving on {server.endpoint} (store {store.path})", flush=True
    )
    server.serve_forever()
    store.close()
    return 0
