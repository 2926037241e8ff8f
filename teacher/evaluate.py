"""``gemma-teacher eval``: a release on labelled cases, scored as an edge would run it.

example::

    gemma-teacher eval --release 3 --labels held_out.jsonl --against 0

The work is ``teacher.release_cli.run_eval`` (through ``teacher.harness``).
"""

from teacher.release_cli import add_eval_arguments as add_arguments
from teacher.release_cli import run_eval as run

__all__ = ["add_arguments", "run"]
