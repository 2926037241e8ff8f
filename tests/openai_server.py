"""A small real HTTP server that answers like the OpenAI chat-completions API.

It follows the documented ``POST /v1/chat/completions`` (as vLLM, SGLang and llama-server
serve it): a JSON body with ``model``, ``messages`` (``content`` a string or a list of
``{"type": "text"}`` / ``{"type": "image_url", "image_url": {"url": ...}}`` parts),
``max_tokens``, ``temperature``, ``stop``, ``stream``. With ``stream`` false it answers one
``chat.completion`` object: ``id``, ``object``, ``created``, ``model``, ``choices``
(``index``, ``message: {role: "assistant", content}``, ``finish_reason``) and ``usage``
(``prompt_tokens``, ``completion_tokens``, ``total_tokens``). Errors are
``{"error": {"message", "type", "code"}}`` with the status: 401 without the right bearer
key (when ``api_key`` is set), 404 for an unknown model, 400 for a body that is not JSON or
asks ``stream: true`` (this server does not stream), 429 with a ``Retry-After`` header.

Test knobs: ``reply`` (text or a function of the body), ``delay_s`` before answering,
``fail`` (a list of statuses answered to the first requests, in order: 429, 500, 503, or
``"hang"`` to sleep past the client's timeout), ``retry_after`` (seconds, for 429s), and
``fail_rate`` (a share of requests, chosen by a seeded draw, answered 500). Every body is
kept in ``requests``; ``max_concurrent`` is the most requests it has served at once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = "Answer: A pan is smoking on a stove.\nSAFETY: yes\nCONFIDENCE: 0.9"


class FakeOpenAI:
    def __init__(
        self,
        models: set[str] | None = None,
        reply: str | Callable[[dict], str] = DEFAULT_REPLY,
        delay_s: float = 0.0,
        fail: list | None = None,
        retry_after: float = 0.05,
        fail_rate: float = 0.0,
        api_key: str | None = None,
        seed: int = 0,
    ):
        self.models = models or {"gemma-3-27b-it"}
        self.reply, self.delay_s, self.retry_after = reply, delay_s, retry_after
        self.fail = list(fail or [])
        self.fail_rate, self.api_key = fail_rate, api_key
        self.requests: list[dict] = []
        self.max_concurrent = 0
        self._now = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, doc: dict, headers: dict | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, kind: str, headers=None) -> None:
                self._send(status, {"error": {"message": message, "type": kind,
                                              "code": status}}, headers)  # fmt: skip

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}", "not_found")
                with fake._lock:
                    fake._now += 1
                    fake.max_concurrent = max(fake.max_concurrent, fake._now)
                try:
                    self._complete(raw)
                finally:
                    with fake._lock:
                        fake._now -= 1

            def _complete(self, raw: bytes) -> None:
                if fake.api_key is not None:
                    if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                        return self._error(
                            401, "Incorrect API key provided.", "invalid_request_error"
                        )
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "body is not JSON", "invalid_request_error")
                with fake._lock:
                    fake.requests.append(body)
                    planned = fake.fail.pop(0) if fake.fail else None
                    drawn = fake._rng.random() < fake.fail_rate
                if body.get("stream"):
                    return self._error(400, "this server does not stream", "invalid_request_error")
                if body.get("model") not in fake.models:
                    return self._error(404, f"The model `{body.get('model')}` does not exist.",
                                       "NotFoundError")  # fmt: skip
                if planned == "hang":
                    time.sleep(30)
                    return None
                if planned == 429:
                    return self._error(429, "Too many requests", "rate_limit_error",
                                       {"Retry-After": str(fake.retry_after)})  # fmt: skip
                if planned is not None or drawn:
                    status = planned or 500
                    return self._error(status, "the engine failed", "server_error")
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                text = fake.reply(body) if callable(fake.reply) else fake.reply
                prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
                self._send(200, {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                              "total_tokens": prompt + len(text.split())},
                })  # fmt: skip
                return None

        return Handler


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn of a request body (string or content parts)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content
