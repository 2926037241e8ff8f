"""``gemma-teacher``: the teacher box's command line. Thin: parse, load config, run."""

from __future__ import annotations

from shared.cli import Subcommand, build_parser, run_main

DESCRIPTION = """\
The teacher box: review what edges escalate, then make the student better.

examples:
  gemma-teacher serve --config teacher.yaml        # accept escalations, review them
  gemma-teacher keys new-edge kitchen-cam          # key pair for a new edge
  gemma-teacher cases list --unreviewed
  gemma-teacher console --config teacher.yaml      # review queue, fleet, releases (web page)
  gemma-teacher upskill --config teacher.yaml      # better prompt for the student
  gemma-teacher train --config teacher.yaml        # release: LoRA + safety head + thresholds
  gemma-teacher train --head-only --labels f.jsonl # release: safety head + thresholds (~1-2 min)
  gemma-teacher releases list                      # what edges run; `rollback N`
  gemma-teacher eval --release 2 --labels held_out.jsonl --against 0
  gemma-teacher report --out report/               # per release and edge, from the store
  gemma-teacher export --out ollama-student/       # GGUF adapter + Modelfile for Ollama
"""

COMMANDS = [
    Subcommand(
        "serve",
        "teacher.serve.cli",
        "Accept escalations from edges, store and review them.",
        "example:\n  gemma-teacher serve --config deploy/config/teacher.yaml",
    ),
    Subcommand(
        "keys",
        "teacher.serve.keys",
        "Create the teacher's and edges' CurveZMQ keys.",
        "examples:\n  gemma-teacher keys init\n  gemma-teacher keys new-edge kitchen-cam",
    ),
    Subcommand(
        "cases",
        "teacher.serve.cases",
        "List, show and correct stored cases.",
        "examples:\n  gemma-teacher cases list\n  gemma-teacher cases correct CASE_ID --safety yes",
    ),
    Subcommand(
        "console",
        "teacher.console.cli",
        "The review console, a web page beside `serve`: the review queue (confirm or correct "
        "verdicts), the fleet, releases (roll back, re-push) and the flywheel.",
        "examples:\n  gemma-teacher console --config teacher.yaml        # http://127.0.0.1:8765/\n"
        "  ssh -L 8765:127.0.0.1:8765 teacher-box            # from another machine, then open\n"
        "                                                    # http://127.0.0.1:8765/ there",
    ),
    Subcommand(
        "upskill",
        "teacher.improve.cli",
        "Write and score better skills (prompts); the best goes into a release build.",
        "example:\n  gemma-teacher upskill --config teacher.yaml --labels scenes.jsonl",
    ),
    Subcommand(
        "train",
        "teacher.train.cli",
        "Build a release from reviewed cases: a LoRA adapter (unless --head-only), a safety "
        "head and calibrated thresholds; gate it against the active release; activate it.",
        "examples:\n  gemma-teacher train --config teacher.yaml\n"
        "  gemma-teacher train --no-store --labels scenes.jsonl --home ./teacher --head-only\n"
        "  gemma-teacher train --head-only --traffic edge-events.jsonl  # + what edges settled",
    ),
    Subcommand(
        "releases",
        "teacher.release.cli",
        "List, show and roll back releases (what edges run); rebuild the bundled one.",
        "examples:\n  gemma-teacher releases list\n  gemma-teacher releases show 3\n"
        "  gemma-teacher releases rollback 2\n  gemma-teacher releases build-default",
    ),
    Subcommand(
        "report",
        "teacher.serve.report",
        "How a deployment is doing per release and edge: inputs, teacher calls per 100, "
        "system safety recall (on the audit sample), student accuracy, format, false alerts.",
        "example:\n  gemma-teacher report --home ~/.cache/gemma-edge/teacher --out report/",
    ),
    Subcommand(
        "eval",
        "teacher.release.evaluate",
        "Score a release on labelled cases exactly as an edge runs it (student and system "
        "metrics).",
        "example:\n  gemma-teacher eval --release 3 --labels held_out.jsonl --against 0",
    ),
    Subcommand(
        "synth",
        "teacher.data.synth",
        "Top up a thin dataset with teacher-written inputs.",
        "example:\n  gemma-teacher synth --config teacher.yaml --count 100",
    ),
    Subcommand(
        "export",
        "teacher.release.export",
        "Export a release's LoRA for Ollama and llama.cpp (GGUF adapter + Modelfile).",
        "examples:\n  gemma-teacher export --out ollama-student/            # the active release\n"
        "  gemma-teacher export --out r3/ --release 3 --base gemma3:270m\n"
        "  ollama create gemma-edge-student -f ollama-student/Modelfile",
    ),
    Subcommand(
        "check-config",
        "teacher.check_config",
        "Validate a teacher YAML file; print each bad key, its value and why.",
        "example:\n  gemma-teacher check-config deploy/config/teacher.yaml",
    ),
]


def parser(argv: list[str] | None = None):
    return build_parser("gemma-teacher", DESCRIPTION, COMMANDS, argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
