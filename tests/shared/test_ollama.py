"""The Ollama backend against a real HTTP server that answers like Ollama's /api/chat."""

from __future__ import annotations

import base64
import socket

import pytest

from shared.answer import parse_answer, verdict_confidence
from shared.backend import GenerateRequest
from shared.config import OllamaModelConfig
from shared.errors import BackendError, BackendUnavailable, ModelNotFound
from shared.ollama_backend import OllamaBackend
from shared.skill import Demo
from tests.ollama_server import DEFAULT_REPLY, FakeOllama

DEMOS = (
    Demo(input="A quiet office.", answer="Answer: An empty office.\nSAFETY: no\nCONFIDENCE: 0.9"),
)
REQUEST = GenerateRequest(
    system="Describe the scene.", demos=DEMOS, input="Smoke  over a pan.", image=b"\xff\xd8jpeg"
)


@pytest.fixture()
def server():
    with FakeOllama(models={"gemma3:4b"}) as fake:
        yield fake


def backend(server: FakeOllama, **kw) -> OllamaBackend:
    return OllamaBackend(OllamaModelConfig(host=server.url, **kw), max_new_tokens=64)


@pytest.mark.parametrize("stream", [True, False])
def test_generates_and_sends_what_the_docs_say(server, stream):
    b = backend(server, stream=stream, keep_alive="3m", options={"num_ctx": 2048})
    gen = b.generate(REQUEST)
    b.close()
    assert gen.text == DEFAULT_REPLY
    assert gen.backend == "ollama:gemma3:4b"
    assert gen.tokens == len(gen.logprobs) > 5
    assert 0 < gen.ttft_s <= gen.total_s
    body = server.requests[-1]
    assert body["model"] == "gemma3:4b" and body["stream"] is stream
    assert body["keep_alive"] == "3m"
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["options"] == {
        "temperature": 0,
        "num_ctx": 2048,
        "num_predict": 48,
        "stop": ["\nScene:", "\n\n"],
    }
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert body["messages"][1]["content"] == "Scene: A quiet office."
    assert body["messages"][2]["content"].startswith("Answer: An empty office.")
    last = body["messages"][-1]
    assert last["content"] == "Scene: Smoke over a pan."  # whitespace as shared.skill renders it
    assert base64.b64decode(last["images"][0]) == b"\xff\xd8jpeg"
    answer = parse_answer(gen.text, verdict_confidence(gen.logprobs))
    assert answer.format_ok and answer.safety is True and answer.confidence == 0.8
    assert answer.prob_confidence == pytest.approx(0.7 / 0.95)


def test_budget_stop_and_no_logprobs(server):
    server.reply = "Answer: One.\n\nScene: more text"
    b = backend(server, logprobs=False)
    gen = b.generate(GenerateRequest(system="s", input="x", max_new_tokens=500))
    assert gen.text == "Answer: One."
    assert gen.logprobs is None
    assert "logprobs" not in server.requests[-1]
    assert server.requests[-1]["options"]["num_predict"] == 64  # the backend's own cap
    gen = b.generate(GenerateRequest(system="s", input="x", max_new_tokens=2))
    assert gen.tokens == 2 and gen.text == "Answer:"


def test_missing_model_is_model_not_found(server):
    b = backend(server, model="gemma3:27b")
    with pytest.raises(ModelNotFound) as err:
        b.generate(REQUEST)
    assert server.url in str(err.value) and "gemma3:27b" in str(err.value)
    assert "ollama pull gemma3:27b" in str(err.value)


def test_server_errors_are_backend_errors(server):
    server.fail_status = 500
    with pytest.raises(BackendError, match="llama runner process has terminated") as err:
        backend(server).generate(REQUEST)
    assert not isinstance(err.value, (BackendUnavailable, ModelNotFound))
    server.fail_status = None
    server.stream_error = "an error was encountered while running the model"
    with pytest.raises(BackendError, match="while running the model"):
        backend(server).generate(REQUEST)


def test_down_server_and_timeout_are_unavailable(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = OllamaBackend(OllamaModelConfig(host=f"http://127.0.0.1:{port}"), 16)
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        down.generate(REQUEST)
    server.delay_s = 1.0
    slow = backend(server, timeout_s=0.2)
    with pytest.raises(BackendUnavailable, match="timed out"):
        slow.generate(REQUEST)
