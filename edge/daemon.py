"""The edge daemon: answer every input of a source, escalate the doubtful ones.

Per input, cheapest step first::

    source item ─ frame? ─► gate (rate, motion, duplicate) ─► sketch ─► same sketch? ─┐
               └ text ───────────────────────────────────────────────────────────────┴► model
    model ─► parse ─► policy.decide ─► event line (+ safety hooks) ─► escalate (link or event)

``EdgeDaemon`` takes its parts ready-made (backend, source, event log, hooks, metrics,
link, release), so tests inject ``tests.fakes.ScriptedBackend`` and real sources;
``edge.run`` builds them from the configuration (``gemma-edge run``). The model answers
through ``shared.student.Student`` running one release (skill, adapter, safety head,
thresholds), the very code the teacher evaluates releases with. A release pushed by the
teacher link's thread is handed over under a lock and takes effect on the NEXT input;
nothing restarts.

SIGINT/SIGTERM (``handle_signal``, installed by ``edge.run``): the input in progress
finishes, events are flushed, a summary is printed to stderr, exit status 0. Whatever
fails while judging one input (a backend error, a safety head computing no probability,
a field the escalation cannot carry) is logged, written as an ``error`` event and the
input escalated with reason ``judge_error``; an escalation the outbox cannot take is
alerted locally (``not_queued``). No input is dropped, and the daemon goes on.

This module knows no model, pixel or socket details, nor how its parts are built from
the configuration: it runs the parts it is given.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid

from edge.canary import check_release
from edge.escalation import alert_here, build_escalation
from edge.events import EventLog, SafetyHooks, answer_event, error_event, input_record
from edge.gate import AUDIT, FrameGate
from edge.metrics import EdgeMetrics
from edge.settled import SettledSampler
from edge.sketch import RecentSketches, SceneSketcher, to_jpeg
from edge.sources import Item, Source
from edge.summary import RunStats, summary_event, summary_text
from shared.answer import Answer
from shared.backend import Backend, engine_of
from shared.config import EdgeConfig
from shared.errors import BackendError, GemmaEdgeError, LinkError, ModelError, StoreError
from shared.messages import Review
from shared.policy import JUDGE_ERROR, Decision, EscalationPolicy, text_scene_key
from shared.release import Release, default_release
from shared.student import Student

logger = logging.getLogger(__name__)

SAME_SKETCH = "same_sketch"


class _Stop(Exception):
    """Raised by the signal handler while the daemon waits for its source."""


class EdgeDaemon:
    def __init__(
        self,
        config: EdgeConfig,
        backend: Backend,
        source: Source,
        events: EventLog,
        hooks: SafetyHooks | None = None,
        metrics: EdgeMetrics | None = None,
        clock=time.time,
        release: Release | None = None,
    ):
        self.config = config
        self.backend = backend
        self.source = source
        self.events = events
        self.hooks = hooks
        self.metrics = metrics or EdgeMetrics()
        self.clock = clock
        # The release given (gemma-edge run: --release, or a bare skill file), else the
        # bundled default release of the backend's engine (default skill, a head trained on
        # the bundled scenes with this engine's hidden states).
        self.student = Student(
            backend,
            release or default_release(engine_of(backend)),
            config.model.max_new_tokens,
            config.model.answer,
        )
        self.link = None  # set by attach_link
        self.gate = FrameGate(config.gate)
        self.sketcher = SceneSketcher(config.sketch)
        self.policy = EscalationPolicy(config.policy)
        self.stats = RunStats()
        self.adapter_version = 0
        self.multimodal = bool(getattr(backend, "accepts_images", config.model.backend == "ollama"))
        self._stop = threading.Event()
        self._busy = False
        self._pending: Release | None = None
        self._lock = threading.Lock()
        # a text-only model answers the same sketch the same way: repeats are skipped
        self.recent = RecentSketches(0.0 if self.multimodal else config.gate.same_sketch_s)
        self._gated_since_answer = 0
        self.settled = SettledSampler(config.link.settled_share, config.link.settled_per_minute)
        self.metrics.skill_version.set(self.student.skill.version)

    # ------------------------------------------------------------ link wiring
    def attach_link(self, link) -> None:
        """Send every escalation to ``link`` (an ``edge.link.LinkClient``, started by the caller)."""
        self.link = link
        self._report_versions()

    @property
    def release(self) -> Release:
        return self.student.release

    def on_release(self, release: Release) -> None:
        """A new release (from the link's thread); used from the next input on."""
        with self._lock:
            self._pending = release

    def prepare_release(self, release: Release) -> None:
        """Before a pushed release becomes active (link thread): load its adapter, or have
        Ollama build its model, then check it and run its canaries (``edge.canary``);
        raises ModelError (or BackendError) with the reasons if this edge cannot run it as
        the teacher certified it."""
        self.student.prepare(release)
        problems = check_release(self.student, release, self.config.policy)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ModelError("; ".join(problems[:3]) + more)

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

    def _apply_pending(self, now: float) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self.student.use(pending)
        except (GemmaEdgeError, OSError) as exc:
            logger.error(
                "%s not activated (keeping release v%d): %s",
                pending.describe(),
                self.release.version,
                exc,
            )
            return
        # a release's adapter carries the release's version
        self.adapter_version = 0 if pending.adapter_dir is None else pending.version
        self.metrics.adapter_version.set(self.adapter_version)
        self.metrics.skill_version.set(pending.skill.version)
        self._report_versions()
        logger.warning("now running %s", pending.describe())

    @property
    def head_live(self) -> bool:
        """The running release's safety head judges inputs (False: it has none, or this
        backend cannot feed it and the confidence rules decide)."""
        return self.student.head is not None

    def _report_versions(self) -> None:
        if self.link is not None:
            self.link.set_versions(
                self.release.skill.version,
                self.adapter_version,
                self.release.version,
                head_live=self.head_live,
            )

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
        now = self.clock()
        self._apply_pending(now)
        release = self.release
        skill = release.skill
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
            if not self.source.live and item.t is not None:
                policy_now = item.t  # files: cooldowns and budget run on media time
            sketch = self.sketcher.sketch(item.frame)
            text = sketch.text
            key = f"{release.version}/{skill.version}/{self.adapter_version}/{text}"
            if self.recent.seen(key, policy_now) and result.reason != AUDIT:
                self.gate.reject(SAME_SKETCH)
                self.metrics.gated.labels(SAME_SKETCH).inc()
                self._gated_since_answer += 1
                return
            gate_reason = result.reason
            scene_key = sketch.signature
            if self.multimodal:  # a text-only model needs no JPEG unless the frame escalates
                jpeg = to_jpeg(item.frame, self.config.sketch.jpeg_quality)
        else:
            text = item.text or ""
            scene_key = text_scene_key(text)

        base = input_record(now, item, text)
        if sketch is not None:
            base["sketch"] = sketch.to_json()
            base["gate"] = gate_reason
            base["gated_before"] = self._gated_since_answer
            self._gated_since_answer = 0
        self.stats.model_calls += 1
        started = time.perf_counter()
        try:
            check = self.policy.needs_sentence(text, scene_key, policy_now, release.calibration)
            answered = self.student.answer(text, jpeg, check)
        except Exception as exc:  # whatever fails, the input is escalated, never dropped
            self._judge_failed(item, base, text, jpeg, release, exc)
            return
        latency = time.perf_counter() - started
        self.metrics.latency.observe(latency)
        self.metrics.inputs.labels(item.kind).inc()
        self.stats.answered += 1

        gen, answer = answered.generation, answered.answer
        decision = self.policy.decide(answer, text, scene_key, policy_now, release.calibration)
        event = answer_event(base, answered, decision, latency, release, self.adapter_version)
        if decision.suppressed:
            self.stats.suppressed[decision.suppressed] += 1
            self.metrics.suppressed.labels(decision.suppressed).inc()
        if decision.escalate:
            event["case_id"], queued = self._escalate(
                item, text, gen.text, answer, decision, release, jpeg
            )
            if not queued:
                alert_here(event)
        if self.link is not None:
            self.link.count_input(release.version)
            if self._settle(item, text, decision, release):
                event["settled_sent"] = True  # a sampled share goes to the teacher
        self._emit(event, decision.safety_keyword or event["alert"])

    def _settle(self, item, text: str, decision, release) -> bool:
        """A sampled share of what the edge settled itself goes to the teacher; whatever
        fails here is logged and never touches the answer."""
        try:
            now, n = time.time(), self.policy.processed
            msg = self.settled.pick(self.config.edge_id, now, n, text, item.kind, decision, release)
            return msg is not None and self.link.settle(msg)
        except Exception:
            logger.exception("a settled input was not queued for the teacher; going on")
            return False

    def _emit(self, event: dict, safety: bool) -> None:
        """Write the input's event; a safety event goes to the hooks too."""
        event["safety_event"] = safety
        self.events.write(event)
        if safety:
            self.stats.safety_events += 1
            if self.hooks is not None:
                self.hooks.submit(event)

    def _judge_failed(self, item, base, text, jpeg, release, exc: Exception) -> None:
        """The model or its head failed on this input: an ``error`` event, and the input
        escalated with reason ``judge_error`` (alerted here when it cannot be queued)."""
        if isinstance(exc, BackendError):
            self.stats.backend_errors += 1
            self.metrics.backend_errors.inc()
        what = f"{type(exc).__name__}: {exc}"
        logger.error(
            "judging input %d of %s failed, escalating it: %s", item.index, item.source, what
        )
        answer = Answer("", None, None, False, "")
        decision = Decision(True, (JUDGE_ERROR,))
        case_id, queued = self._escalate(item, text, "", answer, decision, release, jpeg, what)
        event = error_event(base, exc, case_id, decision, release)
        if not queued:
            alert_here(event)
        self._emit(event, not queued)

    def _escalate(
        self, item, text, raw, answer, decision, release, jpeg, error: str = ""
    ) -> tuple[str, bool]:
        """Queue the case for the teacher: (case id, queued). Not queued (the outbox is
        full or broken): the caller alerts locally, so the input is never lost."""
        case_id = uuid.uuid4().hex
        self.stats.escalations += 1
        for reason in decision.reasons:
            self.stats.escalation_reasons[reason] += 1
            self.metrics.escalations.labels(reason).inc()
        if self.link is None:
            return case_id, True  # recorded in the events: that is where it goes
        try:
            self._queue(case_id, item, text, raw, answer, decision, release, jpeg, error)
        except (LinkError, StoreError) as exc:  # the outbox is full or broken
            logger.error(
                "escalation %s not queued for the teacher, alerting locally: %s", case_id, exc
            )
            return case_id, False
        except Exception:  # whatever else breaks here, the caller alerts: the input is kept
            logger.exception("escalation %s not queued for the teacher, alerting locally", case_id)
            return case_id, False
        return case_id, True

    def _queue(self, case_id, item, text, raw, answer, decision, release, jpeg, error) -> None:
        if item.frame is None or not self.config.link.send_frames:
            jpeg = None
        elif jpeg is None:  # encoded here, for escalations only, when the model took text
            jpeg = to_jpeg(item.frame, self.config.sketch.jpeg_quality)
        esc = build_escalation(
            case_id,
            self.config.edge_id,
            self.clock(),
            item,
            text,
            raw,
            answer,
            decision,
            release,
            self.adapter_version,
            jpeg is not None,
            error,
        )
        self.link.escalate(esc, jpeg)
        self.metrics.queue_depth.set(self.link.depth())

    # ------------------------------------------------------------ reporting
    def summary_event(self) -> dict:
        return summary_event(
            self.stats,
            self.gate.stats,
            self.source,
            self.release,
            self.adapter_version,
            self.clock(),
        )

    def summary_text(self) -> str:
        return summary_text(self.stats, self.gate.stats, self.source, self.link is not None)
