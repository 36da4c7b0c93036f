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


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    """What Grafana would send: template variables replaced by the values a dashboard user starts with."""
    return expr.replace("$__rate_interval", "15s").replace("$source", ".*")


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


def test_dashboard_when_a_real_prometheus_scrapes_perceptd_every_expression_returns_data(
        carphone, astronaut_clip, tmp_path, cache_dir):
    need(shutil.which("prometheus") is not None, "Prometheus (Debian's prometheus)")
    # A zone and a line on one source, so that the tracking panels have series to show.
    scene = {"zones": [{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "labels": ["face"]}],
             "lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]], "labels": ["face"]}]}
    sources = [{"name": "car", "uri": str(carphone), "loop": True, "realtime": True, **scene},
               {"name": "astro", "uri": str(astronaut_clip), "loop": True, "realtime": True}]
    cfg = config(tmp_path / "c.yaml", sources, tmp_path / "out", 0)
    proc = start(cfg, cache_dir, tmp_path / "perceptd.log")
    try:
        port = metrics_port(tmp_path / "perceptd.log", proc)
    except BaseException:
        proc.kill()
        proc.wait(60)
        raise
    shutil.copy(RULES, tmp_path / "perceptd-rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["perceptd-rules.yml"],
        "scrape_configs": [{"job_name": "perceptd", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--web.listen-address=127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    try:
        prom_port = prometheus_port(tmp_path / "prometheus.log", prom)
        # It listens before its storage is open, answering 503 (not JSON) until then: wait for /-/ready.
        wait_for(lambda: ready(prom_port), 60, "Prometheus ready", prom)
        wait_for(lambda: query(prom_port, 'up{job="perceptd"} == 1')["data"]["result"], 60, "a first scrape", prom)
        wait_for(lambda: query(prom_port, 'count_over_time(perceptd_frames_processed_total[1m])')["data"]["result"]
                 and min(float(r["value"][1]) for r in query(
                     prom_port, 'count_over_time(perceptd_frames_processed_total[1m])')["data"]["result"]) >= 8,
                 60, "eight scrapes", prom)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            exported = {line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines()
                        if line and not line.startswith("#")}
        problems = []
        for title, expr in dashboard_exprs():
            for name in set(re.findall(r"\bperceptd_[a-z0-9_]+", expr)):
                if name not in exported and name not in GPU_METRICS:
                    problems.append(f"{title}: {name} is not exported by perceptd")
            answer = query(prom_port, concrete(expr))
            if answer.get("status") != "success":
                problems.append(f"{title}: {expr!r} does not parse: {answer.get('error')}")
            elif not answer["data"]["result"] and not any(g in expr for g in GPU_METRICS):
                problems.append(f"{title}: {expr!r} returned no data")
        for rule in ("source:perceptd_end_to_end_latency_seconds:p99", "source:perceptd_frames_processed:rate1m"):
            wait_for(lambda rule=rule: query(prom_port, rule)["data"]["result"], 30, f"recording rule {rule}", prom)
        assert not problems, "\n".join(problems)
        first = dashboard_exprs()[0][0]
        for expr in [e for title, e in dashboard_exprs() if title == first]:  # frames per second, in and out
            fps = query(prom_port, concrete(expr))["data"]["result"]
            assert {r["metric"]["source"] for r in fps} == {"car", "astro"}, expr
            assert all(float(r["value"][1]) > 0 for r in fps), (expr, fps)  # frames flowing for both
    finally:
        prom.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        prom.wait(30)
        assert proc.wait(60) == 0


@pytest.mark.parametrize("name", ["perceptd.yml", "perceptd-rules.yml"])
def test_prometheus_files_when_checked_by_promtool_are_valid(name):
    need(shutil.which("promtool") is not None, "promtool (Debian's prometheus)")
    kind = "rules" if "rules" in name else "config"
    proc = subprocess.run(["promtool", "check", kind, str(REPO / "config" / "prometheus" / name)],
                          capture_output=True, text=True, cwd=REPO / "config" / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr
