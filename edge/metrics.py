"""Prometheus metrics of the edge daemon, served on a local HTTP port.

Each ``EdgeMetrics`` has its own ``CollectorRegistry`` (so tests and several daemons
in one process do not collide). ``serve(host, port)`` starts prometheus-client's HTTP
server in a thread; port 0 picks a free port (``.port`` tells which).

    gemma_edge_inputs_total{kind}                 inputs answered (text / frame)
    gemma_edge_frames_total                       frames read from the source
    gemma_edge_gated_frames_total{reason}         frames skipped (rate, no_motion, ...)
    gemma_edge_escalations_total{reason}          escalations sent, one count per reason
    gemma_edge_escalations_suppressed_total{why}  qualified but held back (cooldown, budget)
    gemma_edge_backend_errors_total               inputs the backend failed on
    gemma_edge_latency_seconds                    model call latency (histogram)
    gemma_edge_queue_depth                        escalations waiting to reach the teacher
    gemma_edge_skill_version, gemma_edge_adapter_version

This module knows nothing about what is measured beyond these names.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inputs = Counter("gemma_edge_inputs", "Inputs answered.", ["kind"], registry=r)
        self.frames = Counter("gemma_edge_frames", "Frames read from the source.", registry=r)
        self.gated = Counter(
            "gemma_edge_gated_frames", "Frames skipped by the gate.", ["reason"], registry=r
        )
        self.escalations = Counter(
            "gemma_edge_escalations", "Escalations sent, by reason.", ["reason"], registry=r
        )
        self.suppressed = Counter(
            "gemma_edge_escalations_suppressed",
            "Escalations held back by cooldown or budget.",
            ["why"],
            registry=r,
        )
        self.backend_errors = Counter(
            "gemma_edge_backend_errors", "Inputs the backend failed on.", registry=r
        )
        self.latency = Histogram(
            "gemma_edge_latency_seconds",
            "Model call latency.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "gemma_edge_queue_depth", "Escalations waiting to reach the teacher.", registry=r
        )
        self.mqtt_dropped = Counter(
            "gemma_edge_mqtt_dropped", "Events dropped while the MQTT broker was away.", registry=r
        )
        self.skill_version = Gauge("gemma_edge_skill_version", "Active skill.", registry=r)
        self.adapter_version = Gauge("gemma_edge_adapter_version", "Active adapter.", registry=r)
        self.port: int | None = None
        self._server = None
        self._thread = None

    def serve(self, host: str, port: int) -> int:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                "metrics", [("metrics.port", port, f"cannot listen on {host}: {exc}")]
            ) from None
        self.port = self._server.server_port
        logger.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
