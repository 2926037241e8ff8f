"""A small real HTTP server that answers like Ollama's documented ``/api/chat``.

It follows ollama/ollama docs/api.md: POST ``/api/chat`` with ``model``, ``messages``
(``images`` as base64), ``options`` (``num_predict``, ``stop``), ``keep_alive``,
``stream`` (default true: newline-delimited JSON chunks, each with ``message.content``
and ``done: false``, then a final chunk with ``done: true``, ``done_reason`` and the
``*_count`` / ``*_duration`` statistics in nanoseconds; ``stream: false``: one object),
and ``logprobs`` / ``top_logprobs`` (each chunk carries ``logprobs``: a list of
``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``). An unknown model
gets HTTP 404 with ``{"error": "model \\"NAME\\" not found, try pulling it first"}``.
Also GET ``/api/version`` and ``/api/tags``.

Models are created as the docs describe: ``HEAD /api/blobs/<digest>`` answers 200 if the
blob is there, else 404; ``POST /api/blobs/<digest>`` stores the body and answers 201, or
400 when the body's SHA-256 is not the digest; ``POST /api/create`` (``model``, ``from``,
``adapters`` / ``files`` as name -> digest, ``system``, ``template``, ``parameters``,
``stream`` default true) answers 400 for a digest never uploaded, 404 for an unknown
``from``, else a stream of ``{"status": ...}`` lines ending in ``success`` (the model then
answers chats); ``DELETE /api/delete`` answers 200, or 404 for an unknown model. A model
created with a ``template`` that ends in ``Answer:`` replies without that primer, as a
model continuing its prompt does. Knob: ``create_error`` (an ``{"error": ...}`` line
instead of ``success``, and no model). Knob ``adapters_removed``: answer a create that
names ``adapters`` with HTTP 400 and an error, as Ollama 0.34.1 and later do (ollama/ollama
pull request 14969 removed creating models with a LoRA ADAPTER; the newest snapshot we
could read, of 2026-08-21, predates it, so the wording of the error is ours; a create FROM
a base or from GGUF ``files`` still succeeds). Creates and deletes are kept in ``created``
and ``deleted``.

Test knobs: ``reply`` (text or a function of the request body), ``delay_s`` before
answering, ``fail_status`` (answer that HTTP status with an error body), and
``stream_error`` (an ``{"error": ...}`` line in the middle of a stream, as Ollama
sends when generation fails part-way). Every request body is kept in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_REPLY = "Answer: A pan is smoking on a stove.\nSAFETY: yes\nCONFIDENCE: 0.8"


def _tokens(text: str) -> list[str]:
    """Split like a tokenizer would, roughly: words with their leading space, newlines."""
    return re.findall(r"\n|[ ]?[A-Za-z]+|[ ]?[0-9]|[ ]?[^A-Za-z0-9\s]", text)


def _logprob_entry(token: str) -> dict[str, Any]:
    word = token.strip().lower()
    if word in ("yes", "no"):
        other = token.replace(token.strip(), "no" if word == "yes" else "yes")
        chosen, alt = math.log(0.7), math.log(0.25)
        top = [(token, chosen), (other, alt), (" maybe", math.log(0.03))]
    else:
        chosen = math.log(0.9)
        top = [(token, chosen), (" the", math.log(0.05))]
    return {
        "token": token,
        "logprob": chosen,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
    }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is what the timeout test wants


class FakeOllama:
    """Start with ``with FakeOllama(models={"gemma3:4b"}) as server: server.url ...``."""

    def __init__(
        self,
        models: set[str] | None = None,
        reply: str | Callable[[dict[str, Any]], str] = DEFAULT_REPLY,
    ):
        self.models = models or {"gemma3:4b"}
        self.reply = reply
        self.delay_s = 0.0
        self.fail_status: int | None = None
        self.stream_error: str | None = None
        self.requests: list[dict[str, Any]] = []
        self.blobs: dict[str, bytes] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.templates: dict[str, str] = {}
        self.create_error: str | None = None
        self.adapters_removed = False
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------ protocol
    def _chat(self, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]] | dict[str, Any]]:
        model = body.get("model", "")
        if model not in self.models:
            return 404, {"error": f'model "{model}" not found, try pulling it first'}
        text = self.reply(body) if callable(self.reply) else self.reply
        if self.templates.get(model, "").endswith("Answer:") and text.startswith("Answer:"):
            text = text[len("Answer:") :]
        options = body.get("options") or {}
        reason = "stop"
        for stop in options.get("stop") or ():
            if stop in text:
                text = text[: text.index(stop)]
        tokens = _tokens(text)
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        want_logprobs = bool(body.get("logprobs"))
        top_n = int(body.get("top_logprobs") or 0)

        def logprobs(chunk_tokens: list[str]) -> list[dict[str, Any]]:
            entries = [_logprob_entry(t) for t in chunk_tokens]
            for e in entries:
                e["top_logprobs"] = e["top_logprobs"][:top_n]
            return entries

        stats = {
            "total_duration": 1_200_000_000,
            "load_duration": 5_000_000,
            "prompt_eval_count": sum(
                len(str(m.get("content", "")).split()) for m in body["messages"]
            ),
            "prompt_eval_duration": 300_000_000,
            "eval_count": len(tokens),
            "eval_duration": 800_000_000,
        }
        if body.get("stream", True) is False:
            doc = {
                "model": model,
                "created_at": now,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "done": True,
                "done_reason": reason,
                **stats,
            }
            if want_logprobs:
                doc["logprobs"] = logprobs(tokens)
            return 200, doc
        chunks: list[dict[str, Any]] = []
        for token in tokens:
            chunk = {
                "model": model,
                "created_at": now,
                "message": {"role": "assistant", "content": token},
                "done": False,
            }
            if want_logprobs:
                chunk["logprobs"] = logprobs([token])
            chunks.append(chunk)
        if self.stream_error is not None:
            chunks.insert(len(chunks) // 2, {"error": self.stream_error})
        chunks.append(
            {
                "model": model,
                "created_at": now,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
                **stats,
            }
        )
        return 200, chunks

    def _create(self, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]] | dict[str, Any]]:
        digests = {**(body.get("files") or {}), **(body.get("adapters") or {})}
        missing = [d for d in digests.values() if d not in self.blobs]
        if missing:
            return 400, {"error": f"blob {missing[0]} not found"}
        if body.get("adapters") and self.adapters_removed:
            return 400, {"error": "creating a model with adapters is no longer supported"}
        base = body.get("from")
        if base and base not in self.models:
            return 404, {"error": f'model "{base}" not found, try pulling it first'}
        self.created.append(body)
        lines = [{"status": "reading model metadata"}]
        if body.get("adapters"):
            lines.append({"status": "creating adapter layer"})
        if body.get("system"):
            lines.append({"status": "creating system layer"})
        if body.get("template"):
            lines.append({"status": "creating template layer"})
        lines.append({"status": "writing manifest"})
        if self.create_error is not None:
            lines.append({"error": self.create_error})
        else:
            lines.append({"status": "success"})
            self.models.add(body["model"])
            if body.get("template"):
                self.templates[body["model"]] = body["template"]
        if body.get("stream", True) is False:
            last = lines[-1]
            return (500, last) if "error" in last else (200, last)
        return 200, lines

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, doc: Any, ndjson: bool = False) -> None:
                if ndjson:
                    payload = b"".join(json.dumps(c).encode() + b"\n" for c in doc)
                    ctype = "application/x-ndjson"
                else:
                    payload = json.dumps(doc).encode()
                    ctype = "application/json; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._send(200, {"version": "0.13.0"})
                elif self.path == "/api/tags":
                    self._send(200, {"models": [{"name": m, "model": m} for m in fake.models]})
                else:
                    self._send(404, {"error": "404 page not found"})

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, raw: bytes) -> dict[str, Any] | None:
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as exc:
                    self._send(400, {"error": f"invalid JSON: {exc}"})
                    return None

            def do_HEAD(self) -> None:
                digest = self.path.removeprefix("/api/blobs/")
                self.send_response(200 if digest in fake.blobs else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_DELETE(self) -> None:
                body = self._json(self._body())
                if body is None:
                    return
                if self.path != "/api/delete":
                    self._send(404, {"error": "404 page not found"})
                elif body.get("model") not in fake.models:
                    self._send(404, {"error": f"model '{body.get('model')}' not found"})
                else:
                    fake.models.discard(body["model"])
                    fake.deleted.append(body["model"])
                    self._send(200, {})

            def do_POST(self) -> None:
                raw = self._body()
                if self.path.startswith("/api/blobs/"):
                    digest = self.path.removeprefix("/api/blobs/")
                    if digest != "sha256:" + hashlib.sha256(raw).hexdigest():
                        self._send(400, {"error": "digest mismatch"})
                        return
                    fake.blobs[digest] = raw
                    self._send(201, {})
                    return
                if self.path not in ("/api/chat", "/api/create"):
                    self._send(404, {"error": "404 page not found"})
                    return
                body = self._json(raw)
                if body is None:
                    return
                if self.path == "/api/create":
                    status, doc = fake._create(body)
                    self._send(status, doc, ndjson=isinstance(doc, list))
                    return
                fake.requests.append(body)
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if fake.fail_status is not None:
                    self._send(fake.fail_status, {"error": "llama runner process has terminated"})
                    return
                status, doc = fake._chat(body)
                self._send(status, doc, ndjson=isinstance(doc, list))

        return Handler
