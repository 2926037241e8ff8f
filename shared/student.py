"""The student as a release runs it: one code path for the edge and for every evaluation.

    student = Student(backend, release, max_new_tokens=48)   # loads the release's adapter
    answered = student.answer("A pan is smoking on the stove.")
    answered.answer.safety, answered.answer.p_unsafe          # words and the head's judgement

``Student.answer`` assembles the request from the release's skill (instructions and
demonstrations, ``shared.skill``), asks the backend for the hidden states the head needs
at the last prompt token (the same forward pass that answers), parses the text
(``shared.answer``) and puts the head's p(unsafe) on the answer. ``edge.daemon``
answers every input with it, and ``teacher.release.harness`` scores releases with it, so a
number that decides what edges get comes from what edges run.

A head that cannot apply to this backend (hidden states asked of Ollama, or a head fit on
a model of another size) is dropped with one warning: p(unsafe) is then None and the
policy falls back to its confidence rules.

It knows nothing about sources, sockets, thresholds or escalation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from shared.answer import Answer, parse_answer, verdict_confidence
from shared.backend import Backend, GenerateRequest, Generation, hidden_spec
from shared.errors import ModelError
from shared.head import SafetyHead
from shared.release import Release
from shared.skill import Skill

logger = logging.getLogger(__name__)


ANSWER_MODES = ("always", "when_needed")


@dataclass(frozen=True)
class Answered:
    generation: Generation
    answer: Answer  # with p_unsafe from the head where there is one
    sentence: bool = True  # False: judged from the prefill alone, no sentence generated


class Student:
    """A backend running one release (skill, adapter, head); ``use`` switches releases."""

    def __init__(
        self, backend: Backend, release: Release, max_new_tokens: int = 48, answer: str = "always"
    ):
        if answer not in ANSWER_MODES:
            raise ValueError(f"answer must be one of {ANSWER_MODES}, not {answer!r}")
        self.backend = backend
        self.max_new_tokens = max_new_tokens
        self.mode = answer
        self.release = release
        self.head: SafetyHead | None = None
        self._loaded: dict[tuple, str] = {}  # adapter files' identity -> backend adapter name
        self._lock = threading.Lock()
        self._run = threading.RLock()  # one caller at a time drives the backend
        self.use(release)

    @property
    def skill(self) -> Skill:
        return self.release.skill

    def prepare(self, release: Release) -> None:
        """Load ``release``'s adapter into the backend without activating it (an Ollama
        backend builds the release's model here). ModelError if it cannot: an edge then
        refuses the push and keeps what it runs. Safe from another thread than ``answer``."""
        if release.adapter_dir is None:
            return
        if not self.backend.supports_adapters:
            raise ModelError(
                f"release v{release.version} has a LoRA adapter but the "
                f"{self.backend.name} backend cannot load one"
            )
        key = _adapter_key(release.adapter_dir)
        with self._lock:
            name = self._loaded.get(key)
        # a new skill over the same adapter files does not reload them, unless the backend
        # let them go since (an Ollama server prunes old release models)
        if name is not None and name in self.backend.adapters:
            return
        name = f"r{release.version}"
        self.backend.load_adapter(name, release.adapter_dir, system=release.skill.instructions)
        with self._lock:  # a name loaded again replaces what it held before
            self._loaded = {k: n for k, n in self._loaded.items() if n != name}
            self._loaded[key] = name

    @contextmanager
    def trial(self, release: Release):
        """Run ``release`` inside the block (answers from other threads wait), then go back
        to the release that ran before, whatever happened: how an edge tries a pushed
        release on its canaries before it activates it."""
        with self._run:
            previous = self.release
            self.use(release)
            try:
                yield self
            finally:
                self.use(previous)

    def use(self, release: Release) -> None:
        """Run ``release`` from the next answer on: its adapter is loaded (or the base
        model restored) first; a failure raises ModelError and keeps the old release."""
        with self._run:
            self._use(release)

    def _use(self, release: Release) -> None:
        if release.adapter_dir is None:
            if self.backend.active_adapter:
                self.backend.set_adapter(None)
        else:
            self.prepare(release)
            with self._lock:
                name = self._loaded[_adapter_key(release.adapter_dir)]
            if self.backend.active_adapter != name:
                self.backend.set_adapter(name)
        self.release = release
        self.head = usable_head(self.backend, release.head)

    def request(self, text: str, image: bytes | None = None) -> GenerateRequest:
        skill = self.release.skill
        layers = self.head.layers if self.head is not None and self.head.kind == "hidden" else ()
        return GenerateRequest(
            system=skill.instructions,
            input=text,
            demos=skill.demos,
            image=image,
            max_new_tokens=self.max_new_tokens,
            hidden_layers=layers,
        )

    def answer(
        self,
        text: str,
        image: bytes | None = None,
        needs_sentence: Callable[[Answer], bool] | None = None,
    ) -> Answered:
        """The release's answer to one input; BackendError propagates, and a head that
        computes no finite p(unsafe) raises ModelError (the caller escalates the input).

        ``answer: when_needed`` with a head: the prompt alone is run first (the prefill:
        the head's features and p(unsafe), no sentence), and ``needs_sentence`` (the
        policy's ``needs_sentence``: an alert, an escalation or an audit) says whether to
        generate the sentence too; on llama.cpp that starts from where the prefill
        left off, so it costs what answering outright does. Without a head, or without ``needs_sentence``, the
        sentence is always generated."""
        with self._run:
            request = self.request(text, image)
            if self.mode == "when_needed" and self.head is not None and needs_sentence:
                gen = self.backend.generate(replace(request, max_new_tokens=0))
                quick = judge_prefill(gen, self.head)
                if not needs_sentence(quick):
                    return Answered(gen, quick, sentence=False)
            gen = self.backend.generate(request)
            return Answered(gen, judge(gen, self.head))


def _adapter_key(folder: Path | None) -> tuple | None:
    """The adapter files' identity: folder, size and modification time of the weights."""
    if folder is None:
        return None
    try:
        st = (Path(folder) / "adapter_model.safetensors").stat()
    except OSError:
        return (str(folder),)
    return (str(folder), st.st_size, st.st_mtime_ns)


def judge(gen: Generation, head: SafetyHead | None) -> Answer:
    """Parse a generation and put the head's p(unsafe) on it."""
    answer = parse_answer(gen.text, verdict_confidence(gen.logprobs))
    if head is None:
        return answer
    p, near = _p_unsafe(gen, head)
    return replace(answer, p_unsafe=p, keywords_near_safe=near)


def judge_prefill(gen: Generation, head: SafetyHead) -> Answer:
    """The head's judgement of a prompt run without a sentence: no text, so nothing to
    parse and no format to break; the safety verdict is the head's."""
    p, near = _p_unsafe(gen, head)
    return Answer("", None, None, True, "", p_unsafe=p, keywords_near_safe=near)


def _p_unsafe(gen: Generation, head: SafetyHead) -> tuple[float | None, frozenset[str]]:
    """p(unsafe), and the keywords whose nearest reviewed case is a safe lookalike."""
    features = head.features(gen)
    p = head.p_unsafe(features)
    if p is not None and not 0.0 <= p <= 1.0:  # NaN fails both comparisons
        raise ModelError(f"the safety head computed p_unsafe = {p} (not a probability)")
    return p, head.keywords_near_safe(features) if p is not None else frozenset()


def head_problem(backend: Backend, head: SafetyHead | None) -> str | None:
    """Why this backend cannot feed ``head`` (None: it can, or there is no head): it gives
    no hidden states, computes them on another engine than the head was fit on, cannot
    give the layers it reads, or gives another width."""
    if head is None or head.kind == "verdict":
        return None
    spec = hidden_spec(backend)
    if spec is None:
        return (
            f"the safety head reads hidden states, which the {backend.name} backend does not give"
        )
    engine = head.engine
    if engine != spec.engine:
        return (
            f"the safety head was fit on the {engine} engine's hidden states and this edge's "
            f"{backend.name} backend computes them with {spec.engine} (a head runs only on "
            "the engine it was fit on: build the release for this engine)"
        )
    layers = spec.num_layers
    wrong = [i for i in head.layers if not 0 <= i <= layers]
    if wrong:
        return (
            f"the safety head reads layers {list(head.layers)}, this model has layers "
            f"0..{layers} ({', '.join(map(str, wrong))} do not exist)"
        )
    if spec.readable is not None and not set(head.layers) <= set(spec.readable):
        return (
            f"the safety head reads layers {list(head.layers)}; the {backend.name} backend "
            f"gives only {list(spec.readable)}"
        )
    if spec.size * len(head.layers) != head.dim:
        return (
            f"the safety head takes {head.dim} features at layers {list(head.layers)}; this "
            f"model gives {spec.size} x {len(head.layers)} = {spec.size * len(head.layers)} "
            "(a head fit on another model?)"
        )
    return None


def usable_head(backend: Backend, head: SafetyHead | None) -> SafetyHead | None:
    """``head`` if this backend can feed it, else None (with the reason logged)."""
    problem = head_problem(backend, head)
    if problem is None:
        return head
    logger.warning("%s: running without it (confidence rules decide)", problem)
    return None
