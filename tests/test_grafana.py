"""The Grafana dashboard and Prometheus files, proven against a real Prometheus scraping a running perceptd:
every PromQL expression in the dashboard must parse and return data, and reference only exported metrics."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.resources import GPU_METRICS
from tests.conftest import REPO, metrics_port
from tests.test_pipeline import wait_for
from tests.test_service import config, need, start

DASHBOARD = REPO / "config" / "grafana" / "perceptd.json"
RULES = REPO / "config" / "prometheus" / "perceptd-rules.yml"
AGENT = REPO / "config" / "prometheus" / "agent.yml"
CENTRAL = REPO / "config" / "prometheus" / "central.yml"


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    """What Grafana would send: template variables replaced by the values a dashboard user starts with."""
    for var in ("source", "job", "site", "device", "instance"):  # each starts at All
        expr = expr.replace(f"${var}", ".*")
    return expr.replace("$__rate_interval", "15s")


def test_dashboard_when_read_has_units_variables_and_the_required_panels():
    d = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert names["DS_PROMETHEUS"]["type"] == "datasource" and names["source"]["type"] == "query"
    for p in d["panels"]:
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p.get("description"), p["title"]
    text = json.dumps([e for _, e in dashboard_exprs()])
    for metric in ("perceptd_frames_captured_total", "perceptd_frames_processed_total",
                   "perceptd_end_to_end_latency_seconds_bucket", "perceptd_stage_latency_seconds",
                   "perceptd_frames_dropped_total", "perceptd_queue_depth_frames", "perceptd_source_up",
                   "perceptd_source_reconnects_total", "perceptd_worker_restarts_total",
                   "perceptd_process_cpu_seconds_total", "perceptd_process_resident_memory_bytes",
                   "perceptd_gpu_utilization_ratio", "perceptd_gpu_memory_used_bytes", "perceptd_info",
                   "perceptd_sink_up", "perceptd_worker_hangs_total", "perceptd_reloads_total",
                   "perceptd_source_stuck_reads", "perceptd_zone_objects", "perceptd_line_crossings_total",
                   "perceptd_tracks_total"):
        assert metric in text, metric
    assert all(q in text for q in ("histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"))


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # a PromQL parse error is a 400 with the reason in JSON
        return json.loads(e.read())


def prometheus_port(log: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """The port a Prometheus started with `--web.listen-address=127.0.0.1:0` bound: it logs the address it
    listens on (`msg="Listening on" address=127.0.0.1:PORT`, checked with Debian's 2.42)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r'msg="Listening on" address=\S*:(\d+)', log.read_text() if log.exists() else "")
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited {proc.returncode} before listening:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"prometheus did not report its port within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as r:  # 503 raises: not yet
        return r.status == 200


def start_prometheus(tmp_path: Path, name: str, cfg: dict, *flags: str) -> tuple[subprocess.Popen, int]:
    """A real Prometheus on a port the system picks, its config written from `cfg`; ready to answer."""
    (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / f'{name}.yml'}",
                             "--web.listen-address=127.0.0.1:0", *flags],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=tmp_path)
    try:
        port = prometheus_port(log, proc)
        # It listens before its storage is open, answering 503 (not JSON) until then: wait for /-/ready.
        wait_for(lambda: ready(port), 60, f"Prometheus {name} ready", proc)
    except BaseException:
        proc.kill()
        raise
    return proc, port


