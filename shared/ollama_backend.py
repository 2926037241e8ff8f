"""The Ollama backend: a model served by an Ollama server, through the official client.

    backend = OllamaBackend(OllamaModelConfig(host="http://teacher:11434", model="gemma3:27b"),
                            max_new_tokens=96)
    gen = backend.generate(GenerateRequest(system=..., demos=..., input=..., image=jpeg))

A chat model gets the skill as messages: the instructions as the system message, each
demonstration as a user turn (``Scene: <input>``) and an assistant turn (its answer),
then the input as the last user turn, with the JPEG frame (base64) in its ``images``.
Decoding is greedy unless ``options`` says otherwise (temperature defaults to 0); the
token budget and stop sequences go in ``options.num_predict`` / ``options.stop``.
The reply is streamed so the time to first token is measured; with ``logprobs`` on,
the server's per-token log-probabilities (top 5 alternatives) are returned for
``shared.answer.verdict_confidence``. Servers too old for logprobs simply send none.

Errors (``shared.errors``), each naming the host and the model:
``BackendUnavailable`` when the server cannot be reached or times out, ``ModelNotFound``
when it answers 404 / "not found", ``BackendError`` for anything else it reports.

The client is thread-safe (httpx), so one backend may serve several threads.
It knows nothing about transformers, answers' meaning or escalation.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import httpx
import ollama

from shared.backend import GenerateRequest, Generation, TokenLogprob
from shared.config import OllamaModelConfig
from shared.errors import BackendError, BackendUnavailable, ModelNotFound
from shared.skill import INPUT_LABEL

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 5


class OllamaBackend:
    """Generation through an Ollama server's ``/api/chat``."""

    def __init__(self, config: OllamaModelConfig | None = None, max_new_tokens: int = 48):
        self.config = config or OllamaModelConfig()
        self.max_new_tokens = max_new_tokens
        self.name = f"ollama:{self.config.model}"
        self._client = ollama.Client(host=self.config.host, timeout=self.config.timeout_s)

    def messages(self, request: GenerateRequest) -> list[dict[str, Any]]:
        """The chat messages for a request (system, demonstration turns, the input)."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}]
        for demo in request.demos:
            messages.append({"role": "user", "content": f"{INPUT_LABEL} {demo.input.strip()}"})
            messages.append({"role": "assistant", "content": demo.answer.strip()})
        last: dict[str, Any] = {"role": "user", "content": f"{INPUT_LABEL} {request.input}"}
        if request.image is not None:
            last["images"] = [base64.b64encode(request.image).decode("ascii")]
        messages.append(last)
        return messages

    def generate(self, request: GenerateRequest) -> Generation:
        options = {"temperature": 0, **self.config.options}
        options["num_predict"] = min(request.max_new_tokens, self.max_new_tokens)
        if request.stop:
            options["stop"] = list(request.stop)
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": self.messages(request),
            "options": options,
            "keep_alive": self.config.keep_alive,
            "stream": self.config.stream,
        }
        if self.config.logprobs:
            kwargs.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        t0 = time.perf_counter()
        try:
            if self.config.stream:
                text, final, logprobs, ttft = self._stream(kwargs, t0)
            else:
                final = self._client.chat(**kwargs)
                text = final.message.content or ""
                ttft = time.perf_counter() - t0
                logprobs = _logprobs(final.logprobs)
        except ollama.ResponseError as exc:
            if exc.status_code == 404 or "not found" in str(exc.error).lower():
                raise ModelNotFound(
                    f"Ollama at {self.config.host} has no model {self.config.model!r}: "
                    f"{exc.error} (run: ollama pull {self.config.model})"
                ) from exc
            raise BackendError(
                f"Ollama at {self.config.host} failed for model {self.config.model!r}: "
                f"{exc.error} (HTTP {exc.status_code})"
            ) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise BackendUnavailable(
                f"Ollama at {self.config.host} is unreachable or timed out "
                f"(model {self.config.model!r}, timeout {self.config.timeout_s} s): {exc}"
            ) from exc
        total = time.perf_counter() - t0
        text = _cut(text, request.stop)
        return Generation(
            text=text.strip(),
            tokens=int(final.eval_count or len(logprobs or ()) or 0),
            prompt_tokens=int(final.prompt_eval_count or 0),
            ttft_s=ttft,
            total_s=total,
            logprobs=logprobs if self.config.logprobs else None,
            backend=self.name,
        )

    def _stream(self, kwargs: dict[str, Any], t0: float) -> tuple[str, Any, Any, float]:
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        ttft = 0.0
        final = None
        for chunk in self._client.chat(**kwargs):
            content = chunk.message.content if chunk.message else None
            if content and not parts:
                ttft = time.perf_counter() - t0
            if content:
                parts.append(content)
            logprobs.extend(_logprobs(chunk.logprobs) or ())
            if chunk.done:
                final = chunk
        if final is None:
            raise BackendError(
                f"Ollama at {self.config.host} ended the stream for model "
                f"{self.config.model!r} without a final (done) message"
            )
        return "".join(parts), final, (logprobs or None), ttft

    def close(self) -> None:
        self._client._client.close()


def _logprobs(items: Any) -> list[TokenLogprob] | None:
    if not items:
        return None
    out = []
    for item in items:
        top = {alt.token: float(alt.logprob) for alt in (item.top_logprobs or ())}
        out.append(TokenLogprob(token=item.token, logprob=float(item.logprob), top=top))
    return out


def _cut(text: str, stops: tuple[str, ...]) -> str:
    """Ollama drops the stop sequence itself; cut again in case a server does not."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(found)] if found else text
