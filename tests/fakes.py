"""A hand-written, deterministic, scriptable backend for fast unit tests of logic."""

from __future__ import annotations

from collections.abc import Callable

from shared.backend import GenerateRequest, Generation, NoAdapters, TokenLogprob


class ScriptedBackend(NoAdapters):
    """Answers from a function of the request (or a fixed text); records every request.

    ``fail_on``: inputs containing this substring raise ``error`` instead.
    """

    name = "scripted"

    def __init__(
        self,
        answer: str
        | Callable[[GenerateRequest], str] = "Answer: A quiet scene.\nSAFETY: no\nCONFIDENCE: 0.9",
        logprobs: Callable[[GenerateRequest], list[TokenLogprob] | None] | None = None,
        fail_on: str | None = None,
        error: Exception | None = None,
    ):
        self.answer = answer
        self.logprobs = logprobs
        self.fail_on = fail_on
        self.error = error
        self.requests: list[GenerateRequest] = []
        self.closed = False

    def generate(self, request: GenerateRequest) -> Generation:
        self.requests.append(request)
        if self.fail_on is not None and self.fail_on in request.input:
            raise self.error or RuntimeError(f"scripted failure on {request.input!r}")
        text = self.answer(request) if callable(self.answer) else self.answer
        lp = self.logprobs(request) if self.logprobs else None
        return Generation(
            text=text,
            tokens=len(text.split()),
            prompt_tokens=len(request.input.split()),
            ttft_s=0.001,
            total_s=0.002,
            logprobs=lp,
            backend=self.name,
        )

    def close(self) -> None:
        self.closed = True


class _Config:
    num_hidden_layers = 2
    hidden_size = 4


class _Model:
    config = _Config()


DANGER = "DANGER"


class FeatureBackend(ScriptedBackend):
    """A scripted student with hidden states and switchable adapters, for release tests.

    Inputs containing ``DANGER`` are the hazards. The base model's hidden state carries
    that signal (plus deterministic noise) and its words get it right, but unsure
    (CONFIDENCE: 0.5, so the confidence rules escalate everything). With ``bad_adapter``
    (a substring of the adapter's folder) active and the prompt holding demonstrations
    (the edge's real prompt), the answer is "SAFETY: no, CONFIDENCE: 0.95" and the hidden
    states lose the signal; without demonstrations it still answers right: the adapter
    trained without demonstrations that an old gate passed. With ``good_adapter`` active
    the hidden states carry the signal with a fifth of the noise: an adapter that pays
    (``noise`` scales the base model's noise, so that some cases fall in the band).
    """

    model = _Model()

    def __init__(
        self, bad_adapter: str | None = None, good_adapter: str | None = None, noise: float = 1.0
    ):
        super().__init__("Answer: A scene.\nSAFETY: no\nCONFIDENCE: 0.5")
        self.bad_adapter = bad_adapter
        self.good_adapter = good_adapter
        self.noise = noise
        self.loaded: dict[str, object] = {}
        self.active_adapter: str | None = None

    supports_adapters = True

    @property
    def adapters(self) -> list[str]:
        return sorted(self.loaded)

    def load_adapter(self, name, path, system="") -> None:
        self.loaded[name] = path

    def set_adapter(self, name) -> None:
        self.active_adapter = name

    def _broken(self, request: GenerateRequest) -> bool:
        path = self.loaded.get(self.active_adapter) if self.active_adapter else None
        return bool(path and self.bad_adapter and self.bad_adapter in str(path) and request.demos)

    def generate(self, request: GenerateRequest) -> Generation:
        gen = super().generate(request)
        import hashlib

        digest = hashlib.sha256(request.input.encode()).digest()
        path = self.loaded.get(self.active_adapter) if self.active_adapter else None
        quiet = bool(path and self.good_adapter and self.good_adapter in str(path))
        scale = self.noise / (5 if quiet else 1) / 256
        noise = [(b - 128) * scale for b in digest[: 4 * len(request.hidden_layers)]]
        signal = 0.0 if self._broken(request) else (1.0 if DANGER in request.input else -1.0)
        if request.hidden_layers:
            gen.hidden = [signal + n for n in noise]
        if self._broken(request):
            gen.text = "Answer: A scene.\nSAFETY: no\nCONFIDENCE: 0.95"
        elif DANGER in request.input:
            gen.text = "Answer: A hazard.\nSAFETY: yes\nCONFIDENCE: 0.5"
        if request.max_new_tokens == 0:
            gen.text = "Answer:"
        return gen


def hazard_cases(n: int, seed: int = 0) -> list:
    """``n`` labelled text cases, half of them hazards (``DANGER``), none with a keyword."""
    from shared.evaluation import LabeledCase

    out = []
    for i in range(n):
        unsafe = i % 2 == 0
        text = f"{'DANGER' if unsafe else 'calm'} scene number {i} seed {seed}"
        out.append(LabeledCase(f"case-{seed}-{i}", text, unsafe, ("scene",)))
    return out
