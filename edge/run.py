"""``gemma-edge run``: build the configured parts and run ``edge.daemon.EdgeDaemon``.

    gemma-edge run --source scenes --config edge.yaml
    gemma-edge run --release teacher-home/releases/v3 --source notes.txt

``load_run_config`` applies the command-line overrides to the YAML configuration;
``start_backend`` builds the configured model backend (imported lazily: torch loads only
when needed); ``make_link`` builds the teacher link and wires it to the daemon's
callbacks; ``run(args)`` opens the source, events, hooks and metrics, installs the
SIGINT/SIGTERM handlers, runs the daemon, prints its summary and closes everything.

This module knows how the parts are built and torn down, not what the daemon does with
an input (``edge.daemon``) nor how any part works inside.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from edge.daemon import EdgeDaemon
from edge.events import open_events
from edge.metrics import EdgeMetrics
from edge.sources import open_source
from edge.summary import status_doc
from shared.backend import Backend
from shared.backend_factory import make_backend
from shared.config import EdgeConfig, load_config
from shared.errors import GemmaEdgeError
from shared.release import load_release, skill_release
from shared.skill import load_skill


def start_backend(config: EdgeConfig) -> Backend:
    """The configured backend (``shared.backend.make_backend``), with ``model.adapter``
    loaded and active when one is set."""
    backend = make_backend(config.model)
    if config.model.adapter is not None:
        backend.load_adapter("start", config.model.adapter)
        backend.set_adapter("start")
    return backend


def make_link(config: EdgeConfig, daemon: EdgeDaemon):
    """The teacher link when ``link.teacher`` is set, wired to the daemon's callbacks.

    The release last pushed to ``state_dir`` is taken up first, so a restarted edge keeps
    what the teacher gave it.
    """
    if not config.link.teacher:
        return None
    from edge.link import LinkClient
    from edge.updates import active_release

    pushed = active_release(config.state_dir)  # what the teacher pushed before a restart
    if pushed is not None:
        daemon.on_release(pushed)
    link = LinkClient(
        config.link,
        config.edge_id,
        config.state_dir,
        on_review=daemon.on_review,
        on_release=daemon.on_release,
        prepare_release=daemon.prepare_release,
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
    parser.add_argument(
        "--backend",
        choices=["llamacpp", "embedded", "torch", "ollama"],
        help="override model.backend",
    )
    parser.add_argument(
        "--answer",
        choices=["always", "when_needed"],
        help="override model.answer (when_needed: judge from the prefill, the sentence "
        "only for alerts, escalations and audits)",
    )
    parser.add_argument("--skill", help="skill file (overrides the config's skill)")
    parser.add_argument(
        "--release",
        metavar="DIR",
        help="run this release folder (skill, adapter, safety head, thresholds), e.g. "
        "<teacher home>/releases/v3; default: the bundled release, or the config's skill",
    )
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
    engine = "embedded" if args.backend == "torch" else args.backend
    model = {k: v for k, v in (("backend", engine), ("answer", args.answer)) if v}
    if model:
        updates["model"] = config.model.model_copy(update=model)
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
    release = load_release(Path(args.release)) if getattr(args, "release", None) else None
    if release is None and config.skill is not None:  # runs bare: no head, no thresholds
        release = skill_release(load_skill(config.skill))
    source = open_source(args.source, config.source, config.gate.max_pixels)
    events = hooks = metrics = link = None
    try:
        events, hooks = open_events(config.events, edge_id=config.edge_id)
        metrics = EdgeMetrics()
        if hooks.mqtt is not None:
            hooks.mqtt.on_drop = metrics.mqtt_dropped.inc
        if config.metrics.port is not None:
            metrics.serve(config.metrics.host, config.metrics.port)
        backend = backend or start_backend(config)
        daemon = EdgeDaemon(config, backend, source, events, hooks, metrics, release=release)
        if hooks.mqtt is not None:
            hooks.mqtt.status = lambda: status_doc(daemon)
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
    finally:
        source.close()
        if backend is not None:
            backend.close()
        if link is not None:
            link.stop()
        if hooks is not None:
            hooks.close()
        if metrics is not None:
            metrics.close()
        if events is not None:
            events.close()
    return 0
