"""``gemma-edge run``: answer every input of a source, escalate the doubtful ones.

Per input, cheapest step first::

    source item ─ frame? ─► gate (rate, motion, duplicate) ─► sketch ─► same sketch? ─┐
               └ text ───────────────────────────────────────────────────────────────┴► model
    model ─► parse ─► policy.decide ─► event line (+ safety hooks) ─► escalate (link or event)

``EdgeDaemon`` takes its parts ready-made (backend, source, event log, hooks, metrics,
link), so tests inject ``tests.fakes.ScriptedBackend`` and real sources. ``make_backend``
builds the configured backend; ``run(args)`` is the thin CLI entry. Skill and adapter
updates (skill file changed, or pushed by the teacher link's thread) are handed over
under a lock and take effect on the NEXT input; nothing restarts.

SIGINT/SIGTERM: the input in progress finishes, events are flushed, a summary is
printed to stderr, exit status 0. A backend error on one input is logged, written as
an ``error`` event, counted, and the daemon goes on.

This module knows no model, pixel or socket details: it wires the parts together.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge.events import EventLog, SafetyHooks, open_events
from edge.gate import AUDIT, FrameGate
from edge.metrics import EdgeMetrics
from edge.policy import EscalationPolicy
from edge.sketch import SceneSketcher, to_jpeg
from edge.skillfile import ActiveSkill
from edge.sources import Item, Source, open_source
from shared.answer import parse_answer, verdict_confidence
from shared.backend import Backend, GenerateRequest
from shared.config import EdgeConfig, load_config
from shared.errors import BackendError, GemmaEdgeError, LinkError, StoreError
from shared.messages import Escalation, Review
from shared.skill import Skill

logger = logging.getLogger(__name__)

SAME_SKETCH = "same_sketch"


class _Stop(Exception):
    """Raised by the signal handler while the daemon waits for its source."""


@dataclass
class RunStats:
    items: int = 0  # taken from the source
    model_calls: int = 0
    answered: int = 0
    backend_errors: int = 0
    escalations: int = 0
    escalation_reasons: Counter = field(default_factory=Counter)
    suppressed: Counter = field(default_factory=Counter)
    safety_events: int = 0
    reviews: int = 0
    started: float = field(default_factory=time.monotonic)


class EdgeDaemon:
    def __init__(
        self,
        config: EdgeConfig,
        backend: Backend,
        source: Source,
        events: EventLog,
        hooks: SafetyHooks | None = None,
        metrics: EdgeMetrics | None = None,
        skill: ActiveSkill | None = None,
        clock=time.time,
    ):
        self.config = config
        self.backend = backend
        self.source = source
        self.events = events
        self.hooks = hooks
        self.metrics = metrics or EdgeMetrics()
        self.skill = skill or ActiveSkill(config.skill)
        self.clock = clock
        self.link = None  # set by attach_link
        self.gate = FrameGate(config.gate)
        self.sketcher = SceneSketcher(config.sketch)
        self.policy = EscalationPolicy(config.policy)
        self.stats = RunStats()
        self.adapter_version = 0
        self.multimodal = bool(getattr(backend, "accepts_images", config.model.backend == "ollama"))
        self._stop = threading.Event()
        self._busy = False
        self._pending_adapter: tuple[int, Path] | None = None
        self._lock = threading.Lock()
        self._last_sketch: str | None = None
        self._gated_since_answer = 0
        self.metrics.skill_version.set(self.skill.version)

    # ------------------------------------------------------------ link wiring
    def attach_link(self, link) -> None:
        """Send every escalation to ``link`` (an ``edge.link.LinkClient``, started by the caller)."""
        self.link = link
        link.set_versions(self.skill.version, self.adapter_version)

    def on_skill(self, skill: Skill) -> None:
        """A new skill (from the link's thread); used from the next input on."""
        self.skill.push(skill)

    def on_adapter(self, version: int, path: Path) -> None:
        """A new adapter (from the link's thread); loaded before the next input."""
        with self._lock:
            self._pending_adapter = (version, Path(path))

    def on_review(self, review: Review) -> None:
        self.stats.reviews += 1
        self.events.write(
            {
                "type": "review",
                "time": self.clock(),
                "case_id": review.case_id,
                "safety": review.safety,
                "answer": review.answer,
                "keywords": review.keywords,
                "reviewer": review.reviewer,
            }
        )

    def _apply_pending_adapter(self) -> None:
        with self._lock:
            pending, self._pending_adapter = self._pending_adapter, None
        if pending is None:
            return
        version, path = pending
        name = f"v{version}"
        try:
            self.backend.load_adapter(name, path)
            self.backend.set_adapter(name)
        except (AttributeError, GemmaEdgeError, OSError) as exc:
            logger.error("adapter v%d from %s not activated (keeping v%d): %s",
                         version, path, self.adapter_version, exc)  # fmt: skip
            return
        self.adapter_version = version
        self.metrics.adapter_version.set(version)
        logger.warning("adapter v%d active", version)

    # ------------------------------------------------------------ the loop
    def stop(self) -> None:
        """Finish the input in progress, then return from ``run``. Safe from any thread."""
        self._stop.set()

    def handle_signal(self, signum, frame) -> None:
        logger.warning("signal %d: finishing the current input, then stopping", signum)
        self._stop.set()
        if not self._busy:
            raise _Stop()

    def run(self, max_inputs: int | None = None, progress: bool = True) -> RunStats:
        from tqdm import tqdm

        bar = tqdm(
            total=min(filter(None, (self.source.total, max_inputs)), default=None),
            unit="input",
            disable=None if progress else True,
            file=sys.stderr,
            desc=self.source.name[-40:],
        )
        self.stats.started = time.monotonic()
        try:
            for item in self.source:
                self._busy = True
                try:
                    self._handle(item)
                except _Stop:
                    raise
                except Exception:  # one bad input must not end a long-running daemon
                    logger.exception("input %d of %s failed", item.index, item.source)
                finally:
                    self._busy = False
                    self.stats.items += 1
                    bar.update()
                if self._stop.is_set() or (max_inputs and self.stats.items >= max_inputs):
                    break
        except _Stop:
            pass
        finally:
            self._busy = True  # a second signal during shutdown only sets the flag
            bar.close()
            self.source.close()
            self.events.write(self.summary_event())
        return self.stats

    def _handle(self, item: Item) -> None:
        self._apply_pending_adapter()
        now = self.clock()
        skill = self.skill.current(now)
        sketch = jpeg = None
        gate_reason = None
        policy_now = now
        if item.frame is not None:
            self.metrics.frames.inc()
            result = self.gate.check(item.frame, item.t)
            if not result.passed:
                self.metrics.gated.labels(result.reason).inc()
                self._gated_since_answer += 1
                return
            sketch = self.sketcher.sketch(item.frame)
            text = sketch.text
            if (
                not self.multimodal
                and self.config.gate.skip_same_sketch
                and text == self._last_sketch
                and result.reason != AUDIT
            ):
                self.gate.reject(SAME_SKETCH)
                self.metrics.gated.labels(SAME_SKETCH).inc()
                self._gated_since_answer += 1
                return
            self._last_sketch = text
            gate_reason = result.reason
            scene_key = sketch.signature
            if self.multimodal or (self.link is not None and self.config.link.send_frames):
                jpeg = to_jpeg(item.frame, self.config.sketch.jpeg_quality)
            if not self.source.live and item.t is not None:
                policy_now = item.t  # files: cooldown and budget run on media time
        else:
            text = item.text or ""
            scene_key = "text:" + " ".join(text.lower().split())

        request = GenerateRequest(
            system=skill.instructions,
            input=text,
            demos=skill.demos,
            image=jpeg if self.multimodal else None,
            max_new_tokens=self.config.model.max_new_tokens,
        )
        base = {
            "time": now,
            "source": item.source,
            "index": item.index,
            "id": item.id,
            "kind": item.kind,
            "input": text,
        }
        if sketch is not None:
            base["sketch"] = sketch.to_json()
            base["gate"] = gate_reason
            base["gated_before"] = self._gated_since_answer
            self._gated_since_answer = 0
        self.stats.model_calls += 1
        started = time.perf_counter()
        try:
            gen = self.backend.generate(request)
        except BackendError as exc:
            self.stats.backend_errors += 1
            self.metrics.backend_errors.inc()
            logger.error("backend failed on input %d of %s: %s", item.index, item.source, exc)
            self.events.write({"type": "error", **base, "error": str(exc)})
            return
        latency = time.perf_counter() - started
        self.metrics.latency.observe(latency)
        self.metrics.inputs.labels(item.kind).inc()
        self.stats.answered += 1

        answer = parse_answer(gen.text, verdict_confidence(gen.logprobs))
        decision = self.policy.decide(answer, text, scene_key, policy_now)
        event = {
            "type": "answer",
            **base,
            "answer": answer.text,
            "raw": gen.text,
            "safety": answer.safety,
            "confidence": answer.confidence,
            "prob_confidence": answer.prob_confidence,
            "format_ok": answer.format_ok,
            "decision": decision.to_json(),
            "case_id": None,
            "latency_s": round(latency, 4),
            "tokens": gen.tokens,
            "skill_version": skill.version,
            "adapter_version": self.adapter_version,
        }
        if decision.suppressed:
            self.stats.suppressed[decision.suppressed] += 1
            self.metrics.suppressed.labels(decision.suppressed).inc()
        if decision.escalate:
            event["case_id"] = self._escalate(item, text, gen.text, answer, decision, skill, jpeg)
        safety = decision.safety_keyword or answer.safety is True
        event["safety_event"] = safety
        self.events.write(event)
        if safety:
            self.stats.safety_events += 1
            if self.hooks is not None:
                self.hooks.submit(event)

    def _escalate(self, item, text, raw, answer, decision, skill, jpeg) -> str:
        case_id = uuid.uuid4().hex
        self.stats.escalations += 1
        for reason in decision.reasons:
            self.stats.escalation_reasons[reason] += 1
            self.metrics.escalations.labels(reason).inc()
        if self.link is None:
            return case_id
        esc = Escalation(
            case_id=case_id,
            edge_id=self.config.edge_id,
            created_at=self.clock(),
            source=item.source[-1024:],
            kind=item.kind,
            input=text[:16_384],
            answer=raw[:16_384],
            safety=answer.safety,
            confidence=answer.best_confidence,
            reasons=list(decision.reasons),
            safety_keyword=decision.safety_keyword,
            skill_version=skill.version,
            adapter_version=self.adapter_version,
            has_frame=jpeg is not None,
        )
        try:
            self.link.set_versions(skill.version, self.adapter_version)
            self.link.escalate(esc, jpeg)
            self.metrics.queue_depth.set(self.link.depth())
        except (LinkError, StoreError) as exc:
            logger.error("escalation %s not queued for the teacher: %s", case_id, exc)
        return case_id

    # ------------------------------------------------------------ reporting
    def summary_event(self) -> dict:
        s, g = self.stats, self.gate.stats
        return {
            "type": "summary",
            "time": self.clock(),
            "source": self.source.name,
            "elapsed_s": round(time.monotonic() - s.started, 3),
            "inputs": s.items,
            "frames": g.to_json(),
            "model_calls": s.model_calls,
            "answered": s.answered,
            "backend_errors": s.backend_errors,
            "escalations": s.escalations,
            "escalation_reasons": dict(s.escalation_reasons),
            "suppressed": dict(s.suppressed),
            "safety_events": s.safety_events,
            "bad_inputs": self.source.bad,
            "skill_version": self.skill.version,
            "adapter_version": self.adapter_version,
        }

    def summary_text(self) -> str:
        s, g = self.stats, self.gate.stats
        lines = [
            f"gemma-edge: {s.items} inputs from {self.source.name} in "
            f"{time.monotonic() - s.started:.1f} s; {s.model_calls} model calls, "
            f"{s.answered} answered"
        ]
        if g.seen:
            gated = ", ".join(f"{k} {v}" for k, v in g.gated.items() if v) or "none"
            lines.append(
                f"  frames: {g.seen} seen, {g.gated_total} gated ({gated}), "
                f"{g.passed} passed ({g.audits} audits)"
            )
        reasons = ", ".join(f"{k} {v}" for k, v in s.escalation_reasons.most_common())
        held = ", ".join(f"{k} {v}" for k, v in s.suppressed.items())
        where = "queued for the teacher" if self.link is not None else "recorded in the events"
        lines.append(
            f"  escalations: {s.escalations} {where}"
            + (f" (by reason: {reasons})" if reasons else "")
            + (f"; held back: {held}" if held else "")
        )
        lines.append(
            f"  safety events: {s.safety_events}; backend errors: {s.backend_errors}; "
            f"bad inputs skipped: {self.source.bad}"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------- construction
def make_backend(config: EdgeConfig) -> Backend:
    """The configured backend (imported lazily: torch loads only when needed)."""
    try:
        if config.model.backend == "ollama":
            from shared.ollama_backend import OllamaBackend

            backend = OllamaBackend(config.model.ollama, config.model.max_new_tokens)
        else:
            from shared.embedded import EmbeddedBackend

            backend = EmbeddedBackend(config.model.embedded)
    except ImportError as exc:
        raise GemmaEdgeError(
            f"the {config.model.backend} backend is not installed: {exc}"
        ) from None
    if config.model.adapter is not None:
        if not hasattr(backend, "load_adapter"):
            raise GemmaEdgeError(f"model.adapter is set but the {backend.name} backend has none")
        backend.load_adapter("start", config.model.adapter)
        backend.set_adapter("start")
    return backend


def make_link(config: EdgeConfig, daemon: EdgeDaemon):
    """The teacher link when ``link.teacher`` is set, wired to the daemon's callbacks."""
    if not config.link.teacher:
        return None
    from edge.link import LinkClient

    link = LinkClient(
        config.link,
        config.edge_id,
        config.state_dir,
        on_review=daemon.on_review,
        on_skill=daemon.on_skill,
        on_adapter=daemon.on_adapter,
    )
    daemon.attach_link(link)
    link.start()
    return link


def add_arguments(parser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help="webcam index (0), rtsp:// or http(s):// URL, video file, image folder or glob, "
        "text file (one input per line; .jsonl: an 'input' field per line), - for stdin, "
        "or 'scenes' for the bundled sample scenes",
    )
    parser.add_argument("--config", help="edge YAML configuration (default: built-in defaults)")
    parser.add_argument("--events", help="JSONL events file (default: events.path, else stdout)")
    parser.add_argument(
        "--max-inputs", type=int, default=None, help="stop after this many inputs (frames/lines)"
    )
    parser.add_argument("--realtime", action="store_true", help="play video files in real time")
    parser.add_argument("--backend", choices=["embedded", "ollama"], help="override model.backend")
    parser.add_argument("--skill", help="skill file (overrides the config's skill)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_run_config(args) -> EdgeConfig:
    config = load_config(args.config, EdgeConfig)
    updates: dict = {}
    if args.realtime:
        updates["source"] = config.source.model_copy(update={"realtime": True})
    if args.events:
        path = None if args.events == "-" else Path(args.events)
        updates["events"] = config.events.model_copy(update={"path": path})
    if args.backend:
        updates["model"] = config.model.model_copy(update={"backend": args.backend})
    if args.skill:
        updates["skill"] = Path(args.skill)
    if args.metrics_port is not None:
        updates["metrics"] = config.metrics.model_copy(update={"port": args.metrics_port})
    return config.model_copy(update=updates)


def run(args, backend: Backend | None = None) -> int:
    """The ``gemma-edge run`` command; ``backend`` replaces the configured one (tests)."""
    config = load_run_config(args)
    if args.max_inputs is not None and args.max_inputs < 1:
        raise GemmaEdgeError(f"--max-inputs must be at least 1, not {args.max_inputs}")
    skill = ActiveSkill(config.skill)
    source = open_source(args.source, config.source)
    events = hooks = metrics = link = None
    try:
        events, hooks = open_events(config.events)
        metrics = EdgeMetrics()
        if config.metrics.port is not None:
            metrics.serve(config.metrics.host, config.metrics.port)
        backend = backend or make_backend(config)
        daemon = EdgeDaemon(config, backend, source, events, hooks, metrics, skill)
        link = make_link(config, daemon)
        previous = {
            sig: signal.signal(sig, daemon.handle_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            daemon.run(args.max_inputs, progress=not args.no_progress)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print(daemon.summary_text(), file=sys.stderr)
        backend.close()
    finally:
        source.close()
        if link is not None:
            link.stop()
        if hooks is not None:
            hooks.close()
        if metrics is not None:
            metrics.close()
        if events is not None:
            events.close()
    return 0
