"""The MQTT sink against a real broker (Debian's ``mosquitto``, started by the test): alerts
arrive with QoS 1, availability is retained, and with the broker stopped the edge keeps
answering while its events wait, then arrive once the broker is back."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt")
if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
    pytest.skip("apt-get install mosquitto for the MQTT tests", allow_module_level=True)
pytestmark = pytest.mark.slow

import paho.mqtt.client as mqtt  # noqa: E402

from edge.daemon import EdgeDaemon  # noqa: E402
from edge.events import EventLog, SafetyHooks  # noqa: E402
from edge.mqtt import MqttSink  # noqa: E402
from edge.sources import open_source  # noqa: E402
from shared.config import EdgeConfig, MqttConfig  # noqa: E402
from tests.fakes import ScriptedBackend  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ALERT = "Answer: Smoke pours from a pan.\nSAFETY: yes\nCONFIDENCE: 0.9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto on loopback that keeps its subscribers' sessions across a restart."""

    def __init__(self, folder: Path, port: int):
        self.port, self.folder = port, folder
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # mosquitto saves its sessions on SIGTERM
            self.proc.wait(10)
            self.proc = None


class Listener:
    """A Home-Assistant-like subscriber: QoS 1, a persistent session."""

    def __init__(self, port: int, topic: str = "gemma-edge/#", client_id: str = "listener"):
        self.messages: list[mqtt.MQTTMessage] = []
        self.got = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.got:
            self.messages.append(message)
            self.got.notify_all()

    def wait(self, topic: str, n: int, timeout: float = 20) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        with self.got:
            while True:
                found = [m for m in self.messages if m.topic == topic]
                if len(found) >= n or time.monotonic() > deadline:
                    return found
                self.got.wait(0.2)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path, free_port())
    b.start()
    yield b
    b.stop()


def sink_config(port: int, **kw) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, heartbeat_s=0.5, **kw)


def daemon(tmp_path, texts: list[str], sink: MqttSink) -> EdgeDaemon:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    hooks = SafetyHooks(None, None, mqtt=sink)
    return EdgeDaemon(EdgeConfig(state_dir=tmp_path / "state"), ScriptedBackend(ALERT),
                      open_source(str(source)), EventLog(None, stream=io.StringIO()),
                      hooks)  # fmt: skip


def test_alerts_arrive_with_qos_1_and_availability_is_retained(broker, tmp_path):
    listener = Listener(broker.port)
    sink = MqttSink(sink_config(broker.port), "kitchen-cam", status=lambda: {"release": 0})
    d = daemon(tmp_path, ["Smoke pours from a pan on the stove."], sink)
    d.run(progress=False)
    [event] = listener.wait("gemma-edge/events", 1)
    doc = json.loads(event.payload)
    assert event.qos == 1 and doc["edge_id"] == "kitchen-cam"
    assert doc["type"] in ("alert", "escalation") and doc["after"]["input"].startswith("Smoke")
    beats = listener.wait("gemma-edge/kitchen-cam/heartbeat", 1)
    assert json.loads(beats[0].payload)["release"] == 0
    d.hooks.close()
    listener.close()
    # a new subscriber learns the edge's state from the retained availability message
    # (its own session: the first listener's persistent one would subscribe it to "#" too,
    # and the retained message would arrive once per matching subscription)
    late = Listener(broker.port, "gemma-edge/kitchen-cam/available", client_id="late")
    [available] = late.wait("gemma-edge/kitchen-cam/available", 1)
    assert available.retain and available.payload == b"offline"  # closed cleanly
    late.close()


def test_with_the_broker_down_the_edge_answers_and_its_events_arrive_after(broker, tmp_path):
    listener = Listener(broker.port)
    listener.wait("gemma-edge/none", 0)
    sink = MqttSink(sink_config(broker.port, reconnect_max_s=1), "yard-cam")
    deadline = time.monotonic() + 10
    while not sink.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.close()
    broker.stop()  # the listener's session (QoS 1 subscription) is saved
    texts = [f"Smoke pours from pan number {i}." for i in range(5)]
    d = daemon(tmp_path, texts, sink)
    d.run(progress=False)
    assert d.stats.answered == 5  # every input answered while the broker was away
    assert sink.queued == 5 and sink.published == 0 and sink.dropped == 0
    broker.start()
    listener = Listener(broker.port)
    got = listener.wait("gemma-edge/events", 5, timeout=30)
    # QoS 1 is at least once: a message in flight when the broker went may come twice
    assert {json.loads(m.payload)["after"]["input"] for m in got} == set(texts)
    deadline = time.monotonic() + 10
    while sink.queued and time.monotonic() < deadline:  # the last acknowledgement
        time.sleep(0.05)
    assert sink.queued == 0 and sink.published >= 5
    d.hooks.close()
    listener.close()


def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path):
    dropped = []
    sink = MqttSink(sink_config(free_port(), max_queue=3), "e1", on_drop=lambda: dropped.append(1))
    t0 = time.perf_counter()
    for i in range(5):
        sink.submit({"input": f"event {i}", "alert": True})
    assert time.perf_counter() - t0 < 0.5  # no broker at all: submit never waits for one
    assert sink.queued == 3 and sink.dropped == 2 and len(dropped) == 2
    sink.close(timeout=0.1)
