"""``gemma-teacher synth``: top up thin real traffic with teacher-written inputs.

Each new input is written by the teacher model from a few real inputs drawn at random
as seeds (as Kiln does): "here are scenes a camera saw; write one new, different one".
Outputs are redacted, stripped to one sentence and dropped when they nearly repeat a
seed or each other. Every synthetic case gets an id starting ``synth-`` and origin
``synthetic``; ``teacher.data.dataset`` never puts one into the frozen evaluation split.

Synthetic inputs carry no label. They count for training only once a strong teacher
or a person labelled them:

- default: they go into the store as cases from the edge ``synth`` and the teacher's
  reviewer labels them like escalations; refused when the reviewer is the small
  ``embedded`` model or ``labels`` (no label for new text) unless ``--out`` is used;
- ``--out FILE``: written as JSONL for a person to label (add ``safety``/``keywords``),
  then ``gemma-teacher train --labels FILE``.

It knows nothing about training; it only writes inputs.

example::

    gemma-teacher synth --config teacher.yaml --count 100
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from shared.backend import Backend, GenerateRequest
from shared.errors import BackendError, ConfigError, TrainingError
from shared.redact import redact
from shared.teacher_config import load_teacher_config
from teacher.data.dataset import NEAR_DUPLICATE, _shingles, jaccard

logger = logging.getLogger(__name__)

WRITER_INSTRUCTIONS = (
    "You write scene descriptions like a camera's scene sketch, for training a safety "
    "monitor. Each scene below was really seen. Write ONE new scene of the same kind, in "
    "one plain sentence, different from all of them: other people, objects and places, "
    "sometimes dangerous and sometimes harmless."
)
PREFIX = "synth-"


def clean(text: str) -> str:
    """The first line of a model's reply, without a label or quotes."""
    text = re.sub(r"^\s*(answer|scene)\s*:\s*", "", text.strip(), flags=re.I)
    return text.splitlines()[0].strip().strip('"').strip() if text.strip() else ""


def synthesize(
    backend: Backend, seeds: list[str], count: int, seed: int = 0, per_prompt: int = 3
) -> list[str]:
    """Up to ``count`` new inputs; tries at most 3 x ``count`` generations."""
    if not seeds:
        raise TrainingError("synth needs real inputs to seed from (the store has none)")
    rng = random.Random(seed)
    seen = [_shingles(s) for s in seeds]
    out: list[str] = []
    bar = tqdm(total=count, desc="synthesising", unit="input")
    try:
        for _ in range(count * 3):
            if len(out) >= count:
                break
            shown = rng.sample(seeds, min(per_prompt, len(seeds)))
            request = GenerateRequest(
                system=WRITER_INSTRUCTIONS,
                input=" | ".join(shown),
                stop=("\n",),
                max_new_tokens=60,
            )
            text = redact(clean(backend.generate(request).text))
            if len(text.split()) < 4:
                continue
            sh = _shingles(text)
            if any(jaccard(sh, other) >= NEAR_DUPLICATE for other in seen):
                continue
            seen.append(sh)
            out.append(text)
            bar.update()
    finally:
        bar.close()
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="teacher YAML (default: built-in defaults)")
    parser.add_argument("--home", help="override the teacher home folder")
    parser.add_argument("--count", type=int, default=50, help="how many new inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write JSONL for a person to label instead of the store")


def run(args) -> int:
    from shared.backend_factory import make_backend
    from shared.messages import Escalation
    from teacher.data.store import CaseStore, default_store_path

    cfg = load_teacher_config(args.config, args.home)
    if args.count < 1:
        raise ConfigError("--count", [("--count", args.count, "must be at least 1")])
    reviewer = cfg.reviewer.backend
    if not args.out and reviewer in ("embedded", "labels"):
        raise TrainingError(
            f"reviewer.backend is {reviewer!r}: synthetic inputs need labels from a strong "
            "teacher (reviewer.backend: ollama) or a person (use --out FILE and label it)"
        )
    store = CaseStore(default_store_path(cfg.home))
    try:
        seeds = [c.input for c in store.labeled_cases() if not c.id.startswith(PREFIX)]
        writer_cfg = cfg.reviewer.model.model_copy(
            update={"backend": "ollama" if reviewer in ("ollama", "labels") else reviewer}
        )
        try:
            inputs = synthesize(make_backend(writer_cfg), seeds, args.count, args.seed)
        except BackendError as exc:
            raise TrainingError(f"the teacher could not write inputs: {exc}") from exc
        if args.out:
            lines = [
                json.dumps(
                    {"id": f"{PREFIX}{uuid.uuid4().hex[:12]}", "input": t, "origin": "synthetic"}
                )
                for t in inputs
            ]
            Path(args.out).write_text("\n".join(lines) + "\n")
            print(f"wrote {len(lines)} synthetic inputs to {args.out}: label them, then train")
            return 0
        now = time.time()
        added = store.add_cases(
            [
                (
                    Escalation(
                        case_id=f"{PREFIX}{uuid.uuid4().hex}",
                        edge_id="synth",
                        created_at=now,
                        source="synthetic",
                        input=text,
                        reasons=["synthetic"],
                    ),
                    None,
                )
                for text in inputs
            ]
        )
        print(f"stored {sum(added)} synthetic inputs for the teacher to review")
        return 0
    finally:
        store.close()
