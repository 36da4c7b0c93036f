"""MQTT out (paho-mqtt): every track event, live counts per label, source state, periodic stats, and Home
Assistant discovery, so that Home Assistant or Node-RED see perceptd as a device.

Topics, with P = <topic_prefix>/<device>:
- P/available          `online` (retained) once connected; `offline` as the last will and at a clean stop
- P/<source>/events    each track event as JSON (new, end, enter, exit, cross) with a unique "id"; QoS 1
- P/<source>/<label>   retained count of that label's tracked objects in view now (0 when they leave)
- P/<source>/present   retained ON/OFF: anything tracked in view
- P/<source>/state     retained up/down as the source connects and stalls
- P/stats              every stats_interval_s: fps, latency p50/p99 and drops per source
- <discovery_prefix>/sensor|binary_sensor/<id>/config   retained Home Assistant discovery

A broker that is down or slow never slows the pipeline: messages wait in a bounded buffer (the oldest are
dropped and counted, perceptd_mqtt_dropped_total) and paho reconnects with backoff. Retained state is
re-published on every connect, so a broker restart loses nothing that matters. Credentials are never logged.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import deque
from typing import Callable

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.metrics import Metrics
from pipeline.settings_events import MqttSettings

log = logging.getLogger(__name__)

INFLIGHT = 20  # QoS 1 messages awaiting the broker's ack; beyond it messages wait in our buffer


class MqttPublisher:
    def __init__(self, settings: MqttSettings, metrics: Metrics, labels: tuple[str, ...] = (),
                 stats: Callable[[], dict] | None = None):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UserError("mqtt: this needs paho-mqtt; pip install 'perceptd[mqtt]' (or remove the mqtt "
                            "section)") from None

        self.settings = s = settings
        self.prefix = f"{s.topic_prefix}/{s.device}"
        self.metrics = metrics
        self._stats = stats
        self._labels = tuple(s.labels) or (tuple(labels) if len(labels) <= 10 else ())
        self._buffer: deque[tuple[str, str, int, bool]] = deque()
        self._retained: dict[str, str] = {}  # topic -> last retained payload: re-sent on every (re)connect
        self._discovered: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._was_connected = False
        protocol = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"perceptd-{s.device}",
                                  protocol=protocol)
        if s.username is not None:
            self.client.username_pw_set(s.username, s.password)
        if s.tls is not None:
            self.client.tls_set(ca_certs=_s(s.tls.ca), certfile=_s(s.tls.cert), keyfile=_s(s.tls.key))
            self.client.tls_insecure_set(s.tls.insecure)
        self.client.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(1, 30)
        self.client.max_inflight_messages_set(INFLIGHT)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._thread = threading.Thread(target=self._send, name="mqtt", daemon=True)
        self._dropped = metrics.mqtt_dropped
        self._up = metrics.mqtt_connected
        self._up.set(0)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        log.info("mqtt: connecting to %s:%d as device '%s' (topics %s/...)", s.host, s.port, s.device, self.prefix)
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self.client.loop_start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is buffered (within `timeout`), then `offline`, then disconnect."""
        deadline = time.monotonic() + timeout
        while self._buffer and self._connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._connected.is_set():
            info = self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()
        self._up.set(0)

    # what the pipeline publishes -------------------------------------------------------------------------
    def event(self, source: str, event: dict) -> None:
        payload = {**event, "id": f"{int(time.time() * 1000)}-{secrets.token_hex(3)}"}
        self._put(f"{self.prefix}/{source}/events", json.dumps(payload, separators=(",", ":")), 1, False)

    def counts(self, source: str, counts: dict[str, int]) -> None:
        """The source's tracked objects in view, per label (labels not given are 0)."""
        labels = set(self._labels) | {lb for (src, lb) in self._discovered if src == source} | set(counts)
        for label in sorted(labels):
            if self.settings.discovery and (source, label) not in self._discovered:
                self._discover_count(source, label)
            self._retain(f"{self.prefix}/{source}/{label}", str(counts.get(label, 0)))
        self._retain(f"{self.prefix}/{source}/present", "ON" if any(counts.values()) else "OFF")

    def source_state(self, source: str, up: bool) -> None:
        if self.settings.discovery and (source, "") not in self._discovered:
            self._discover_source(source)
        self._retain(f"{self.prefix}/{source}/state", "up" if up else "down")

    # internals -----------------------------------------------------------------------------------------
    def _retain(self, topic: str, payload: str) -> None:
        if self._retained.get(topic) == payload:
            return  # unchanged: a retained topic is only sent when it changes
        self._retained[topic] = payload
        self._put(topic, payload, 1, True)

    def _put(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        with self._cond:
            if len(self._buffer) >= self.settings.buffer:
                self._buffer.popleft()
                self._dropped.inc()
            self._buffer.append((topic, payload, qos, retain))
            self._cond.notify()

    def _send(self) -> None:
        next_stats = time.monotonic() + self.settings.stats_interval_s
        while not self._stop.is_set():
            if self._stats is not None and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.settings.stats_interval_s
                self._put(f"{self.prefix}/stats", json.dumps(self._stats(), separators=(",", ":")), 0, False)
            with self._cond:
                if not self._buffer or not self._connected.is_set():
                    self._cond.wait(0.2)
                    continue
                topic, payload, qos, retain = self._buffer.popleft()
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE or info.rc == self._mqtt.MQTT_ERR_NO_CONN:
                with self._cond:  # not taken: back to the front, try again shortly
                    self._buffer.appendleft((topic, payload, qos, retain))
                time.sleep(0.05)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        log.info("mqtt: connected to %s:%d%s", self.settings.host, self.settings.port,
                 " again" if self._was_connected else "")
        self._was_connected = True
        # Retained state first, ahead of anything buffered: a restarted broker may have lost it.
        client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        for topic, payload in list(self._retained.items()):
            client.publish(topic, payload, qos=1, retain=True)
        self._connected.set()
        self._up.set(1)
        with self._cond:
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("mqtt: lost the connection to %s:%d (%s); reconnecting, messages wait (at most %d)",
                        self.settings.host, self.settings.port, reason_code, self.settings.buffer)
        self._connected.clear()
        self._up.set(0)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._was_connected:
            log.warning("mqtt: cannot reach %s:%d; retrying", self.settings.host, self.settings.port)

    def _discover_count(self, source: str, label: str) -> None:
        self._discovered.add((source, label))
        uid = f"perceptd_{self.settings.device}_{source}_{label}_count"
        self._retain(f"{self.settings.discovery_prefix}/sensor/{uid}/config", json.dumps({
            "name": f"{source} {label} count", "unique_id": uid, "object_id": uid,
            "state_topic": f"{self.prefix}/{source}/{label}", "unit_of_measurement": "objects",
            "state_class": "measurement", "icon": "mdi:account-multiple", **self._common()}))

    def _discover_source(self, source: str) -> None:
        self._discovered.add((source, ""))
        uid = f"perceptd_{self.settings.device}_{source}_present"
        self._retain(f"{self.settings.discovery_prefix}/binary_sensor/{uid}/config", json.dumps({
            "name": f"{source} object present", "unique_id": uid, "object_id": uid, "device_class": "occupancy",
            "state_topic": f"{self.prefix}/{source}/present", "payload_on": "ON", "payload_off": "OFF",
            **self._common()}))

    def _common(self) -> dict:
        d = self.settings.device
        return {"availability_topic": f"{self.prefix}/available", "payload_available": "online",
                "payload_not_available": "offline",
                "device": {"identifiers": [f"perceptd_{d}"], "name": f"perceptd {d}", "manufacturer": "perceptd",
                           "model": "perceptd", "sw_version": __version__}}


def _s(path) -> str | None:
    return str(path) if path is not None else None
