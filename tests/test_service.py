"""perceptd as a service: sd_notify and the watchdog over a real datagram socket, reconnection to a real
RTSP server that is killed and restarted, SIGHUP reload, health endpoints, and the systemd units."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, metrics_port, perceptd_cmd, perceptd_env, read_jsonl
from tests.test_pipeline import scrape, wait_for


def need(condition: bool, what: str) -> None:
    """CI installs every Debian package the tests use (.ci/run): there a missing one is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run should have installed it")
        pytest.skip(f"{what} is not installed here")


def start(config: Path, cache_dir: Path, log: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = perceptd_env(cache_dir)
    env.update(env_extra or {})
    return subprocess.Popen(perceptd_cmd("run", "-c", str(config)), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), cwd=REPO)


def config(path: Path, sources: list, out: Path, port: int, **sections) -> Path:
    cfg = {"sources": sources, "sinks": {"output_dir": str(out), "progress": "log", "log_interval_s": 1},
           "metrics": {"port": port}, "service": {"status_interval_s": 0.5}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def worker_pid(log: Path, proc) -> int:
    return int(wait_for(lambda: re.search(r"worker (\d+) ready", log.read_text()), 60, "the worker", proc).group(1))


class NotifySocket:
    """A real unix datagram socket standing in for systemd's, recording (time, message) pairs."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_key(self, key: str, since: float = 0.0) -> list[str]:
        return [m for t, m in list(self.messages) if t >= since and any(
            line.startswith(key + "=") for line in m.splitlines())]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_notify_when_under_systemd_sends_ready_watchdog_status_and_stopping(carphone, tmp_path, cache_dir):
    """The protocol itself. What the pings do when things go wrong (a hung worker, stuck reads, a worker that
    cannot start, a reload) is in test_faults_*."""
    notify = NotifySocket(tmp_path / "notify.sock")
    src = {"name": "car", "uri": str(carphone), "loop": True, "realtime": True}
    cfg = config(tmp_path / "c.yaml", [src], tmp_path / "out", 0)
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log, {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: notify.with_key("READY"), 60, "READY=1", proc)
        wait_for(lambda: len(notify.with_key("WATCHDOG")) >= 3, 30, "pings while frames flow", proc)
        wait_for(lambda: any(re.search(r"car up \d+\.\d fps", m) for m in notify.with_key("STATUS")), 30,
                 "STATUS= with the source's state and rate", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        assert notify.with_key("STOPPING")
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    messages = [m for _, m in notify.messages]
    assert messages.index(notify.with_key("READY")[0]) < messages.index(notify.with_key("STOPPING")[0])
    assert "not pinging" not in log.read_text()


def test_notify_when_no_socket_is_set_does_nothing():
    from pipeline.notify import Notifier

    n = Notifier({})
    assert not n.enabled and n.watchdog_s is None and n.ready() is False and n.watchdog() is False


def test_notify_when_watchdog_is_for_another_pid_ignores_it(tmp_path):
    from pipeline.notify import Notifier

    sock = NotifySocket(tmp_path / "n.sock")
    try:
        n = Notifier({"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
        assert n.enabled and n.watchdog_s is None
        n2 = Notifier({"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "2000000"})
        assert n2.watchdog_s == 2.0 and n2.ready("hello")
        wait_for(lambda: sock.with_key("READY"), 5, "READY")
        assert "STATUS=hello" in sock.with_key("READY")[0]
    finally:
        sock.close()


# ------------------------------------------------------------------------------------------ RTSP


def rtsp_server_available() -> bool:
    if not Path("/usr/bin/python3").exists():
        return False
    probe = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    return probe.returncode == 0


def start_rtsp(port: int = 0) -> tuple[subprocess.Popen, int]:
    """The RTSP server on `port` (0: one the system picks); returns it with the port it bound."""
    server = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    word, _, bound = server.stdout.readline().strip().partition(" ")
    assert word == "ready" and bound.isdigit()
    return server, int(bound)


def test_rtsp_source_when_the_server_dies_and_returns_reconnects_while_others_go_on(carphone, tmp_path,
                                                                                   cache_dir):
    need(rtsp_server_available(), "GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi)")
    server, rtsp_port = start_rtsp()
    sources = [{"name": "cam", "uri": f"rtsp://viewer:pw123@127.0.0.1:{rtsp_port}/live", "stall_timeout_s": 5},
               {"name": "car", "uri": str(carphone), "loop": True, "realtime": True}]
    cfg = config(tmp_path / "c.yaml", sources, tmp_path / "out", 0,
                 pipeline={"reconnect_initial_s": 0.5, "reconnect_max_s": 2})
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)
    cam, car = 'perceptd_frames_processed_total{source="cam"}', 'perceptd_frames_processed_total{source="car"}'
    try:
        wait_for(lambda: scrape(port).get(cam, 0) >= 25, 60, "frames from the RTSP camera", proc)
        server.kill()
        server.wait()
        wait_for(lambda: scrape(port)['perceptd_source_up{source="cam"}'] == 0, 30, "the camera marked down", proc)
        wait_for(lambda: "retrying in" in log.read_text(), 30, "a failed reconnect", proc)
        # A camera frame read just before the kill may still be queued or in the worker: let 10 of the
        # file's frames through first, so that it is counted before the snapshot.
        before = scrape(port)[car]
        down = wait_for(lambda: (m := scrape(port))[car] >= before + 10 and m, 60, "frames from the file", proc)
        # The file source goes on while the camera is away: 30 more of its frames, none of the camera's.
        during = wait_for(lambda: (m := scrape(port))[car] >= down[car] + 30 and m, 60, "frames from the file", proc)
        assert during[cam] == down[cam]
        server, _ = start_rtsp(rtsp_port)  # back on the camera's own address
        back = wait_for(lambda: (m := scrape(port))['perceptd_source_up{source="cam"}'] == 1 and m, 30,
                        "the camera back up", proc)
        assert back['perceptd_source_reconnects_total{source="cam"}'] >= 1
        wait_for(lambda: scrape(port)[cam] >= back[cam] + 25, 30, "frames after the reconnect", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        server.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "source 'cam': no frame from rtsp://viewer:***@" in text and "reconnected" in text
    assert "pw123" not in text
    frames = [r["frame"] for r in read_jsonl(tmp_path / "out" / "cam.jsonl")]
    assert frames == sorted(frames)


# ------------------------------------------------------------------------------------------ reload


def test_reload_when_sighup_brings_a_new_threshold_and_source_applies_both_without_a_new_worker(
        carphone, astronaut_clip, tmp_path, cache_dir):
    out = tmp_path / "out"
    car = {"name": "car", "uri": str(carphone), "loop": True, "realtime": True}
    cfg = config(tmp_path / "c.yaml", [car], out, 0, model={"confidence": 0.9999})
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)
    key = 'perceptd_frames_processed_total{source="car"}'
    try:
        wait_for(lambda: scrape(port).get(key, 0) >= 30, 60, "frames before the reload", proc)
        astro = {"name": "astro", "uri": str(astronaut_clip), "loop": True, "realtime": True}
        config(cfg, [car, astro], out, 0, model={"confidence": 0.5})
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "thresholds updated" in log.read_text(), 30, "the reload", proc)
        reloaded_at = scrape(port)[key]
        wait_for(lambda: scrape(port).get('perceptd_frames_processed_total{source="astro"}', 0) >= 20, 60,
                 "frames from the added source", proc)
        wait_for(lambda: scrape(port)[key] >= reloaded_at + 30, 60, "frames after the reload", proc)

        (cfg).write_text("sources: [\n")  # invalid: the running config must stay
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload rejected" in log.read_text(), 30, "the rejection", proc)
        before = scrape(port)[key]
        wait_for(lambda: scrape(port)[key] >= before + 20, 30, "frames after the rejected reload", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert len(re.findall(r"worker \d+ ready", text)) == 1  # thresholds changed in place
    assert re.search(r"reload rejected.*c\.yaml:\d+", text)
    records = read_jsonl(out / "car.jsonl")
    with_face = [bool(r["detections"]) for r in records]
    assert not any(with_face[:25])  # 0.9999 is above every face score in carphone
    assert sum(with_face[-25:]) >= 24  # 0.5 finds the face again
    astro_records = read_jsonl(out / "astro.jsonl")
    assert astro_records and all(r["source"] == "astro" for r in astro_records)


# ------------------------------------------------------------------------------------------ health


def test_health_when_running_reports_ready_and_sources_and_503_while_the_worker_restarts(carphone, tmp_path,
                                                                                           cache_dir):
    src = {"name": "car", "uri": str(carphone), "loop": True, "realtime": True}
    cfg = config(tmp_path / "c.yaml", [src], tmp_path / "out", 0, pipeline={"restart_backoff_s": 2})
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        pid = worker_pid(log, proc)
        wait_for(lambda: get("/readyz")[0] == 200 and json.loads(get("/readyz")[1])["sources"]["car"]["state"]
                 == "up", 30, "ready", proc)
        assert get("/healthz") == (200, b"ok\n")
        body = json.loads(get("/readyz")[1])
        assert body["ready"] is True and body["worker"]["pid"] == pid and body["worker"]["backend"] == "onnxruntime"
        m = scrape(port)
        assert m['perceptd_process_resident_memory_bytes{process="main"}'] > 10e6
        assert m['perceptd_process_resident_memory_bytes{process="worker"}'] > 10e6
        assert m['perceptd_process_cpu_seconds_total{process="worker"}'] > 0
        assert not [k for k in m if k.startswith("perceptd_gpu_")]  # no GPU here: absent, not zero
        os.kill(pid, signal.SIGKILL)
        code, raw = wait_for(lambda: (r := get("/readyz"))[0] == 503 and r, 10, "503 while restarting", proc)
        assert json.loads(raw)["ready"] is False
        wait_for(lambda: get("/readyz")[0] == 200, 60, "ready again", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


# ------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize("unit", ["perceptd.service", "perceptd@.service"])
def test_systemd_unit_when_verified_by_systemd_analyze_passes(unit, tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian's systemd)")
    text = (REPO / "config" / unit).read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "RestartSec=", "ExecStartPre=",
                      "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "ProtectSystem=strict",
                      "ReadWritePaths=", "PrivateTmp=yes", "ProtectHome=yes", "SupplementaryGroups=video"):
        assert directive in text, directive
    # The unit names the recommended install path; verify checks that executables exist, so point it at
    # this environment's perceptd (the only change).
    exe = Path(sys.executable).parent / "perceptd"
    assert "/opt/perceptd/bin/perceptd" in text
    if not exe.exists():
        pytest.skip("perceptd is not installed as a command in this environment")
    (tmp_path / unit).write_text(text.replace("/opt/perceptd/bin/perceptd", str(exe)))
    target = unit.replace("@.", "@door.") if "@" in unit else unit
    if "@" in unit:
        shutil.copy(tmp_path / unit, tmp_path / target)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "perceptd" not in proc.stderr, proc.stderr  # no warnings about our unit


def service_directives(unit: str) -> list[tuple[str, str]]:
    """The [Service] section's Key=Value lines in order (systemd repeats keys, which configparser refuses)."""
    out, section = [], ""
    for line in (REPO / "config" / unit).read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


def systemd_analyze_security(path: Path) -> tuple[float, str]:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True,
                          text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    return float(m.group(1)), m.group(2)


@pytest.mark.parametrize("unit", ["perceptd.service", "perceptd@.service"])
def test_systemd_unit_when_scored_by_systemd_analyze_security_is_2_or_lower(unit):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian's systemd)")
    version = re.search(r"systemd (\d+)", subprocess.run(["systemd-analyze", "--version"], capture_output=True,
                                                         text=True).stdout)
    need(version is not None and int(version.group(1)) >= 250, "systemd-analyze 250 or newer (--offline)")
    score, verdict = systemd_analyze_security(REPO / "config" / unit)
    assert score <= 2.0, f"{unit}: exposure {score} {verdict}"


@pytest.mark.parametrize("unit", ["perceptd.service", "perceptd@.service"])
def test_systemd_unit_when_hardened_keeps_what_the_daemon_needs(unit):
    d = service_directives(unit)
    values = {k: v for k, v in d}
    allowed = {v.rsplit(" ", 1)[0]: v.rsplit(" ", 1)[1] for k, v in d if k == "DeviceAllow"}
    # CSI cameras: the host's nvargus socket inside the private /tmp; missing (no Jetson) is not an error.
    assert values["PrivateTmp"] == "yes" and ("BindPaths", "-/tmp/argus_socket") in d
    # Devices: the host's /dev through a closed device cgroup that lists cameras, codecs and GPUs by name.
    assert values.get("PrivateDevices", "no") == "no" and values["DevicePolicy"] == "closed"
    needed = ["char-video4linux", "char-drm", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvmap",
              "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu", "/dev/nvhost-as-gpu",
              "/dev/nvhost-prof-gpu", "/dev/nvhost-vic", "/dev/nvhost-nvdec", "/dev/nvhost-msenc",
              "/dev/nvhost-nvenc1", "/dev/host1x-fence", "/dev/nvgpu/igpu0/ctrl", "/dev/nvgpu/igpu0/channel",
              "/dev/nvgpu/igpu0/as", "/dev/nvgpu/igpu0/tsg", "/dev/v4l2-nvdec", "/dev/nvhost-nvdla0"]
    assert [n for n in needed if allowed.get(n) != "rw"] == []
    assert not [n for n in allowed if any(c in n for c in "*?[")], "no globs: systemd takes them literally"
    assert set(values["SupplementaryGroups"].split()) >= {"video", "render"}
    # The network: RTSP, MQTT and webhooks anywhere, systemd's notify socket, name lookups.
    assert set(values["RestrictAddressFamilies"].split()) >= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "IPAddressDeny" not in values and values.get("PrivateNetwork", "no") == "no"
    # Frames in /dev/shm, a spawned worker, JIT-compiled code, tegrastats' /proc reads, nice and affinity.
    assert not [v for k, v in d if k in ("InaccessiblePaths", "TemporaryFileSystem") and "/dev" in v]
    assert values.get("MemoryDenyWriteExecute", "no") == "no" and values.get("ProcSubset", "all") == "all"
    assert "~@resources" not in [v for k, v in d if k == "SystemCallFilter"]
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("User", "perceptd"), ("KillMode", "mixed")):
        assert values[key] == value, key


def test_systemd_units_when_compared_share_one_hardening():
    def hardening(unit: str) -> list[str]:
        text = (REPO / "config" / unit).read_text()
        return text[text.index("# Hardening"):].splitlines()

    assert hardening("perceptd.service") == hardening("perceptd@.service")
