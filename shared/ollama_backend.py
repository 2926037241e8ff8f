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

A release with a LoRA adapter becomes an Ollama model of its own (``load_adapter``): the
adapter is converted to GGUF (``shared.gguf_adapter``), uploaded as a blob
(``/api/blobs/<digest>``), and ``/api/create`` builds ``<release_model>:r<N>`` FROM the
configured base with that ADAPTER, the release's SYSTEM prompt and a TEMPLATE that renders
the messages into the document the adapter was trained on (ending in ``Answer:``, which
the backend puts back in front of the reply). ``set_adapter`` switches the model the next
request uses; ``None`` goes back to the base. Release models beyond the newest
``keep_release_models`` (never the one in use) are deleted. A failed upload or create
raises ModelError and changes nothing.

Errors (``shared.errors``), each naming the host and the model:
``BackendUnavailable`` when the server cannot be reached or times out, ``ModelNotFound``
when it answers 404 / "not found", ``BackendError`` for anything else it reports.

The client is thread-safe (httpx), so one backend may serve several threads.
It knows nothing about transformers, answers' meaning or escalation.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ollama

from shared.backend import (
    TOP_LOGPROBS,
    GenerateRequest,
    Generation,
    TokenLogprob,
    chat_messages,
)
from shared.config import OllamaModelConfig
from shared.errors import BackendError, BackendUnavailable, ModelError, ModelNotFound
from shared.gguf_adapter import (
    ADAPTER_GGUF,
    STUDENT_PARAMETERS,
    STUDENT_TEMPLATE,
    write_gguf_adapter,
)
from shared.skill import ANSWER_PRIMER

logger = logging.getLogger(__name__)


class OllamaBackend:
    """Generation through an Ollama server's ``/api/chat``."""

    supports_adapters = True

    def __init__(self, config: OllamaModelConfig | None = None, max_new_tokens: int = 48):
        self.config = config or OllamaModelConfig()
        self.max_new_tokens = max_new_tokens
        self.name = f"ollama:{self.config.model}"
        self._client = ollama.Client(host=self.config.host, timeout=self.config.timeout_s)
        self._models: dict[str, str] = {}  # adapter name -> the Ollama model built for it
        self._active: str | None = None
        self.model_name = self.config.model  # the model requests go to now (base or a release's)

    # ------------------------------------------------------------ release models
    @property
    def active_adapter(self) -> str | None:
        return self._active

    @property
    def adapters(self) -> list[str]:
        """Adapter names whose Ollama model this backend built and has not pruned."""
        return sorted(self._models)

    def load_adapter(self, name: str, path: Path, system: str = "") -> None:
        """Build the Ollama model ``<release_model>:<name>`` for the PEFT LoRA in ``path``:
        upload it as a GGUF blob, then create FROM the base with ADAPTER, SYSTEM and the
        student TEMPLATE. Not activated; ModelError (naming the step) if any step fails."""
        target = f"{self.config.release_model}:{name}"
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gemma-edge-gguf-") as tmp:
            gguf_path = Path(tmp) / ADAPTER_GGUF
            write_gguf_adapter(Path(path), gguf_path, name)
            try:
                digest = self._client.create_blob(gguf_path)
            except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
                raise ModelError(
                    f"Ollama at {self.config.host} did not take the adapter blob for "
                    f"{target}: {_reason(exc)}"
                ) from exc
        try:
            status = ""
            for progress in self._client.create(
                model=target,
                from_=self.config.model,
                adapters={ADAPTER_GGUF: digest},
                system=system or None,
                template=STUDENT_TEMPLATE,
                parameters=STUDENT_PARAMETERS,
                stream=True,
            ):
                status = progress.status or status
                logger.debug("ollama create %s: %s", target, status)
        except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
            refused = isinstance(exc, ollama.ResponseError) and exc.status_code == 400
            if refused and "adapter" in str(exc.error).lower():
                raise ModelError(
                    f"Ollama at {self.config.host} refused to create {target} with the "
                    f"release's LoRA adapter: {_reason(exc)}. Ollama 0.34.1 and later no "
                    "longer create models with an ADAPTER: releases with a LoRA need "
                    "model.backend: llamacpp (or a teacher that builds head-only releases "
                    "for Ollama edges: gemma-teacher train --head-only)"
                ) from exc
            raise ModelError(
                f"Ollama at {self.config.host} could not create {target} from "
                f"{self.config.model!r}: {_reason(exc)}"
            ) from exc
        if status != "success":
            raise ModelError(
                f"Ollama at {self.config.host} ended creating {target} with {status!r}, "
                "not 'success'"
            )
        self._models[name] = target
        logger.info(
            "built %s (adapter %s) in %.2f s", target, digest[:19], time.perf_counter() - t0
        )
        self._prune(keep={target, self.model_name})

    def set_adapter(self, name: str | None) -> None:
        """Send the next requests to the model built for ``name``; None: the base model."""
        if name is not None and name not in self._models:
            raise ModelError(f"no Ollama model was built for adapter {name!r}")
        self._active = name
        self.model_name = self._models[name] if name is not None else self.config.model

    def _prune(self, keep: set[str]) -> None:
        """Delete release models beyond the newest ``keep_release_models`` (not ``keep``)."""
        prefix = f"{self.config.release_model}:r"
        try:
            names = [m.model for m in self._client.list().models if m.model]
        except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
            logger.warning("could not list Ollama models to prune: %s", _reason(exc))
            return
        ours = [n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]
        ours.sort(key=lambda n: int(n[len(prefix) :]), reverse=True)
        for old in ours[self.config.keep_release_models :]:
            if old in keep:
                continue
            try:
                self._client.delete(old)
                logger.info("deleted the old release model %s", old)
            except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
                logger.warning("could not delete %s: %s", old, _reason(exc))
            self._models = {k: v for k, v in self._models.items() if v != old}

    def messages(self, request: GenerateRequest) -> list[dict[str, Any]]:
        """The chat messages for a request (system, demonstration turns, the input)."""
        messages = chat_messages(request)
        if request.image is not None:
            messages[-1]["images"] = [base64.b64encode(request.image).decode("ascii")]
        return messages

    def generate(self, request: GenerateRequest) -> Generation:
        options = {"temperature": 0, **self.config.options}
        options["num_predict"] = min(request.max_new_tokens, self.max_new_tokens)
        if request.stop:
            options["stop"] = list(request.stop)
        kwargs: dict[str, Any] = {
            "model": self.model_name,
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
                    f"Ollama at {self.config.host} has no model {self.model_name!r}: "
                    f"{exc.error} (run: ollama pull {self.model_name})"
                ) from exc
            raise BackendError(
                f"Ollama at {self.config.host} failed for model {self.model_name!r}: "
                f"{exc.error} (HTTP {exc.status_code})"
            ) from exc
        except (ConnectionError, httpx.TransportError) as exc:
            raise BackendUnavailable(
                f"Ollama at {self.config.host} is unreachable or timed out "
                f"(model {self.model_name!r}, timeout {self.config.timeout_s} s): {exc}"
            ) from exc
        total = time.perf_counter() - t0
        text = _cut(text, request.stop)
        if self._active is not None:  # the release template ends in the primer
            text = f"{ANSWER_PRIMER} {text.lstrip()}"
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
                f"{self.model_name!r} without a final (done) message"
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


def _reason(exc: Exception) -> str:
    if isinstance(exc, ollama.ResponseError):
        return f"{exc.error} (HTTP {exc.status_code})"
    return str(exc) or type(exc).__name__
