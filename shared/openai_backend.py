"""The OpenAI-compatible backend: a model served by vLLM, SGLang, llama-server or LM Studio.

    backend = OpenAIBackend(OpenAIModelConfig(base_url="http://gpu-box:8000/v1",
                                              model="google/gemma-3-27b-it"))
    gens = backend.generate_batch(requests)     # up to max_in_flight requests at once

What a teacher reviewing a fleet needs from a serving engine, over the documented
``POST {base_url}/chat/completions`` (``stream: false``):

- the request as chat turns (``shared.backend.chat_messages``), a frame as an
  ``image_url`` content part holding a ``data:image/jpeg;base64`` URL, greedy
  (``temperature: 0``), ``max_tokens``, at most 4 ``stop`` sequences (the API's limit);
- **a bound on requests in flight**: ``max_in_flight`` across every caller (a semaphore;
  ``generate_batch`` sends a batch through a pool of that many threads), so a slow
  engine is never flooded; what is not in flight waits in the teacher's store;
- **retries that respect the engine**: a 429 (``Retry-After`` honoured, capped at
  ``retry_max_s``), a 5xx, a timeout or a refused connection is retried with doubling
  back-off up to ``max_retries`` times, then ``BackendUnavailable``; any other error
  status is a ``BackendError`` with the server's own message. ``generate_batch`` lets
  every request of the batch finish, then raises ``PartialBatch`` with the generations
  that succeeded: the reviewer stores those and the review worker gives the failed cases
  back to the store, where they wait for the next batch; none is lost.

The key is sent as ``Authorization: Bearer`` and never logged or put in an error.
No hidden states and no log-probabilities: it is for reviewing, not for an edge's head.
It knows nothing about stores or skills' storage.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from shared.backend import GenerateRequest, Generation, NoAdapters, chat_messages, first_stop
from shared.config import OpenAIModelConfig
from shared.errors import BackendError, BackendUnavailable, ModelNotFound

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_STOP = 4  # the chat-completions API takes up to 4 stop sequences


class OpenAIBackend(NoAdapters):
    """Greedy chat completions from an OpenAI-compatible server, with bounded concurrency."""

    def __init__(self, config: OpenAIModelConfig | None = None, max_new_tokens: int = 96):
        self.config = config or OpenAIModelConfig()
        self.max_new_tokens = max_new_tokens
        self.name = f"openai:{self.config.model}"
        key = self.config.api_key or os.environ.get(self.config.api_key_env) or None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limit = self.config.max_in_flight
        self._client = httpx.Client(
            base_url=self.config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=self.config.timeout_s,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix="openai")
        self.retries = 0  # requests sent again (429, 5xx, timeouts), for metrics and benches

    # ------------------------------------------------------------ generation
    def body(self, request: GenerateRequest) -> dict[str, Any]:
        messages = chat_messages(request)
        if request.image is not None:
            url = "data:image/jpeg;base64," + base64.b64encode(request.image).decode("ascii")
            messages[-1]["content"] = [
                {"type": "text", "text": messages[-1]["content"]},
                {"type": "image_url", "image_url": {"url": url}},
            ]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max(1, min(request.max_new_tokens, self.max_new_tokens)),
            "stream": False,
        }
        if request.stop:
            body["stop"] = list(request.stop[:MAX_STOP])
        return body

    def generate(self, request: GenerateRequest) -> Generation:
        body = self.body(request)
        t0 = time.perf_counter()
        with self._slots:
            doc = self._post(body)
        total = time.perf_counter() - t0
        try:
            choice = doc["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{self._where()} answered without choices[0].message") from exc
        if isinstance(text, list):  # content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if not isinstance(text, str):
            raise BackendError(f"{self._where()} answered a message without text content")
        cut = first_stop(text, request.stop)
        if cut is not None:
            text = text[:cut]
        usage = doc.get("usage") or {}
        return Generation(
            text=text.strip(),
            tokens=int(usage.get("completion_tokens") or 0),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            ttft_s=total,  # not streamed: the first token arrives with the last
            total_s=total,
            logprobs=None,
            backend=self.name,
        )

    def generate_batch(self, requests: list[GenerateRequest]) -> list[Generation]:
        """All of ``requests``, up to ``max_in_flight`` at once, in order. If any fails, a
        ``PartialBatch`` is raised once every request has finished: it holds the
        generations that succeeded (None where one failed), so only the failed ones are
        asked again."""
        futures = [self._pool.submit(self.generate, r) for r in requests]
        out: list[Generation | None] = []
        failure: BackendError | None = None
        for future in futures:
            try:
                out.append(future.result())
            except BackendError as exc:
                out.append(None)
                failure = failure or exc
        if failure is not None:
            raise PartialBatch(str(failure), out) from failure
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    # ------------------------------------------------------------ HTTP
    def _where(self) -> str:
        return (
            f"the OpenAI-compatible server at {self.config.base_url} (model {self.config.model!r})"
        )

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            wait = min(cfg.retry_max_s, cfg.retry_initial_s * 2**attempt)
            try:
                response = self._client.post("chat/completions", json=body)
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise BackendError(f"{self._where()} answered non-JSON") from exc
                problem = f"HTTP {response.status_code}: {_message(response)}"
                if response.status_code not in RETRY_STATUS:
                    if response.status_code == 404:
                        raise ModelNotFound(f"{self._where()}: {problem}")
                    if response.status_code in (401, 403):
                        raise BackendError(
                            f"{self._where()} refused the API key ({problem}); set "
                            f"reviewer.model.openai.api_key or ${cfg.api_key_env}"
                        )
                    raise BackendError(f"{self._where()}: {problem}")
                wait = min(cfg.retry_max_s, _retry_after(response) or wait)
            if attempt == cfg.max_retries:
                break
            self.retries += 1
            logger.info("%s: %s; retrying in %.2f s", self._where(), problem, wait)
            time.sleep(wait)
        raise BackendUnavailable(
            f"{self._where()} failed {cfg.max_retries + 1} time(s), last: {problem}"
        )


class PartialBatch(BackendUnavailable):
    """Some requests of a batch failed: ``generations`` has the others (None: failed)."""

    def __init__(self, message: str, generations: list[Generation | None]):
        super().__init__(message)
        self.generations = generations


def _message(response: httpx.Response) -> str:
    """The server's own error message (``{"error": {"message": ...}}``), else the body."""
    try:
        doc = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error or doc)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
