"""Fault injection, the inference worker: a hang (the worker stopped with SIGSTOP: alive, never answering),
a worker that cannot be restarted, SIGHUP while it restarts, SIGTERM while the engine loads and while a file
reader waits for slots. Real daemons, a real sd_notify socket; frames conserved after each."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import yaml

from engines.zoo import materialise
from tests.daemon import Daemon, snapshot
from tests.test_service import NotifySocket

LIVE = {"loop": True, "realtime": True}


def pings(notify: NotifySocket) -> int:
    return len(notify.with_key("WATCHDOG"))


def test_inference_hang_when_the_worker_stops_answering_it_is_killed_and_restarted_and_pings_go_on(
        carphone, tmp_path, cache_dir):
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    try:
        with Daemon(tmp_path, cache_dir, src, env=env, pipeline={"hang_timeout_s": 2}) as d:
            d.start()
            d.wait_processed("car", 20)
            hung = d.worker_pid()
            os.kill(hung, signal.SIGSTOP)  # alive, holding its frame, never answering: a GPU hang
            before = pings(notify)
            hang = d.wait_log(r"inference worker (\d+) answered no batch for [\d.]+ s")
            assert int(hang.group(1)) == hung
            restarted = d.wait_log(r"worker restarted \(pid (\d+)\)", after=hang.end())
            assert int(restarted.group(1)) != hung
            during = pings(notify)
            d.wait_processed("car", 20)  # frames flow again through the new worker
            m = d.scrape()
            assert m["perceptd_worker_hangs_total"] == 1 and m["perceptd_worker_restarts_total"] == 1
            assert m['perceptd_frames_dropped_total{reason="worker_hang",source="car"}'] >= 1
            assert not Path(f"/proc/{hung}").exists(), "the hung worker was killed"
            assert d.stop() == 0, d.log
    finally:
        notify.close()
    # systemd was kept informed all along: pings while the worker hung and was replaced, never a silence.
    assert during > before and "not pinging" not in d.log
    d.accounting()  # captured = processed + dropped


def test_watchdog_when_the_worker_cannot_be_restarted_stops_pinging_and_resumes_once_it_can(
        carphone, tmp_path, cache_dir):
    model = tmp_path / "faces.onnx"
    shutil.copy(materialise("retinaface", cache_dir), model)
    good = model.read_bytes()
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"}
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    try:
        with Daemon(tmp_path, cache_dir, src, env=env, model={"name": str(model), "family": "retinaface"},
                    pipeline={"restart_backoff_s": 0.2}) as d:
            d.start()
            d.wait_processed("car", 10)
            model.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)  # the model file got corrupted on disk
            os.kill(d.worker_pid(), signal.SIGKILL)
            silent = d.wait_log(r"watchdog: the inference worker failed to start 3 times in a row; not pinging")
            count = pings(notify)
            statuses = len(notify.with_key("STATUS"))
            # Two STATUS= updates later (the watchdog thread pings twice as often), still no ping.
            d.wait_metric(lambda m: len(notify.with_key("STATUS")) >= statuses + 2, 30, "status updates")
            assert pings(notify) == count
            assert d.proc.poll() is None, "it keeps trying by itself; systemd decides to restart it"
            model.write_bytes(good)  # fixed: the next attempt works and the pings come back
            d.wait_log(r"worker restarted", after=silent.end(), timeout=90)
            d.wait_metric(lambda m: pings(notify) > count, 30, "pings again")
            d.wait_processed("car", 10)
            assert d.stop() == 0, d.log
    finally:
        notify.close()
    d.accounting()


def test_sighup_during_a_worker_restart_never_ends_the_daemon(carphone, tmp_path, cache_dir):
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    with Daemon(tmp_path, cache_dir, src, pipeline={"restart_backoff_s": 2}) as d:
        d.start()
        d.wait_processed("car", 10)
        os.kill(d.worker_pid(), signal.SIGKILL)
        d.wait_log(r"restarting the inference worker in")
        cfg = yaml.safe_load(d.config_path.read_text())
        cfg["model"] = {"confidence": 0.5}  # thresholds: for a worker that is not there
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.signal(signal.SIGHUP)
        first = d.wait_log(r"thresholds updated")
        cfg["model"]["input_size"] = [160, 192]  # a new engine, while the old one is still restarting
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.signal(signal.SIGHUP)
        d.signal(signal.SIGHUP)  # and another before that one is done
        d.wait_log(r"reload: now running", after=first.end(), timeout=120)
        d.wait_processed("car", 20)
        m = d.scrape()
        assert m['perceptd_reloads_total{result="ok"}'] >= 2
        assert d.stop() == 0, d.log
    assert "Traceback" not in d.log
    d.accounting()


def worker_children(pid: int) -> list[int]:
    """The daemon's spawned worker (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_sigterm_while_the_engine_loads_cancels_the_load_and_exits_cleanly(carphone, tmp_path, cache_dir):
    """A first TensorRT build takes minutes on a Jetson; here the loading worker is frozen instead. Before,
    SIGTERM waited for the load (pipeline.worker_start_timeout_s)."""
    src = [{"name": "car", "uri": str(carphone), **LIVE}]
    with Daemon(tmp_path, cache_dir, src, pipeline={"worker_start_timeout_s": 3000}) as d:
        d.start(wait_ready=False)
        deadline = time.monotonic() + 60
        while not (workers := worker_children(d.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert workers, d.log
        os.kill(workers[0], signal.SIGSTOP)  # still "building"
        d.signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0, d.log
    assert "stopped while the engine was loading" in d.log
    assert not Path(f"/proc/{workers[0]}").exists() or "zombie" in Path(f"/proc/{workers[0]}/status").read_text()
    assert not (tmp_path / "out").exists() or snapshot(tmp_path / "out") == {}


def test_sigterm_when_a_file_reader_waits_for_slots_stops_it_and_counts_every_frame(carphone, tmp_path, cache_dir):
    src = [{"name": "car", "uri": str(carphone), "loop": True}]  # a file: its reader waits, never drops
    with Daemon(tmp_path, cache_dir, src, pipeline={"hang_timeout_s": 600}, service={"shutdown_grace_s": 2}) as d:
        d.start()
        d.wait_processed("car", 20)
        os.kill(d.worker_pid(), signal.SIGSTOP)  # nothing comes back: every slot fills, the reader waits
        d.wait_metric(lambda m: m['perceptd_queue_depth_frames{source="car"}'] >= 4, 30, "a full queue")
        assert d.stop() == 0, d.log
    assert "reader still busy" not in d.log
    captured, processed, dropped = d.accounting()["car"]
    assert dropped > 0
