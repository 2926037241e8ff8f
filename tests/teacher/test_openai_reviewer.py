"""The OpenAI-compatible teacher against a real HTTP server that answers as the documented
chat-completions API does, over a real SQLite store: frames as images, a bound on
requests in flight, 429s and 5xx retried, timeouts, and no case lost when it fails."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from shared.backend import GenerateRequest
from shared.config import OpenAIModelConfig
from shared.errors import BackendError, BackendUnavailable, ModelNotFound
from shared.messages import Escalation
from shared.openai_backend import OpenAIBackend
from shared.skill import default_skill
from shared.teacher_config import TeacherConfig
from teacher.data.store import CaseStore
from teacher.serve.review import BackendReviewer, ReviewWorker, make_reviewer
from tests.openai_server import FakeOpenAI, last_user_text

MODEL = "gemma-3-27b-it"


def backend(server: FakeOpenAI, **kw) -> OpenAIBackend:
    cfg = {"base_url": server.url, "model": MODEL, "retry_initial_s": 0.01, **kw}
    return OpenAIBackend(OpenAIModelConfig(**cfg), max_new_tokens=64)


def verdict(body: dict) -> str:
    unsafe = "smoke" in last_user_text(body).lower()
    sentence = "Smoke rises from a pan." if unsafe else "A quiet room."
    return f"Answer: {sentence}\nSAFETY: {'yes' if unsafe else 'no'}\nCONFIDENCE: 0.9"


def add(store: CaseStore, texts: list[str], frame: bytes | None = None) -> list[str]:
    cases = [Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=time.time(),
                        source="cam", input=t, has_frame=frame is not None)
             for t in texts]  # fmt: skip
    store.add_cases([(c, frame) for c in cases])
    return [c.case_id for c in cases]


def request(text: str, image: bytes | None = None) -> GenerateRequest:
    skill = default_skill()
    return GenerateRequest(system=skill.instructions, demos=skill.demos, input=text,
                           image=image, max_new_tokens=96)  # fmt: skip


def test_a_request_is_the_skill_as_chat_turns_and_a_frame_is_an_image_part():
    with FakeOpenAI(reply=verdict) as server:
        b = backend(server, api_key="sk-test")
        gen = b.generate(request("Smoke is rising from a pan.", image=b"\xff\xd8jpeg"))
        b.close()
    assert (
        gen.text.startswith("Answer: Smoke") and gen.tokens > 0 and gen.backend == f"openai:{MODEL}"
    )
    body = server.requests[0]
    assert body["stream"] is False and body["temperature"] == 0 and body["max_tokens"] == 64
    assert len(body["stop"]) <= 4
    turns = body["messages"]
    assert turns[0]["role"] == "system" and turns[0]["content"] == default_skill().instructions
    assert [t["role"] for t in turns[1:3]] == ["user", "assistant"]  # the demonstrations
    text, image = turns[-1]["content"]
    assert text == {"type": "text", "text": "Scene: Smoke is rising from a pan."}
    url = image["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == b"\xff\xd8jpeg"


def test_the_reviewer_reviews_stored_cases_with_their_frames(tmp_path):
    store = CaseStore(tmp_path / "cases.sqlite")
    ids = add(store, ["Smoke is rising from a pan.", "A cat sleeps."], frame=b"\xff\xd8f")
    cfg = TeacherConfig(home=tmp_path / "home")
    with FakeOpenAI(reply=verdict) as server:
        cfg.reviewer.backend = "openai"
        cfg.reviewer.model.openai = OpenAIModelConfig(base_url=server.url, model=MODEL)
        reviewer = make_reviewer(cfg, store)
        delivered = []
        worker = ReviewWorker(store, reviewer, delivered.extend, batch_size=8)
        assert worker.step() == 2
        reviewer.backend.close()
    assert {r.case_id: r.safety for r in delivered} == {ids[0]: True, ids[1]: False}
    assert reviewer.name == f"backend:openai:{MODEL}"
    assert store.count("reviewed") == 2
    assert all(isinstance(b["messages"][-1]["content"], list) for b in server.requests)


def test_at_most_max_in_flight_requests_at_once_and_they_overlap():
    with FakeOpenAI(reply=verdict, delay_s=0.1) as server:
        b = backend(server, max_in_flight=3)
        gens = b.generate_batch([request(f"scene {i}") for i in range(9)])
        b.close()
    assert len(gens) == 9 and server.max_concurrent == 3


def test_a_429_waits_for_retry_after_and_a_5xx_is_retried():
    with FakeOpenAI(reply=verdict, fail=[429, 503, 500], retry_after=0.2) as server:
        b = backend(server)
        t0 = time.perf_counter()
        gen = b.generate(request("Smoke is rising."))
        waited = time.perf_counter() - t0
        b.close()
    assert gen.text.startswith("Answer:") and b.retries == 3 and len(server.requests) == 4
    assert waited >= 0.2  # the server's Retry-After, not the 10 ms back-off


def test_errors_name_the_server_and_never_show_the_key():
    with FakeOpenAI(api_key="right") as server:
        b = backend(server, api_key="sk-wrong-secret")
        with pytest.raises(BackendError, match="refused the API key") as refused:
            b.generate(request("x"))
        assert "sk-wrong-secret" not in str(refused.value)
        b.close()
        b = backend(server, api_key="right", model="gemma-9000")
        with pytest.raises(ModelNotFound, match="does not exist"):
            b.generate(request("x"))
        b.close()


def test_a_timeout_and_an_engine_that_stays_down_raise_unavailable():
    with FakeOpenAI(fail=["hang"]) as server:
        b = backend(server, timeout_s=0.3, max_retries=0)
        with pytest.raises(BackendUnavailable, match="ReadTimeout"):
            b.generate(request("x"))
        b.close()
    with FakeOpenAI(fail=[500] * 3) as server:
        b = backend(server, max_retries=2)
        with pytest.raises(BackendUnavailable, match="failed 3 time"):
            b.generate(request("x"))
        b.close()


def test_no_case_is_lost_while_the_engine_fails_and_all_are_reviewed_once_it_answers(tmp_path):
    """A batch with a failed request goes back to the store whole; the cases wait there
    and are all reviewed once the engine answers."""
    store = CaseStore(tmp_path / "cases.sqlite")
    ids = add(store, [f"scene {i} smoke" if i % 2 else f"scene {i}" for i in range(12)])
    with FakeOpenAI(reply=verdict, fail=[500] * 5) as server:
        b = backend(server, max_retries=1, max_in_flight=4)
        delivered = []
        worker = ReviewWorker(store, BackendReviewer(b), delivered.extend, batch_size=4)
        worker._stop.set()  # no back-off sleep between steps in the test
        steps = [worker.step() for _ in range(10)]
        b.close()
    assert 0 in steps  # at least one batch failed and went back
    assert sorted(r.case_id for r in delivered) == sorted(ids)
    assert store.count("reviewed") == 12 and store.count("new") == 0


def test_a_failed_request_sends_only_its_case_back_the_others_are_reviewed(tmp_path):
    store = CaseStore(tmp_path / "cases.sqlite")
    ids = add(store, [f"scene {i}" for i in range(4)])
    with FakeOpenAI(reply=verdict, fail=[500]) as server:
        b = backend(server, max_retries=0, max_in_flight=4)
        delivered = []
        worker = ReviewWorker(store, BackendReviewer(b), delivered.extend, batch_size=4)
        assert worker.step() == 4 and len(delivered) == 3  # three reviewed, one waits
        assert store.count("new") == 1 and store.count("unreviewable") == 0
        assert worker.step() == 1
        b.close()
    assert sorted(r.case_id for r in delivered) == sorted(ids) and len(server.requests) == 5
