"""``gemma-edge run`` with a scripted backend, for subprocess tests of the real CLI path.

    python -m tests.edge.scripted_edge [--delay S] [--fail-on TEXT] -- run --source ...

Everything but the model is real: argument parsing, config, sources, gate, sketch,
policy, events, signals, exit status.
"""

from __future__ import annotations

import argparse
import sys
import time

from edge.cli import parser as edge_parser
from edge.run import run
from shared.cli import setup_logging
from shared.errors import BackendError, GemmaEdgeError
from tests.fakes import ScriptedBackend


def main(argv: list[str]) -> int:
    own = argparse.ArgumentParser()
    own.add_argument("--delay", type=float, default=0.0)
    own.add_argument("--fail-on")
    split = argv.index("--")
    opts = own.parse_args(argv[:split])

    def answer(request) -> str:
        time.sleep(opts.delay)
        return "Answer: Something happens.\nSAFETY: no\nCONFIDENCE: 0.9"

    backend = ScriptedBackend(
        answer, fail_on=opts.fail_on, error=BackendError("scripted backend failure")
    )

    args = edge_parser().parse_args(argv[split + 1 :])
    setup_logging(args.verbose)
    try:
        return run(args, backend=backend)
    except GemmaEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
