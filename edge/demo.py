"""``gemma-edge demo``: the whole loop on one machine, round after round.

    gemma-edge demo --quick            # 2 short rounds, a few minutes on a 2-core CPU
    gemma-edge demo                    # 8 rounds of 80 fresh scenes
    gemma-edge demo --full             # upskill and a LoRA as well as the head
    gemma-edge demo --lora             # a LoRA with the head, no upskill

What runs, all of it real and on loopback, with the embedded Gemma 3 270M (no network,
no Ollama):

1. a temporary home with CurveZMQ keys (``gemma-teacher keys``): the teacher's pair and
   one edge's, on the teacher's allow-list;
2. ``gemma-teacher serve`` as a subprocess; its reviewer is ``labels``: a labelled file
   stands in for the teacher (a person, or an Ollama teacher in a real deployment);
3. ``gemma-edge run`` as a subprocess reading inputs on stdin, linked to the teacher,
   starting on the bundled release v0;
4. per round: the round's fresh scenes (``shared/data/demo/scenes.jsonl``, one site, never
   seen by any release) go to the edge; the demo waits until every escalation is stored,
   reviewed and the review is back at the edge; then ``gemma-teacher train --head-only``
   (``--full``: ``upskill`` then ``train``) builds a release from the reviews and from the
   inputs the edge settled by itself (a sampled share it sent over the link, stored apart
   and self-labelled), gated against the active one; the server pushes it; the edge takes it without restarting
   and the next round shows it in every event;
5. a table per round (from the edge's own events, scored against the scenario's labels)
   and ``report.json`` + ``report.png`` in ``--out``.

The process pair (keys, configs, the two subprocesses, their events and outbox) is
``edge.demo_pair``; this module plays the rounds on it. It knows how to start and watch
the parts, not how any part works inside: it drives the
teacher through its commands and reads only the shared release layout (it imports
nothing of ``teacher``), so it stands above both sides.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from edge.demo_pair import DemoProcesses, events, say
from edge.demo_scoring import outcome, scenario_path, start_outcomes, write_round_labels
from shared.errors import GemmaEdgeError
from shared.evaluation import BUNDLED_LABELS, LabeledCase, bundled_path
from shared.release import read_active
from shared.rounds import RoundRow, round_row, table
from shared.scoring import Outcome

logger = logging.getLogger(__name__)

QUICK = {"rounds": 2, "per_round": 24}
FULL = {"rounds": 8, "per_round": 80}
ANSWER_TIMEOUT_S = 600
REVIEW_TIMEOUT_S = 300
PUSH_TIMEOUT_S = 300


class DemoRun(DemoProcesses):
    """One demo run: the process pair (``edge.demo_pair``) and the rounds it plays."""

    def __init__(
        self,
        work: Path,
        rounds: list[list[LabeledCase]],
        full: bool,
        threads: int,
        seed: int = 0,
        scenes: Path | None = None,
        backend: str = "embedded",
        answer: str = "always",
        lora: bool = False,
    ):
        super().__init__(work, scenes or scenario_path(), backend, answer, threads, seed)
        self.rounds = rounds
        self.full = full
        self.lora = lora  # a LoRA with the head every round, without upskill
        self.rows: list[RoundRow] = []
        self.outcomes: list[list[Outcome]] = []  # per round, per input, as the edge answered
        self.builds: list[dict] = []
        self._pushed = 0  # the last release the edge was seen to install

    # ------------------------------------------------------------ one round
    def play(self, index: int, cases: list[LabeledCase]) -> RoundRow:
        before = len([e for e in events(self.events) if e.get("type") == "answer"])
        bar = tqdm(
            total=len(cases), desc=f"round {index}: the edge answers", unit="input", file=sys.stderr
        )
        answered: list[dict] = []
        for case in cases:
            self.edge.stdin.write(case.input + "\n")
            self.edge.stdin.flush()
            target = before + len(answered) + 1
            self.wait(
                lambda t=target: self.answers() >= t,
                ANSWER_TIMEOUT_S,
                f"the edge's answer to {case.input[:40]!r}",
            )
            answered = self.answers_since(before)
            bar.update()
        bar.close()
        escalated = {e["case_id"] for e in answered if e.get("case_id")}
        reviewed = lambda: escalated <= self.reviewed()  # noqa: E731
        with tqdm(
            total=len(escalated),
            desc=f"round {index}: stored and reviewed",
            unit="case",
            file=sys.stderr,
            bar_format="{desc}: {n_fmt}/{total_fmt} {bar} {elapsed}",
        ) as bar:

            def progress() -> bool:
                done = len(escalated & self.reviewed())
                bar.update(done - bar.n)
                return reviewed()

            self.wait(progress, REVIEW_TIMEOUT_S, "every escalation to be reviewed")
        self.wait(self.outbox_empty, REVIEW_TIMEOUT_S, "the settled inputs to reach the teacher")
        self.outcomes.append([outcome(e, c.safety) for e, c in zip(answered, cases, strict=True)])
        return round_row(f"round {index}", self.outcomes[-1])

    # ------------------------------------------------------------ releases
    def improve(self, index: int) -> dict:
        """Build a release from everything reviewed so far; wait until the edge has it."""
        # every build adds the bundled labelled scenes itself (release.bundled_labels), as a
        # deployment's does; upskill scores its prompts on them too. What the edge settled
        # by itself reaches the teacher over the link (Settled).
        prior = [a for name in BUNDLED_LABELS for a in ("--labels", str(bundled_path(name)))]
        steps = {
            "full": [["upskill", *prior], ["train"]],
            "lora": [["train"]],
            "head": [["train", "--head-only"]],
        }[self.improves]
        doc: dict = {"after_round": index, "steps": []}
        for step in steps:
            shown = [
                a for a in step if not a.endswith(".jsonl") and a not in ("--labels", "--traffic")
            ]
            say(
                f"teacher: gemma-teacher {' '.join(shown)}: a release from the reviews so far, "
                "the bundled labelled scenes and the inputs the edge settled itself (head "
                "features, thresholds, then the gate scores it against the running release)"
            )
            t0 = time.perf_counter()
            done = self.run_teacher(step)
            seconds = round(time.perf_counter() - t0, 1)
            result = "built" if done.returncode == 0 else "refused by the gate"
            doc["steps"].append(
                {"command": step, "exit": done.returncode, "outcome": result, "seconds": seconds}
            )
            (self.work / f"round{index}-{step[0]}.out").write_text(done.stdout)
            if done.returncode not in (0, 1):
                raise GemmaEdgeError(
                    f"gemma-teacher {step[0]} failed ({done.returncode}); "
                    f"see {self.work / f'round{index}-{step[0]}.out'}"
                )
            said = [
                line
                for line in done.stdout.splitlines()
                if line.startswith(("release v", "refused", "not saved", "no release", "the LoRA"))
            ]
            doc["steps"][-1]["said"] = said  # what the gate passed, or its named reasons
            for line in said:
                say(f"teacher: {line}")
        active = read_active(self.home / "releases") or 0  # the teacher's active pointer
        doc["release"] = active
        pointer = self.work / "edge" / "releases" / "active"
        if active and active != self._pushed:
            self._pushed = active
            self.wait(
                lambda: (
                    (pointer.is_file() and pointer.read_text().strip() == str(active))
                    or self.refused(active) is not None
                ),
                PUSH_TIMEOUT_S,
                f"the edge to install release v{active}",
            )
            reason = self.refused(active)
            if reason is not None:  # the edge keeps what it runs; the demo cannot go on as told
                raise GemmaEdgeError(f"the edge refused release v{active}: {reason}")
            say(f"edge: installed release v{active}; it answers with it from the next input")
        return doc

    # ------------------------------------------------------------ the whole run
    @property
    def improves(self) -> str:
        """What a build trains: full (upskill + LoRA + head), lora (LoRA + head) or head."""
        return "full" if self.full else "lora" if self.lora else "head"

    @property
    def mode(self) -> str:
        return {
            "full": "full (upskill + LoRA + head)",
            "lora": "LoRA + head",
            "head": "head and thresholds",
        }[self.improves]

    def run(self) -> list[RoundRow]:
        self.start()
        try:
            for index, cases in enumerate(self.rounds):
                row = self.play(index, cases)
                self.rows.append(row)
                print(table(self.rows[-1:]), file=sys.stderr)
                for text, why in zip(row.missed_ids, row.missed_why, strict=True):
                    # the worst outcome: say which input it was, and what the edge saw
                    print(f"round {index}: MISSED a hazard: {text} ({why})", file=sys.stderr)
                if index < len(self.rounds) - 1:
                    self.builds.append(self.improve(index))
        finally:
            self.stop()
        self.rows = self.against_start()
        return self.rows

    def against_start(self) -> list[RoundRow]:
        """Every round's rows, with the same inputs answered by the release the edge
        started with (``edge.demo_scoring``): the loop against no loop."""
        labels, out = self.work / "rounds.jsonl", self.work / "start_release.json"
        write_round_labels(labels, self.rounds[: len(self.rows)])
        say(
            "teacher: gemma-teacher eval --release 0: every round's inputs on the starting "
            "release, to measure the loop against no loop"
        )
        done = self.run_teacher(
            ["eval", "--release", "0", "--labels", str(labels), "--json", str(out), "--no-progress"]
        )
        if done.returncode != 0:
            raise GemmaEdgeError(f"gemma-teacher eval failed ({done.returncode}): {done.stdout}")
        start = start_outcomes(out)
        return [
            round_row(row.label, self.outcomes[i], start.get(i)) for i, row in enumerate(self.rows)
        ]
