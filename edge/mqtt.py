"""Alerts where home and site automation listen: an MQTT sink for the edge's safety events.

    sink = MqttSink(config.events.mqtt, edge_id="kitchen-cam")
    sink.submit(event)          # never blocks: a bounded queue, drops counted
    sink.close()                # delivers what it can, then publishes "offline"

Topics, after Frigate's convention (``frigate/events``, ``frigate/available``) that Home
Assistant and Node-RED users know, under ``topic_prefix`` (default ``gemma-edge``):

- ``<prefix>/events``: every safety event (a local alert, an escalation, a safety keyword,
  an input that could not be judged), QoS ``qos`` (1: at least once), as
  ``{"type": "alert" | "escalation" | "safety", "edge_id", "after": <the event line>}``;
- ``<prefix>/<edge_id>/available``: ``online`` (retained) once connected, ``offline``
  (retained) as the broker's last will and on a clean stop;
- ``<prefix>/<edge_id>/heartbeat``: every ``heartbeat_s``, what the sink has published,
  queued and dropped, plus the daemon's ``status()`` (answered inputs, release), QoS 0.

A broker that is down or slow never slows answering: ``submit`` appends to a bounded
queue and returns; one thread publishes the head of the queue while the client is
connected and removes it only when the broker acknowledges it (QoS 1), so queued events
arrive after the broker comes back (paho-mqtt reconnects with back-off). When the queue
is full the oldest event is dropped and counted (``dropped``, and the metric
``gemma_edge_mqtt_dropped``). Optional TLS (``tls``, ``ca_file``, client certificate) and
credentials. It knows nothing about models or policies.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from edge.jsonline import dumps
from shared.config import MqttConfig
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

ACK_TIMEOUT_S = 5.0


def event_type(event: dict) -> str:
    """Frigate-style ``type`` of a safety event: an alert here, an escalation, or a keyword
    or error that made it a safety event."""
    if event.get("alert"):
        return "alert"
    if (event.get("decision") or {}).get("escalate") or event.get("case_id"):
        return "escalation"
    return "safety"


class MqttSink:
    def __init__(
        self,
        config: MqttConfig,
        edge_id: str,
        status: Callable[[], dict] | None = None,
        on_drop: Callable[[], None] | None = None,
    ):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise ConfigError(
                "events", [("events.mqtt", config.host, "needs paho-mqtt (pip install paho-mqtt)")]
            ) from None
        self.config, self.edge_id = config, edge_id
        self.status, self.on_drop = status, on_drop
        prefix = config.topic_prefix.rstrip("/")
        self.events_topic = f"{prefix}/events"
        self.available_topic = f"{prefix}/{edge_id}/available"
        self.heartbeat_topic = f"{prefix}/{edge_id}/heartbeat"
        self.published = self.dropped = 0
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id or f"gemma-edge-{edge_id}",
            protocol=mqtt.MQTTv311,
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            try:
                client.tls_set(
                    ca_certs=str(config.ca_file) if config.ca_file else None,
                    certfile=str(config.cert_file) if config.cert_file else None,
                    keyfile=str(config.key_file) if config.key_file else None,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    "events", [("events.mqtt.tls", config.ca_file, str(exc))]
                ) from None
        client.will_set(self.available_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ producer side
    def submit(self, event: dict) -> None:
        """Queue a safety event for the broker; never blocks, never raises."""
        try:
            doc = {"type": event_type(event), "edge_id": self.edge_id, "after": event}
            data = dumps(doc).encode()
        except Exception:  # noqa: BLE001 - an event that cannot be encoded is logged, not raised
            logger.exception("an event could not be encoded for MQTT")
            return
        with self._cond:
            if len(self._queue) >= self.config.max_queue:
                self._queue.popleft()
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop()
            self._queue.append(data)
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    # ------------------------------------------------------------ the publishing thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning("MQTT broker %s refused the edge: %s", self.config.host, reason_code)
            return
        client.publish(self.available_topic, b"online", qos=1, retain=True)
        logger.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        with self._cond:
            self._cond.notify()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._stopping:
            logger.warning("MQTT broker %s:%d lost (%s); events wait in the queue",
                           self.config.host, self.config.port, reason_code)  # fmt: skip

    def _run(self) -> None:
        next_beat = time.monotonic() + self.config.heartbeat_s
        while True:
            with self._cond:
                if self._stopping and (not self._queue or not self.connected):
                    return
                if not self._queue or not self.connected:
                    self._cond.wait(0.2)
                head = self._queue[0] if self._queue and self.connected else None
            if time.monotonic() >= next_beat and self.connected:
                self._beat()
                next_beat = time.monotonic() + self.config.heartbeat_s
            if head is None:
                continue
            if self._publish(head):
                with self._cond:
                    if self._queue and self._queue[0] is head:
                        self._queue.popleft()
                    self.published += 1

    def _publish(self, data: bytes) -> bool:
        """True once the broker has it (QoS 1/2: acknowledged)."""
        try:
            info = self._client.publish(self.events_topic, data, qos=self.config.qos)
            info.wait_for_publish(ACK_TIMEOUT_S)
            return info.is_published()
        except (RuntimeError, ValueError, OSError) as exc:  # not connected, queue full
            logger.debug("MQTT publish not acknowledged yet: %s", exc)
            time.sleep(0.2)
            return False

    def _beat(self) -> None:
        doc = {"edge_id": self.edge_id, "time": time.time(), "published": self.published,
               "queued": self.queued, "dropped": self.dropped}  # fmt: skip
        if self.status is not None:
            try:
                doc.update(self.status())
            except Exception:  # noqa: BLE001 - a heartbeat never stops the sink
                logger.exception("the MQTT heartbeat's status failed")
        self._client.publish(self.heartbeat_topic, json.dumps(doc).encode(), qos=0)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` while connected), say ``offline``."""
        deadline = time.monotonic() + timeout
        while self._queue and self.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=2)
        if self.connected:
            info = self._client.publish(self.available_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(1.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
        if self._queue:
            logger.warning("%d MQTT event(s) not delivered before stopping", len(self._queue))