def agent_config(perceptd_port: int, device: str, central_port: int) -> dict:
    """config/prometheus/agent.yml as the Ansible role fills it in for one device: its perceptd target (named
    127.0.0.1:9108, as on every real device, so that only the device label tells two apart), its device
    name, the central receiver; scraped and sent every second so that the test need not wait long."""
    cfg = yaml.safe_load(AGENT.read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["external_labels"]["device"] = device
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "perceptd")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{perceptd_port}"], "labels": {"instance": "127.0.0.1:9108"}}]
    cfg["remote_write"][0]["url"] = f"http://127.0.0.1:{central_port}/api/v1/write"
    cfg["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
    return cfg


def test_dashboard_when_two_devices_push_through_prometheus_agents_every_expression_returns_data_per_device(
        carphone, astronaut_clip, tmp_path, cache_dir):
    """The fleet path end to end: two perceptd "devices", each scraped by its own Prometheus agent
    (config/prometheus/agent.yml) that remote-writes to a central Prometheus (central.yml, with the recording
    rules); every dashboard query, asked of the central one, returns data, and the same source name on two
    devices stays two series, told apart by the agents' device label."""
    need(shutil.which("prometheus") is not None, "Prometheus (Debian's prometheus)")
    # A zone and a line on one source, so that the tracking panels have series to show.
    scene = {"zones": [{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "labels": ["face"]}],
             "lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]], "labels": ["face"]}]}
    devices = {"jetson-a": [{"name": "car", "uri": str(carphone), "loop": True, "realtime": True, **scene},
                            {"name": "astro", "uri": str(astronaut_clip), "loop": True, "realtime": True}],
               "jetson-b": [{"name": "car", "uri": str(astronaut_clip), "loop": True, "realtime": True}]}
    procs: list[tuple[subprocess.Popen, int]] = []  # (process, exit code expected after SIGTERM)
    try:
        ports = {}
        for device, sources in devices.items():
            cfg = config(tmp_path / f"{device}.yaml", sources, tmp_path / device, 0)
            proc = start(cfg, cache_dir, tmp_path / f"{device}.log")
            procs.append((proc, 0))
            ports[device] = metrics_port(tmp_path / f"{device}.log", proc)
        shutil.copy(RULES, tmp_path / "perceptd-rules.yml")
        central_cfg = yaml.safe_load(CENTRAL.read_text())
        central_cfg["global"]["evaluation_interval"] = "1s"
        central, c_port = start_prometheus(tmp_path, "central", central_cfg, "--web.enable-remote-write-receiver",
                                           f"--storage.tsdb.path={tmp_path / 'tsdb'}")
        procs.append((central, 0))
        for device, port in ports.items():
            agent, _ = start_prometheus(tmp_path, f"agent-{device}", agent_config(port, device, c_port),
                                        "--enable-feature=agent", f"--storage.agent.path={tmp_path / device}-wal")
            procs.append((agent, 0))

        def enough_samples():
            counts = query(c_port, "count_over_time(perceptd_frames_processed_total[1m])")["data"]["result"]
            return len(counts) == 3 and min(float(r["value"][1]) for r in counts) >= 8
        wait_for(enough_samples, 90, "eight samples of every source through the agents", central)

        exported = set()
        for port in ports.values():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                exported |= {line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines()
                             if line and not line.startswith("#")}
        assert not [n for n in exported if n.endswith("_created")]  # series nothing reads, sent upstream
        problems = []
        for title, expr in dashboard_exprs():
            for name in set(re.findall(r"\bperceptd_[a-z0-9_]+", expr)):
                if name not in exported and name not in GPU_METRICS:
                    problems.append(f"{title}: {name} is not exported by perceptd")
            answer = query(c_port, concrete(expr))
            if answer.get("status") != "success":
                problems.append(f"{title}: {expr!r} does not parse: {answer.get('error')}")
            elif not answer["data"]["result"] and not any(g in expr for g in GPU_METRICS):
                problems.append(f"{title}: {expr!r} returned no data")
        assert not problems, "\n".join(problems)

        first = dashboard_exprs()[0][0]
        for expr in [e for title, e in dashboard_exprs() if title == first]:  # frames per second, in and out
            fps = query(c_port, concrete(expr))["data"]["result"]
            assert sorted((r["metric"]["device"], r["metric"]["source"]) for r in fps) == [
                ("jetson-a", "astro"), ("jetson-a", "car"), ("jetson-b", "car")], expr
            assert all(float(r["value"][1]) > 0 for r in fps), (expr, fps)  # frames flowing for all three
        # Picking one device in the dashboard shows only its sources.
        one = query(c_port, concrete(dashboard_exprs()[0][1]).replace('device=~".*"', 'device=~"jetson-b"'))
        assert [r["metric"]["device"] for r in one["data"]["result"]] == ["jetson-b"]
        # Every series the central one holds from perceptd carries the agents' labels.
        everything = query(c_port, '{__name__=~"perceptd_.+"}')["data"]["result"]
        assert len(everything) > 100
        assert not [r["metric"] for r in everything
                    if r["metric"].get("site") != "lab" or r["metric"].get("device") not in devices]
        # The device variable's values, and what runs where.
        info = query(c_port, "perceptd_info")["data"]["result"]
        assert sorted(r["metric"]["device"] for r in info) == ["jetson-a", "jetson-b"]
        assert all(r["metric"]["site"] == "lab" and r["metric"]["accelerator"] == "cpu" and r["metric"]["host"]
                   for r in info), info
        # The central recording rules keep the devices apart too.
        rule = "source:perceptd_frames_processed:rate1m"
        wait_for(lambda: len(query(c_port, rule)["data"]["result"]) == 3, 30, f"recording rule {rule}", central)
        p99 = "source:perceptd_end_to_end_latency_seconds:p99"
        wait_for(lambda: {r["metric"]["device"] for r in query(c_port, p99)["data"]["result"]} == set(devices), 30,
                 f"recording rule {p99} for both devices", central)
    finally:
        for proc, _ in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc, code in procs:
            try:
                assert proc.wait(60) == code
            finally:
                if proc.poll() is None:
                    proc.kill()


@pytest.mark.parametrize("name", ["perceptd.yml", "perceptd-rules.yml", "agent.yml", "central.yml"])
def test_prometheus_files_when_checked_by_promtool_are_valid(name):
    need(shutil.which("promtool") is not None, "promtool (Debian's prometheus)")
    kind = ["rules"] if "rules" in name else ["config", "--agent"] if name == "agent.yml" else ["config"]
    proc = subprocess.run(["promtool", "check", *kind, str(REPO / "config" / "prometheus" / name)],
                          capture_output=True, text=True, cwd=REPO / "config" / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr
