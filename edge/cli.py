"""``gemma-edge``: the edge daemon's command line. Thin: parse, load config, run."""

from __future__ import annotations

from shared.cli import Subcommand, build_parser, run_main

DESCRIPTION = """\
Run a small Gemma on an input stream; escalate what it is unsure of to a teacher box.

examples:
  gemma-edge demo --quick                         # the whole loop: edge + teacher, 2 rounds
  gemma-edge run --source scenes                  # bundled sample scenes, embedded Gemma 3 270M
  gemma-edge run --source video.avi --config edge.yaml
  gemma-edge run --source rtsp://camera.local:8554/cam --config edge.yaml
  gemma-edge check-config deploy/config/edge.yaml
"""

COMMANDS = [
    Subcommand(
        "demo",
        "edge.demo_cli",
        "Run the whole loop on this machine: a real edge and a real teacher over CurveZMQ, "
        "round after round of fresh scenes; the edge needs its teacher less each round.",
        "examples:\n  gemma-edge demo --quick              # a few minutes\n"
        "  gemma-edge demo                      # 8 rounds of 80 scenes (about 20 minutes)\n"
        "  gemma-edge demo --full --out report/ # upskill and a LoRA as well as the head",
    ),
    Subcommand(
        "run",
        "edge.run",
        "Answer every input of a source and escalate the doubtful ones.",
        "examples:\n  gemma-edge run --source scenes\n  gemma-edge run --source 0 --config edge.yaml\n"
        "  gemma-edge run --source notes.txt --events events.jsonl",
    ),
    Subcommand(
        "check-config",
        "edge.check_config",
        "Validate an edge YAML file; print each bad key, its value and why.",
        "example:\n  gemma-edge check-config deploy/config/edge.yaml",
    ),
]


def parser(argv: list[str] | None = None):
    return build_parser("gemma-edge", DESCRIPTION, COMMANDS, argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
