"""Candidate skills for upskilling: bootstrapped demonstrations, instruction variants, an
LLM writer, and mutations of the best candidates of a round.

Two sources of candidates, because a small teacher writes weak prompts:

- **combinations** (DSPy-style): a small library of hand-written instruction variants,
  each paired with few-shot demonstrations bootstrapped from the *train* split:
  balanced between safety yes and no, cases the student got wrong first, answers in
  the student's three-line format with the label's verdict (never the student's).
- **the writer** (COPRO-style): an LLM is asked for N system prompts as a JSON array;
  malformed JSON is repaired locally (code fences, trailing commas, single quotes)
  and, failing that, by asking the writer once to fix its own reply. In later rounds
  it sees the earlier candidates with their scores and the student's failures.

Later rounds also mutate the best candidates without an LLM (GEPA-style reflection on
the failure profile): swap instructions and demonstrations between the top two, add a
demonstration of the verdict the student misses most, reorder so the last example
shows that verdict.

It knows nothing about scoring, splits or registries: callers pass cases and results.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
from dataclasses import dataclass, field

from shared.answer import parse_answer
from shared.backend import Backend, GenerateRequest
from shared.errors import BackendError, TrainingError
from shared.evaluation import LabeledCase
from shared.skill import OUTPUT_FORMAT, Demo, Skill

logger = logging.getLogger(__name__)

HAZARDS = (
    "fire, flames, smoke, sparks, heat next to something that burns, a person fallen or "
    "lying still, a weapon or a threat, a child near danger, water near electricity, "
    "moving machinery near people, spilled chemicals, someone breaking in"
)

INSTRUCTIONS: dict[str, str] = {
    "describe-and-flag": (
        "You watch a camera and describe each scene in one short factual sentence. "
        f"Then say SAFETY: yes if a person must be alerted ({HAZARDS}); otherwise SAFETY: no."
    ),
    "safety-first": (
        "You are a safety monitor. For each scene, name what you see in one short "
        "sentence. A missed hazard is much worse than a false alarm: when anything could "
        f"hurt someone ({HAZARDS}), answer SAFETY: yes. Ordinary everyday scenes are SAFETY: no."
    ),
    "checklist": (
        "Describe the scene in one short sentence, then check it against this list:\n"
        + "\n".join(f"- {h.strip()}" for h in HAZARDS.split(","))
        + "\nIf any item applies, SAFETY: yes. If none applies, SAFETY: no."
    ),
    "format-first": (
        "Describe each camera scene in one short sentence and flag danger to people.\n"
        + OUTPUT_FORMAT
    ),
    "terse": "Camera scene log. One short sentence per scene; SAFETY: yes only for hazards.",
}


@dataclass
class Candidate:
    name: str
    origin: str  # parent | library | writer | mutation
    round: int
    skill: Skill
    note: str = ""

    def key(self) -> tuple:
        return (self.skill.instructions.strip(), tuple(self.skill.demos))


@dataclass
class Feedback:
    """What a round taught: candidates with their metrics, and the student's failures."""

    scored: list[tuple[Candidate, dict]] = field(default_factory=list)  # best first
    failures: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- demonstrations
def demo_for(case: LabeledCase, confidence: float = 0.9) -> Demo:
    """The case as a demonstration in the student's format, with the label's verdict."""
    sentence = ""
    if case.answer:
        parsed = parse_answer(case.answer)
        sentence = parsed.text or case.answer.strip().splitlines()[0]
    if not sentence or sentence.lower().startswith(("safety", "confidence")):
        sentence = case.input
    sentence = " ".join(sentence.split())
    if not sentence.endswith((".", "!", "?")):
        sentence += "."
    verdict = "yes" if case.safety else "no"
    return Demo(
        input=case.input,
        answer=f"Answer: {sentence}\nSAFETY: {verdict}\nCONFIDENCE: {confidence:.2f}",
    )


