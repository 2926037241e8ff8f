"""Event output: one JSON line per processed input, plus hooks for safety events.

``EventLog`` writes JSON lines to stdout or to a file that rotates at ``rotate_mb``
(``events.jsonl`` -> ``events.jsonl.1`` -> ... up to ``keep`` files), flushing each
line so a crash loses at most the input in progress. ``SafetyHooks`` hands each
safety event to an external command (the event JSON on its stdin) and/or publishes
it on a ZeroMQ PUB socket (topic ``safety``), from a background thread so a slow
hook never stalls the daemon; events that do not fit the queue are dropped with a
count (the JSONL line is always written). ``input_record``, ``answer_event`` and
``error_event`` say which fields an event line holds.

This module knows nothing about models, policy or sources: records in, lines out.
"""

from __future__ import annotations

import logging
import queue
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from edge.jsonline import dumps
from shared.config import EventsConfig
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 10.0
PUB_TOPIC = b"safety"


class EventLog:
    """Thread-safe JSONL writer with size-based rotation; ``path=None`` writes to ``stream``."""

    def __init__(self, path: Path | None, rotate_mb: float = 64.0, keep: int = 5, stream=None):
        self.path = Path(path) if path is not None else None
        self.max_bytes = int(rotate_mb * 2**20)
        self.keep = keep
        self.lines = 0
        self._lock = threading.Lock()
        self._fh: IO[str]
        if self.path is None:
            self._fh = stream or sys.stdout
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    "events", [("events.path", str(self.path), exc.strerror or str(exc))]
                ) from None

    def write(self, event: dict) -> None:
        line = dumps(event) + "\n"
        with self._lock:
            if self.path is not None and self._fh.tell() + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._fh.flush()
            self.lines += 1

    def _rotate(self) -> None:
        assert self.path is not None
        self._fh.close()
        for n in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        extra = self.path.with_name(f"{self.path.name}.{self.keep + 1}")
        extra.unlink(missing_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")
        logger.info("rotated %s", self.path)

    def close(self) -> None:
        with self._lock:
            self._fh.flush()
            if self.path is not None:
                self._fh.close()


class SafetyHooks:
    """Runs ``safety_command`` and/or publishes on ``safety_pub`` for each safety event."""

    def __init__(
        self, command: str | None, pub_endpoint: str | None, max_queue: int = 256, mqtt=None
    ):
        self.mqtt = mqtt  # edge.mqtt.MqttSink: its own bounded queue and thread
        self.command = shlex.split(command) if command else None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._pub = None
        self._ctx = None
        if pub_endpoint:
            import zmq

            self._ctx = zmq.Context()
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            try:
                self._pub.bind(pub_endpoint)
            except zmq.ZMQError as exc:
                self._pub.close()
                self._ctx.term()
                raise ConfigError(
                    "events", [("events.safety_pub", pub_endpoint, f"cannot bind: {exc}")]
                ) from None
        self._queue: queue.Queue[dict | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        if self.command or self._pub is not None:
            self._thread = threading.Thread(target=self._run, name="safety-hooks", daemon=True)
            self._thread.start()

    @property
    def active(self) -> bool:
        return self._thread is not None or self.mqtt is not None

    def submit(self, event: dict) -> None:
        if self.mqtt is not None:
            self.mqtt.submit(event)
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            logger.warning("safety hook queue full; event %s not handed to hooks", event.get("seq"))

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            data = dumps(event).encode()
            if self._pub is not None:
                self._pub.send_multipart([PUB_TOPIC, data])
                self.sent += 1
            if self.command:
                self._run_command(data)

    def _run_command(self, data: bytes) -> None:
        try:
            done = subprocess.run(
                self.command, input=data, capture_output=True, timeout=HOOK_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.failed += 1
            logger.error("safety command %s failed: %s", self.command, exc)
            return
        if done.returncode != 0:
            self.failed += 1
            logger.error(
                "safety command %s exited %d: %s",
                self.command,
                done.returncode,
                done.stderr.decode(errors="replace").strip()[-500:],
            )
        else:
            self.sent += 1

    def close(self, timeout: float = HOOK_TIMEOUT_S) -> None:
        """Deliver what is queued (up to ``timeout``), then close the socket."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        if self._pub is not None:
            self._pub.close(linger=0)
            self._ctx.term()
            self._pub = None
        if self.mqtt is not None:
            self.mqtt.close()
            self.mqtt = None


def open_events(
    config: EventsConfig, stream=None, edge_id: str = "edge"
) -> tuple[EventLog, SafetyHooks]:
    log = EventLog(config.path, config.rotate_mb, config.keep, stream)
    try:
        mqtt = None
        if config.mqtt is not None:
            from edge.mqtt import MqttSink

            mqtt = MqttSink(config.mqtt, edge_id)
        hooks = SafetyHooks(config.safety_command, config.safety_pub, mqtt=mqtt)
    except ConfigError:
        log.close()
        raise
    return log, hooks


# ---------------------------------------------------------------- what an event line holds
def input_record(now: float, item, text: str) -> dict:
    """The fields every event about one input starts with."""
    return {
        "time": now,
        "source": item.source,
        "index": item.index,
        "id": item.id,
        "kind": item.kind,
        "input": text,
    }


def answer_event(
    base: dict, answered, decision, latency: float, release, adapter_version: int
) -> dict:
    """The ``answer`` event: what the student said and judged, and what the policy decided."""
    gen, answer = answered.generation, answered.answer
    return {
        "type": "answer",
        **base,
        "answer": answer.text,
        "raw": gen.text,
        "safety": answer.safety,
        "confidence": answer.confidence,
        "prob_confidence": answer.prob_confidence,
        "p_unsafe": None if answer.p_unsafe is None else round(answer.p_unsafe, 4),
        "alert": decision.alert,
        "format_ok": answer.format_ok,
        "decision": decision.to_json(),
        "case_id": None,
        "latency_s": round(latency, 4),
        "tokens": gen.tokens,
        "sentence": answered.sentence,  # False: judged from the prefill (answer: when_needed)
        "skill_version": release.skill.version,
        "adapter_version": adapter_version,
        "release": release.version,
    }


def error_event(base: dict, exc: Exception, case_id: str, decision, release) -> dict:
    """The ``error`` event of an input that could not be judged (it was escalated)."""
    return {
        "type": "error",
        **base,
        "error": str(exc)[:2000],
        "error_type": type(exc).__name__,
        "case_id": case_id,
        "decision": decision.to_json(),
        "alert": False,
        "release": release.version,
    }
