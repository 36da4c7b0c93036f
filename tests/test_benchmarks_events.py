"""The tracking and events-out benchmarks run and report sane numbers (short runs: no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, perceptd_env


def bench(module: str, *args: str, cache_dir) -> dict:
    proc = subprocess.run([sys.executable, "-m", module, *args, "--json"], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=perceptd_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_detect_rate_benchmark_when_run_briefly_compares_both_configurations(cache_dir):
    r = bench("benchmarks.detect_rate", "--sources", "2", "--duration", "2", "--warmup", "1", "--repeats", "1",
              cache_dir=cache_dir)
    assert set(r) == {"every frame", "detect_fps 5"}
    for run in r.values():
        assert run["fps"]["median"] > 0 and run["cores_worker"]["median"] >= 0
        assert run["unaccounted"]["median"] == 0  # frames conserved in both


def test_events_out_benchmark_when_run_briefly_reports_rates_and_costs(cache_dir):
    r = bench("benchmarks.events_out", "--sources", "1", "--duration", "3", cache_dir=cache_dir)
    full, plain = r["with_events_out"], r["outputs_only"]
    assert full["frames"] > 0 and plain["frames"] > 0 and full["cores_clip_writers"] >= 0
    assert full["preroll_mb"] > 0 and plain["preroll_mb"] == 0
