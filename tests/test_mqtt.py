"""MQTT out against a real broker (Debian's mosquitto, started here on a loopback port) and a real subscriber:
availability and its last will, track events consistent with the JSONL, retained counts back to 0, Home
Assistant discovery, a broker that goes away mid-run, and bad settings."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import read_jsonl, run_perceptd
from tests.daemon import Daemon
from tests.test_service import need
from tests.test_tracking_daemon import crossing_clip  # noqa: F401  (a fixture)

LINE = {"lines": [{"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]]}]}


class Broker:
    """mosquitto on 127.0.0.1. It cannot report a port it picked itself, so a free one is taken and the start
    retried on the rare collision; restart() comes back on the same port. With `users` ({name: password}) it
    lets only those in."""

    def __init__(self, tmp_path, users: dict[str, str] | None = None):
        need(shutil.which("mosquitto") is not None, "mosquitto (Debian's mosquitto)")
        self.dir = tmp_path
        self.access = "allow_anonymous true\n"
        if users:
            passwords = tmp_path / "mosquitto.passwd"
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if not passwords.exists() else []),
                                str(passwords), user, password], check=True, capture_output=True)
            # Started as root, mosquitto reads the file after dropping to its own user, which cannot enter
            # pytest's private tmp_path: it keeps the user it was started as (it never runs as root in CI's
            # sense of a service; only the test's loopback port is open).
            self.access = f"allow_anonymous false\npassword_file {passwords}\nuser {getpass.getuser()}\n"
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            if self.start():
                return
        raise AssertionError("mosquitto did not start")

    def start(self) -> bool:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{self.access}persistence false\n")
        self.log = self.dir / f"mosquitto-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf), "-v"], stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def restart(self) -> None:
        assert self.start(), self.log.read_text()


class Subscriber:
    """Records every message on every topic, with its retain flag."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def on(self, topic: str) -> list[str]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; got {self.messages[-20:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture()
def broker(tmp_path):
    pytest.importorskip("paho.mqtt")
    b = Broker(tmp_path)
    yield b
    if b.proc.poll() is None:
        b.stop()


def test_mqtt_when_a_clip_is_tracked_publishes_availability_events_counts_and_discovery(
        crossing_clip, broker, tmp_path, cache_dir):  # noqa: F811
    clip, frames = crossing_clip
    sub = Subscriber(broker.port)
    mqtt = {"host": "127.0.0.1", "port": broker.port, "device": "jetson1", "stats_interval_s": 0.5}
    try:
        with Daemon(tmp_path, cache_dir, [{"name": "hall", "uri": str(clip), **LINE}], mqtt=mqtt,
                    metrics={"linger_s": 60}) as d:
            d.start()
            d.wait_log(r"source 'hall': \d+ captured", timeout=120)
            assert d.stop() == 0, d.log
        sub.wait(lambda: sub.on("perceptd/jetson1/available")[-1:] == ["offline"], 10, "offline at a clean stop")
    finally:
        sub.close()
    P = "perceptd/jetson1"
    assert sub.on(f"{P}/available")[0] == "online"
    events = [json.loads(p) for p in sub.on(f"{P}/hall/events")]
    logged = read_jsonl(d.out / "hall.events.jsonl")
    assert [(e["type"], e["track_id"], e["frame"]) for e in events] == [(e["type"], e["track_id"], e["frame"])
                                                                       for e in logged]
    assert [e["direction"] for e in events if e["type"] == "cross"] == ["right", "left"]
    assert len({e["id"] for e in events}) == len(events)  # a unique id per event
    counts = sub.on(f"{P}/hall/face")
    assert counts[0] == "0" and "1" in counts and counts[-1] == "0"  # in view, then gone
    assert sub.on(f"{P}/hall/present")[-1] == "OFF" and "ON" in sub.on(f"{P}/hall/present")
    assert sub.on(f"{P}/hall/state")[0] == "up"
    stats = [json.loads(p) for p in sub.on(f"{P}/stats")]
    assert stats and "hall" in stats[-1]["sources"]
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/")}
    assert {t.split("/")[1] for t in configs} == {"sensor", "binary_sensor"}
    published = {t for t, _, _ in sub.messages}
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    for c in configs.values():
        assert c["state_topic"] in published and c["availability_topic"] == f"{P}/available"
        assert c["device"]["identifiers"] == ["perceptd_jetson1"]
    # A subscriber that comes later gets the retained state: offline, no face in view, the source's state,
    # and every discovery config.
    late = Subscriber(broker.port)
    try:
        late.wait(lambda: late.on(f"{P}/hall/face") and late.on(f"{P}/available"), 10, "retained messages")
        retained = {t: p for t, p, r in late.messages if r}
    finally:
        late.close()
    assert retained[f"{P}/available"] == "offline" and retained[f"{P}/hall/face"] == "0"
    assert retained[f"{P}/hall/present"] == "OFF" and retained[f"{P}/hall/state"] in ("up", "down")
    assert set(configs) <= set(retained)