def pick_demos(
    pool: list[LabeledCase],
    k: int,
    rng: random.Random,
    prefer: set[str] = frozenset(),
    lean: bool | None = None,
) -> list[LabeledCase]:
    """k cases, half of each verdict (one more of ``lean`` when k is odd or a class is
    short), ids in ``prefer`` first, the rest at random; interleaved yes/no."""
    by_verdict = {}
    for verdict in (True, False):
        group = [c for c in pool if c.safety is verdict]
        rng.shuffle(group)
        group.sort(key=lambda c: c.id not in prefer)  # stable: preferred first
        by_verdict[verdict] = group
    first = True if lean is None else lean
    n_first = min(len(by_verdict[first]), (k + 1) // 2)
    n_second = min(len(by_verdict[not first]), k - n_first)
    n_first = min(len(by_verdict[first]), k - n_second)
    a, b = by_verdict[first][:n_first], by_verdict[not first][:n_second]
    out: list[LabeledCase] = []
    for i in range(max(len(a), len(b))):
        out += b[i : i + 1] + a[i : i + 1]  # the leaned verdict comes last in each pair
    return out


def make_skill(instructions: str, demos: list[Demo], parent: Skill, name: str) -> Skill:
    return Skill(
        version=0,
        name=name[:128],
        instructions=instructions.strip(),
        demos=tuple(demos),
        parent=parent.version,
    )


def library_candidates(
    parent: Skill,
    pool: list[LabeledCase],
    n: int,
    k: int,
    wrong: set[str],
    seed: int,
) -> list[Candidate]:
    """n combinations of instruction variants and bootstrapped demonstration sets."""
    demo_sets = [
        ("errors", pick_demos(pool, k, random.Random(seed), prefer=wrong, lean=True)),
        ("random", pick_demos(pool, k, random.Random(seed + 1), lean=True)),
        ("errors-no-last", pick_demos(pool, k, random.Random(seed), prefer=wrong, lean=False)),
        ("more", pick_demos(pool, k + 2, random.Random(seed + 2), prefer=wrong, lean=True)),
    ]
    library = {"parent": parent.instructions, **INSTRUCTIONS}
    names = list(library)
    combos = [(i, d) for d in range(len(demo_sets)) for i in range(len(names))]
    # Diverse first: walk the grid diagonally so early picks differ in both parts.
    combos.sort(key=lambda p: ((p[0] - p[1]) % len(names), p[1]))
    out = []
    for i, d in combos[:n]:
        dname, cases = demo_sets[d]
        name = f"{names[i]}+{dname}{len(cases)}"
        demos = [demo_for(c) for c in cases]
        skill = make_skill(library[names[i]], demos, parent, name)
        out.append(Candidate(name, "library", 1, skill))
    return out


def mutations(
    feedback: Feedback,
    parent: Skill,
    pool: list[LabeledCase],
    n: int,
    k: int,
    round_: int,
    seed: int,
) -> list[Candidate]:
    """Reflective edits of the best candidates, steered by what the student got wrong."""
    top = [c for c, _ in feedback.scored[:2]]
    if not top:
        return []
    best, metrics = feedback.scored[0]
    missed_yes = metrics.get("safety_recall", 1.0) < metrics.get("safe_specificity", 1.0)
    out: list[Candidate] = []

    def add(name: str, instructions: str, demos: list[Demo], note: str) -> None:
        skill = make_skill(instructions, demos, parent, name)
        out.append(Candidate(name, "mutation", round_, skill, note))

    if len(top) == 2:
        a, b = top
        add(f"r{round_}-swap-a", a.skill.instructions, list(b.skill.demos), f"{a.name} × {b.name}")
        add(f"r{round_}-swap-b", b.skill.instructions, list(a.skill.demos), f"{b.name} × {a.name}")
    used = {d.input for d in best.skill.demos}
    rest = [c for c in pool if c.input not in used]
    rng = random.Random(seed + round_)
    lean = True if missed_yes else False
    extra = [c for c in rest if c.safety is lean]
    rng.shuffle(extra)
    if extra:
        demos = list(best.skill.demos) + [demo_for(extra[0])]
        add(
            f"r{round_}-plus-{'yes' if lean else 'no'}",
            best.skill.instructions,
            demos,
            f"{best.name} + a {'safety' if lean else 'safe'} demo (student leaned the other way)",
        )
    verdict = "SAFETY: yes" if lean else "SAFETY: no"
    demos = sorted(best.skill.demos, key=lambda d: verdict in d.answer)
    if tuple(demos) != best.skill.demos:
        add(f"r{round_}-reorder", best.skill.instructions, demos, f"{best.name}, {verdict} last")
    fresh = pick_demos(pool, k, rng, prefer={c.id for c in rest}, lean=lean)
    add(
        f"r{round_}-fresh",
        best.skill.instructions,
        [demo_for(c) for c in fresh],
        f"{best.name} instructions, other demos",
    )
    for name in INSTRUCTIONS:
        if len(out) >= n:
            break
        if INSTRUCTIONS[name] != best.skill.instructions:
            add(
                f"r{round_}-{name}",
                INSTRUCTIONS[name],
                list(best.skill.demos),
                f"{name} with {best.name} demos",
            )
    return out[:n]


# ---------------------------------------------------------------- the LLM writer
WRITER_TASK = f"""\
You write system prompts ("skills") for a small language model on an edge device that \
watches a camera. For every scene it must reply in exactly three lines:
Answer: <one short factual sentence>
SAFETY: yes or no
CONFIDENCE: <a number from 0 to 1>
SAFETY is yes when a person must be alerted ({HAZARDS}). A missed hazard is much \
worse than a false alarm; ordinary scenes are no. The model is small: short, concrete \
prompts work best."""


def writer_prompt(n: int, current: Skill, feedback: Feedback | None = None) -> str:
    parts = [WRITER_TASK, "", "The current prompt:", "<<<", current.instructions.strip(), ">>>"]
    if feedback and feedback.scored:
        parts += ["", "Earlier candidates and their scores on held-back scenes (higher is better):"]
        for cand, m in feedback.scored[:4]:
            parts += [
                f"score {m['score']:.3f} (format {m['format_ok']:.2f}, safety recall "
                f"{m['safety_recall']:.2f}, specificity {m['safe_specificity']:.2f}, keywords "
                f"{m['keyword_recall']:.2f}):",
                "<<<",
                cand.skill.instructions.strip(),
                ">>>",
            ]
        if feedback.failures:
            parts += ["", "Scenes the best one got wrong:"]
            for f in feedback.failures[:6]:
                said = " ".join(f["raw"].split())[:120]
                want = "yes" if f["label"] else "no"
                parts.append(f"- {f['input']} (should be SAFETY: {want}; the model said: {said})")
    parts += [
        "",
        f"Write {n} different, improved system prompts for this model, each under 120 words.",
        f"Return only a JSON array of {n} strings, nothing else.",
    ]
    return "\n".join(parts)


REPAIR_PROMPT = (
    "The text below should be a JSON array of strings (system prompts) but it is not valid "
    "JSON. Return only the corrected JSON array of strings, nothing else.\n\n"
)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_KEYS = ("prompt", "system_prompt", "system", "instructions", "text", "content")


def _as_prompts(doc: object) -> list[str]:
    if isinstance(doc, dict):
        for value in doc.values():
            if isinstance(value, list):
                doc = value
                break
    if not isinstance(doc, list):
        raise ValueError("not a JSON array")
    out = []
    for item in doc:
        if isinstance(item, dict):
            item = next((item[k] for k in _KEYS if isinstance(item.get(k), str)), None)
        if isinstance(item, str) and 20 <= len(item.strip()) <= 4000:
            out.append(item.strip())
    if not out:
        raise ValueError("the array holds no usable prompt strings")
    return out


def parse_prompt_list(text: str) -> list[str]:
    """Prompts from a writer's reply; local repairs only. ValueError when hopeless."""
    fence = _FENCE.search(text)
    body = fence.group(1) if fence else text
    start, end = body.find("["), body.rfind("]")
    if start >= 0 and end > start:
        body = body[start : end + 1]
    elif body.lstrip().startswith("{"):
        body = body.strip()
    else:
        raise ValueError("no JSON array in the reply")
    attempts = [body]
    fixed = re.sub(r",\s*([\]}])", r"\1", body.replace("“", '"').replace("”", '"'))
    attempts.append(fixed)
    for attempt in attempts:
        try:
            return _as_prompts(json.loads(attempt))
        except (json.JSONDecodeError, ValueError):
            continue
    try:  # single quotes, Python-style lists
        return _as_prompts(ast.literal_eval(fixed))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a JSON array of strings: {exc}") from None


def write_instructions(
    writer: Backend,
    n: int,
    current: Skill,
    feedback: Feedback | None = None,
    max_new_tokens: int = 1024,
) -> tuple[list[str], str]:
    """Ask the writer for n prompts; returns (prompts, note). TrainingError when the
    reply and one repair attempt both fail to parse."""

    def ask(system: str, text: str, doing: str) -> str:
        request = GenerateRequest(system=system, input=text, stop=(), max_new_tokens=max_new_tokens)
        try:
            return writer.generate(request).text
        except BackendError as exc:
            raise TrainingError(f"the candidate writer failed{doing}: {exc}") from exc

    reply = ask(
        "You are an expert prompt engineer. Reply with JSON only.",
        writer_prompt(n, current, feedback),
        "",
    )
    try:
        return parse_prompt_list(reply)[:n], "parsed"
    except ValueError as first:
        logger.info("writer reply did not parse (%s); asking it to repair", first)
    fixed = ask(
        "You fix malformed JSON. Reply with JSON only.",
        REPAIR_PROMPT + reply[:8000],
        " while repairing",
    )
    try:
        return parse_prompt_list(fixed)[:n], "repaired"
    except ValueError as exc:
        raise TrainingError(
            f"the candidate writer's reply is not a JSON array of prompts, even after a "
            f"repair request ({exc}); reply began: {reply[:120]!r}"
        ) from None


def writer_candidates(
    prompts: list[str], demos: list[Demo], parent: Skill, round_: int, note: str
) -> list[Candidate]:
    out = []
    for i, text in enumerate(prompts, 1):
        name = f"r{round_}-writer-{i}"
        out.append(Candidate(name, "writer", round_, make_skill(text, demos, parent, name), note))
    return out
