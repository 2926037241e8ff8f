"""``gemma-teacher eval``: a release on labelled cases, scored as an edge would run it.

example::

    gemma-teacher eval --release 3 --labels held_out.jsonl --against 0

The work is ``teacher.release.cli.run_eval`` (through ``teacher.release.harness``).
"""

from teacher.release.cli import add_eval_arguments as add_arguments
from teacher.release.cli import run_eval as run

__all__ = ["add_arguments", "run"]