def test_mqtt_when_perceptd_is_killed_the_broker_delivers_its_last_will(carphone, broker, tmp_path, cache_dir):
    sub = Subscriber(broker.port)
    source = {"name": "car", "uri": str(carphone), "loop": True, "realtime": True}
    try:
        with Daemon(tmp_path, cache_dir, [source], mqtt={"host": "127.0.0.1", "port": broker.port,
                                                         "device": "cam", "protocol": "5"}) as d:  # MQTT 5 here
            d.start()
            sub.wait(lambda: "online" in sub.on("perceptd/cam/available"), 30, "online")
            d.kill_group()
        sub.wait(lambda: sub.on("perceptd/cam/available")[-1:] == ["offline"], 60, "the last will")
    finally:
        sub.close()


def test_mqtt_when_the_broker_goes_away_mid_run_the_pipeline_goes_on_and_events_flow_again(
        crossing_clip, broker, tmp_path, cache_dir):  # noqa: F811
    clip, _ = crossing_clip
    source = {"name": "hall", "uri": str(clip), "loop": True, "realtime": True, "speed": 2, **LINE}
    with Daemon(tmp_path, cache_dir, [source], mqtt={"host": "127.0.0.1", "port": broker.port, "device": "d"}) as d:
        d.start()
        sub = Subscriber(broker.port)
        try:
            sub.wait(lambda: sub.on("perceptd/d/hall/events"), 60, "a first event")
        finally:
            sub.close()
        broker.stop()
        d.wait_log(r"mqtt: lost the connection")
        d.wait_processed("hall", 60)  # the pipeline never waits for the broker
        assert d.metric("perceptd_mqtt_connected") == 0
        broker.restart()
        sub = Subscriber(broker.port)
        try:
            d.wait_log(r"mqtt: connected to 127\.0\.0\.1:\d+ again", timeout=60)
            sub.wait(lambda: [p for p in sub.on("perceptd/d/hall/events") if '"cross"' in p], 60, "crossings again")
            assert "online" in sub.on("perceptd/d/available")  # retained state re-sent to the new broker
        finally:
            sub.close()
        assert d.stop() == 0, d.log
    assert "Traceback" not in d.log
    d.accounting()


def test_mqtt_settings_when_wrong_exit_2_or_retry_without_a_traceback(carphone, tmp_path, cache_dir):
    import yaml

    def check(mqtt: dict):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"sources": ["a.mp4"], "mqtt": mqtt}))
        return run_perceptd("check-config", str(cfg), cache_dir=cache_dir)

    bad_port = check({"host": "127.0.0.1", "port": 70000})
    assert bad_port.returncode == 2 and "mqtt.port" in bad_port.stderr and "Traceback" not in bad_port.stderr
    no_ca = check({"host": "127.0.0.1", "tls": {"ca": str(tmp_path / "missing-ca.pem")}})
    assert no_ca.returncode == 2 and "mqtt.tls.ca: file not found" in no_ca.stderr
    unset = check({"host": "127.0.0.1", "username": "cam", "password": "${PERCEPTD_TEST_UNSET_PW}"})
    assert unset.returncode == 2 and "environment variable PERCEPTD_TEST_UNSET_PW is not set" in unset.stderr
    # An unknown host is not a configuration error (DNS may come up later): logged, retried, the rest runs.
    source = {"name": "car", "uri": str(carphone), "max_frames": 30}
    with Daemon(tmp_path, cache_dir, [source], mqtt={"host": "no-such-broker.invalid", "password": "s3cr3t-pw",
                                                     "username": "u"}) as d:
        d.start()
        assert d.proc.wait(120) == 0, d.log
    assert "mqtt: cannot reach no-such-broker.invalid:1883; retrying" in d.log
    assert "s3cr3t-pw" not in d.log and "Traceback" not in d.log
    assert d.accounting()["car"] == (30, 30, 0)
