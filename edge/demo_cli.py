"""``gemma-edge demo``: its options, and the report it writes when the rounds are played.

The rounds themselves are ``edge.demo.Demo``; this module plans them (``--quick``,
``--rounds``, ``--per-round``), keeps or removes the work folder, prints the table and
writes ``report.json`` and ``report.png``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edge.demo import FULL, QUICK, DemoRun
from edge.demo_pair import TEACHER_NAME, say
from edge.demo_scoring import scenario
from shared.errors import GemmaEdgeError
from shared.rounds import plot, table


def add_arguments(parser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['rounds']} rounds of {QUICK['per_round']} scenes "
        "(about 5 minutes on a quiet 2-core CPU)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds to play, 1 to {FULL['rounds']} "
        f"(default {FULL['rounds']}; --quick: {QUICK['rounds']})",
    )
    parser.add_argument(
        "--per-round",
        type=int,
        help=f"scenes per round, 1 to 80 (default "
        f"{FULL['per_round']}; --quick: {QUICK['per_round']})",
    )
    parser.add_argument(
        "--scenes",
        type=Path,
        help="a site's scene file to play instead of the bundled factory (one JSON object "
        "per line with a 'round', as shared/data/demo/scenes.jsonl; e.g. "
        "bench/data/heldout_site/scenes.jsonl); its labels stand in for the teacher",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="improve with upskill and a LoRA too, not only the head (slower)",
    )
    parser.add_argument(
        "--lora",
        action="store_true",
        help="train a LoRA with the head every round, without upskill (it ships only where "
        "it lowers teacher calls; fp32 on the CPU: minutes a round)",
    )
    parser.add_argument(
        "--out",
        default="gemma-edge-demo",
        help="where report.json and report.png go (default: ./gemma-edge-demo/)",
    )
    parser.add_argument(
        "--work",
        help="keep the demo's home, logs and events here "
        "(default: a temporary folder, removed afterwards)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the teacher's seed: which reviews are frozen for the gate, "
        "calibrate, or fall in which crossfit fold (default 0)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="model threads per process (default 2)"
    )
    parser.add_argument(
        "--backend",
        choices=["llamacpp", "embedded"],
        default="llamacpp",
        help="the student engine on the edge and the teacher (default llamacpp; embedded: "
        "transformers + PyTorch); each has its own bundled v0",
    )
    parser.add_argument(
        "--answer",
        choices=["always", "when_needed"],
        default="always",
        help="model.answer on the edge and student.answer on the teacher",
    )


def engine_of(backend: str) -> dict[str, str]:
    """The build the student ran on, kept beside the numbers: two llama.cpp builds can answer
    the same scene differently (``shared.llamacpp_native.engine_build``)."""
    if backend == "llamacpp":
        from shared.llamacpp_native import engine_build

        return engine_build()
    from importlib.metadata import version

    return {"torch": version("torch")}


def run(args) -> int:
    plan = QUICK if args.quick else FULL
    whole_site = args.scenes is not None and not args.quick  # all its rounds unless told
    rounds_n = args.rounds if args.rounds is not None or whole_site else plan["rounds"]
    per_round = args.per_round if args.per_round is not None or whole_site else plan["per_round"]
    if (rounds_n is not None and rounds_n < 1) or (per_round is not None and per_round < 1):
        raise GemmaEdgeError("--rounds and --per-round must be at least 1")
    rounds = scenario(rounds_n, per_round, args.scenes)
    rounds_n, per_round = len(rounds), min(len(r) for r in rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    temp = None if args.work else tempfile.TemporaryDirectory(prefix="gemma-edge-demo-")
    work = Path(args.work or temp.name)
    work.mkdir(parents=True, exist_ok=True)
    keep = "" if args.work else " (temporary: --work DIR keeps it)"
    say(
        f"gemma-edge demo: {rounds_n} round(s) of {per_round} fresh scenes from one site; "
        f"work folder {work}{keep}"
    )
    t0 = time.perf_counter()
    demo = DemoRun(
        work,
        rounds,
        args.full,
        args.threads,
        args.seed,
        args.scenes,
        args.backend,
        args.answer,
        lora=args.lora,
    )
    try:
        rows = demo.run()
    finally:
        if temp is not None:
            for name in ("edge.log", "teacher.log"):
                if (work / name).exists():
                    shutil.copyfile(work / name, out / name)
            temp.cleanup()
    seconds = time.perf_counter() - t0
    print(table(rows))
    doc = {
        "command": "gemma-edge " + " ".join(sys.argv[1:]),
        "seconds": round(seconds, 1),
        "teacher": TEACHER_NAME,
        "mode": demo.mode,
        "backend": args.backend,
        "answer": args.answer,
        "engine": engine_of(args.backend),
        "rounds": [r.to_json() for r in rows],
        "builds": demo.builds,
    }
    (out / "report.json").write_text(json.dumps(doc, indent=1))
    plot(rows, out / "report.png")
    first, last = rows[0], rows[-1]
    effect = ""
    if last.start_calls_per_100 is not None:
        ratio = (
            f"the loop's effect is {last.teacher_calls_per_100 / last.start_calls_per_100:.2f}x"
            if last.start_calls_per_100
            else "nothing to save"
        )
        effect = f" ({last.start_calls_per_100:.0f} for the same inputs on the starting release: {ratio})"
    print(
        f"\nteacher calls per 100 inputs: {first.teacher_calls_per_100:.0f} in round 0 -> "
        f"{last.teacher_calls_per_100:.0f} in round {len(rows) - 1}{effect}; system safety "
        "recall "
        + ", ".join("-" if r.system_recall is None else f"{r.system_recall:.2f}" for r in rows)
        + f"\nreport: {out / 'report.json'} {out / 'report.png'} ({seconds / 60:.1f} min); "
        f"logs: {(work if args.work else out) / 'edge.log'}, teacher.log beside it"
    )
    return 0
