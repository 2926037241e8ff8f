"""A hand-written, deterministic, scriptable backend for fast unit tests of logic."""

from __future__ import annotations

from collections.abc import Callable

from shared.backend import GenerateRequest, Generation, TokenLogprob


class ScriptedBackend:
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
