"""What one device's monitoring costs: series, samples and bytes its Prometheus agent sends upstream.

    python -m benchmarks.fleet_metrics                    # 4 cameras with a zone and a line each, 60 s
    python -m benchmarks.fleet_metrics --sources 8 --duration 120

Runs the fleet path as config/prometheus/agent.yml and central.yml ship it: perceptd (a subprocess, the
carphone sample live on every source), a Prometheus agent scraping it every 5 s and remote-writing to a
central Prometheus started here, all on 127.0.0.1. Reported: the series one perceptd exports, the samples
per second and compressed bytes per second the agent sends (its own prometheus_remote_storage_* counters,
what a site's uplink carries per device), and the agent's CPU and RSS on the device. node_exporter is not
counted (the shipped agent.yml scrapes it too: add its series, typically 300-1000, at the same interval).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "config" / "prometheus"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def wait_port(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text() if log.exists() else "")
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"{log.name}: exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise SystemExit(f"{log.name}: no port within {timeout:.0f} s")


def counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


def prometheus(tmp: Path, name: str, cfg: dict, *flags: str) -> tuple[subprocess.Popen, int]:
    (tmp / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp / f'{name}.yml'}",
                             "--web.listen-address=127.0.0.1:0", *flags],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=tmp)
    return proc, wait_port(log, r'msg="Listening on" address=\S*:(\d+)', proc)


def cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet_metrics", description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--lean", action="store_true",
                    help="drop the per-stage latency buckets in the agent, as agent.yml's comment shows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if shutil.which("prometheus") is None:
        raise SystemExit("needs Prometheus (apt install prometheus)")
    from pipeline.sources.file import resolve_sample

    clip = str(resolve_sample("sample:carphone"))
    scene = {"lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]]}],
             "zones": [{"name": "east", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}]}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="perceptd-fleet-") as tmp:
        tmp = Path(tmp)
        try:
            cfg = {"sources": [{"name": f"cam{i}", "uri": clip, "loop": True, "realtime": True, **scene}
                               for i in range(args.sources)],
                   "sinks": {"output_dir": str(tmp / "out"), "video": {"enabled": False}, "progress": "off"},
                   "metrics": {"port": 0}}
            (tmp / "perceptd.yaml").write_text(yaml.safe_dump(cfg))
            plog = tmp / "perceptd.log"
            procs.append(subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-c", str(tmp / "perceptd.yaml")],
                                          stdout=subprocess.DEVNULL, stderr=open(plog, "w"), cwd=REPO))
            port = wait_port(plog, r"metrics on http://[^\s]+:(\d+)/metrics", procs[-1])
            shutil.copy(PROM / "perceptd-rules.yml", tmp)
            central, c_port = prometheus(tmp, "central", yaml.safe_load((PROM / "central.yml").read_text()),
                                         "--web.enable-remote-write-receiver", f"--storage.tsdb.path={tmp / 'tsdb'}")
            procs.append(central)
            agent_cfg = yaml.safe_load((PROM / "agent.yml").read_text())
            agent_cfg["scrape_configs"] = [j for j in agent_cfg["scrape_configs"] if j["job_name"] == "perceptd"]
            agent_cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
            if args.lean:  # the commented block in agent.yml, uncommented
                agent_cfg["scrape_configs"][0]["metric_relabel_configs"] = [{
                    "source_labels": ["__name__"], "regex": "perceptd_stage_latency_seconds_bucket", "action": "drop"}]
            agent_cfg["remote_write"][0]["url"] = f"http://127.0.0.1:{c_port}/api/v1/write"
            agent, a_port = prometheus(tmp, "agent", agent_cfg, "--enable-feature=agent",
                                       f"--storage.agent.path={tmp / 'wal'}")
            procs.append(agent)
            time.sleep(15)  # warm-up: every source open, tracks and zones have their series, a first send
            series = sum(1 for line in get(f"http://127.0.0.1:{port}/metrics").splitlines()
                         if line and not line.startswith("#"))
            a0, (c0, _), t0 = get(f"http://127.0.0.1:{a_port}/metrics"), cpu_rss(agent.pid), time.monotonic()
            time.sleep(args.duration)
            a1, (c1, rss), span = get(f"http://127.0.0.1:{a_port}/metrics"), cpu_rss(agent.pid), time.monotonic() - t0
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait(60)
    names = ("prometheus_remote_storage_samples_total", "prometheus_remote_storage_bytes_total")
    samples, sent = ((counter(a1, n) - counter(a0, n)) / span for n in names)
    result = {"sources": args.sources, "lean": args.lean, "duration_s": round(span, 1), "series_per_perceptd": series,
              "samples_per_s": round(samples, 1), "bytes_per_s": round(sent), "agent_cores": round((c1 - c0) / span, 4),
              "agent_rss_mb": round(rss / 1e6, 1)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.sources} cameras{' (lean)' if args.lean else ''}, scraped every 5 s, {span:.0f} s: perceptd exports {series} series; the agent "
          f"sends {samples:.0f} samples/s in {sent / 1e3:.1f} kB/s ({sent * 86400 / 1e6:.0f} MB/day), "
          f"using {(c1 - c0) / span * 100:.1f}% of a core and {rss / 1e6:.0f} MB RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
