"""The benchmark harness: its statistics, and one real quick run whose output must be complete and sane.
The numbers themselves are never asserted: they belong to the machine (benchmarks/README.md)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import cv2
import numpy as np
import pytest

from benchmarks.__main__ import combine
from benchmarks.report import markdown
from benchmarks.stats import percentile, percentiles, slope, spread, windows
from tests.conftest import REPO, perceptd_env, run_perceptd

STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "sink", "other", "total")


# statistics ---------------------------------------------------------------------------------------------

def test_percentile_when_random_values_matches_numpy_linear():
    rng = random.Random(0)
    values = [rng.expovariate(1.0) for _ in range(1001)]
    for q in (0, 1, 50, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_when_one_value_is_that_value_and_empty_raises():
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    assert percentiles([]) == {}


def test_percentiles_when_skewed_values_are_ordered():
    p = percentiles([1, 1, 1, 2, 3, 50, 100] * 10)
    assert p["p50"] <= p["p95"] <= p["p99"]


def test_spread_when_repeats_gives_median_min_max_and_skips_missing():
    s = spread([3.0, 1.0, None, 2.0, float("nan")])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert spread([])["median"] is None


def test_slope_when_points_on_a_line_is_exact():
    xs = [0, 1, 2, 3, 4]
    assert slope(xs, [2 + 3 * x for x in xs]) == pytest.approx(3.0)
    assert slope(xs, [10 - 0.5 * x for x in xs]) == pytest.approx(-0.5)
    assert slope(xs, [4.0] * 5) == 0.0


def test_slope_when_noisy_matches_numpy_polyfit():
    rng = np.random.default_rng(1)
    xs = np.linspace(0, 10, 200)
    ys = 0.7 * xs + rng.normal(0, 2, xs.size)
    assert slope(list(xs), list(ys)) == pytest.approx(np.polyfit(xs, ys, 1)[0], rel=1e-9)


def test_slope_when_fewer_than_two_points_or_one_x_is_zero():
    assert slope([], []) == 0.0
    assert slope([1.0], [5.0]) == 0.0
    assert slope([2.0, 2.0], [1.0, 9.0]) == 0.0
    with pytest.raises(ValueError):
        slope([1, 2], [1])


def test_windows_when_latency_grows_gives_rising_p99_and_drops_thin_windows():
    times = [i * 0.01 for i in range(300)] + [3.5]  # 3 s of samples, then one lone late sample
    values = [t * 10 for t in times[:-1]] + [1000.0]
    series = windows(times, values, 1.0)
    assert [round(t, 1) for t, _, _ in series] == [0.5, 1.5, 2.5]  # the lone sample's window is dropped
    assert series[0][1] < series[1][1] < series[2][1]
    assert all(p50 <= p99 for _, p99, p50 in series)
    assert slope([t for t, _, _ in series], [q for _, q, _ in series]) == pytest.approx(10.0, rel=0.01)


def test_combine_when_repeats_summarises_every_number_recursively():
    runs = [{"fps": 10.0, "latency_ms": {"p99": 5.0}, "worker": {"backend": "x"}, "limited": False},
            {"fps": 30.0, "latency_ms": {"p99": 7.0}, "worker": {"backend": "x"}, "limited": False},
            {"fps": 20.0, "latency_ms": {"p99": 6.0}, "worker": {"backend": "x"}, "limited": False}]
    c = combine(runs)
    assert (c["fps"]["median"], c["fps"]["min"], c["fps"]["max"]) == (20.0, 10.0, 30.0)
    assert c["latency_ms"]["p99"]["median"] == 6.0
    assert c["worker"] == {"backend": "x"} and c["limited"] is False


# one real quick run -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("bench") / "run"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=REPO,
                          env=perceptd_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text()), proc


def _median(node, *path):
    for key in path:
        node = node[key]
    return node["median"]


def _ordered(latency: dict, where: str) -> None:
    p50, p95, p99 = (_median(latency, q) for q in ("p50", "p95", "p99"))
    assert 0 <= p50 <= p95 <= p99, f"{where}: {p50} {p95} {p99}"


def test_bench_when_quick_writes_every_measurement_with_positive_fps(quick_run):
    _, doc, _ = quick_run
    assert doc["command"].startswith("python -m benchmarks --quick --out ")
    assert doc["started"] and doc["machine"]["cpu"]["logical_cores"] >= 1
    assert doc["machine"]["versions"]["onnxruntime"] and doc["machine"]["versions"]["perceptd"]
    assert doc["settings"]["quick"] is True and doc["settings"]["input_size"] == [160, 192]
    r = doc["results"]
    assert set(r) >= {"decode_only", "engine_only", "plain_loop", "pipeline", "live_50", "live_200", "sources",
                      "memory"}
    assert set(r["engine_only"]) == {"batch_1", "batch_4"}
    fps = [r["decode_only"]["fps"], r["plain_loop"]["fps"], r["pipeline"]["fps"],
           *(e["fps"] for e in r["engine_only"].values()), r["live_50"]["fps"], r["live_200"]["fps"]]
    assert set(r["sources"]) == {"1", "2", "4", "8"}
    for s in r["sources"].values():
        fps += [s["paced"]["fps"], s["unpaced"]["fps"]]
    for f in fps:
        assert f["median"] > 0 and f["min"] <= f["median"] <= f["max"]


def test_bench_when_quick_reports_ordered_percentiles_for_every_stage(quick_run):
    _, doc, _ = quick_run
    r = doc["results"]
    for key, e in r["engine_only"].items():
        _ordered(e["latency_ms"], f"engine_only {key}")
    runs = {"pipeline": r["pipeline"], "live_50": r["live_50"], "live_200": r["live_200"],
            **{f"sources {n}": s["paced"] for n, s in r["sources"].items()}}
    for name, run in runs.items():
        assert set(run["latency_ms"]) == set(STAGES), name
        for stage in STAGES:
            _ordered(run["latency_ms"][stage], f"{name} {stage}")
    for load in ("live_50", "live_200"):
        live = r[load]
        assert live["series"] and all(len(point) == 3 for point in live["series"])
        assert isinstance(_median(live, "p99_slope_ms_per_min"), float)
        assert 0 <= _median(live, "drop_fraction") <= 1
        # Every decoded frame was either processed or counted as dropped, with its reason.
        assert _median(live, "unaccounted") == 0
    assert _median(r["live_200"], "target_fps") == pytest.approx(4 * _median(r["live_50"], "target_fps"))


def test_bench_when_quick_gives_ratios_targets_and_memory_samples(quick_run):
    _, doc, _ = quick_run
    for name in ("pipeline/plain_loop", "pipeline/engine_only", "pipeline/engine_only_batch_1"):
        assert doc["ratios"][name] > 0
    assert {"pipeline_vs_plain_loop", "live_50_p99", "live_200_p99", "live_200_no_drift", "rss_growth"} <= set(
        doc["targets"])
    for t in doc["targets"].values():
        assert isinstance(t["met"], bool) and isinstance(t["measured"], (int, float)) and t["what"]
    mem = doc["results"]["memory"]
    assert len(mem["samples"]) >= 10
    assert all(s[1] > 10 and s[2] > 10 for s in mem["samples"])  # MB: the daemon and the worker both sampled
    assert isinstance(mem["rss_mb_per_hour"], float)


def test_bench_when_quick_writes_markdown_tables_and_a_png(quick_run):
    out, doc, proc = quick_run
    md = (out / "results.md").read_text()
    for row in ("| decode only", "| engine only, batch 1", "| engine only, batch 4", "| plain serial loop",
                "| perceptd pipeline, unpaced", "| live 50% of engine capacity", "| live 200% of engine capacity",
                "| 8 source(s) at native fps", "| perceptd, 8 source(s) unpaced", "## Targets", "## Memory"):
        assert row in md, row
    assert md == markdown(doc)  # the markdown is made from the JSON alone
    assert md in proc.stdout
    image = cv2.imread(str(out / "results.png"))
    assert image is not None, "results.png missing or not an image (is matplotlib installed?)"
    assert image.shape[0] > 300 and image.shape[1] > 600


def test_bench_when_quick_compares_yolo_with_the_bare_engine_and_ultralytics_or_says_why_not(quick_run):
    """The YOLO section: an Ultralytics export against ONNX Runtime alone, a plain loop, Ultralytics'
    predictor and perceptd, each with a positive fps and the ratios; without Ultralytics, skipped with why."""
    out, doc, _ = quick_run
    y = doc["results"]["yolo"]
    md = (out / "results.md").read_text()
    if "skipped" in y:
        assert "ultralytics" in y["skipped"] and "## YOLO" in md
        return
    c = y["compare"]
    assert {"engine_default", "engine_worker", "plain_loop", "perceptd", "perceptd_instances_1", "ultralytics"} <= set(c)
    assert c["engine"]["family"] == "yolo" and c["engine"]["spin_wait"] == "auto"
    # The worker's engine under load, as the daemon runs it: every lane at once on a multi-core machine.
    from engines.base import cpu_lanes

    assert c["engine"].get("instances", 1) == cpu_lanes(0, c["engine"]["threads"])[0]
    assert c["engine_worker"]["fps"]["median"] > 0 and c["ratios"]["perceptd/engine_worker"] > 0
    assert (y["clip"]["width"], y["clip"]["height"]) == (768, 576)
    for name in ("engine_default", "plain_loop", "perceptd", "ultralytics"):
        assert c[name]["fps"]["median"] > 0, name
    assert c["perceptd"]["unaccounted"]["median"] == 0  # a file source: every frame processed
    for key in ("perceptd/engine_only", "perceptd/plain_loop", "perceptd/ultralytics"):
        assert c["ratios"][key] > 0
    assert "| perceptd pipeline (defaults) |" in md and "Ultralytics predict(stream=True)" in md


def test_mjpeg_server_when_two_clients_read_then_each_gets_the_clip_as_frames(tmp_path):
    """The many-cameras benchmark's cameras: every client its own stream of the clip, read by OpenCV."""
    from benchmarks.mjpeg_server import MjpegServer
    from pipeline.sources.file import resolve_sample

    server = MjpegServer(resolve_sample("sample:carphone"), fps=200, max_frames=20)
    try:
        caps = [cv2.VideoCapture(server.url(i), cv2.CAP_FFMPEG) for i in range(2)]
        for cap in caps:
            for _ in range(25):  # past the end: it loops
                ok, frame = cap.read()
                assert ok and frame.shape == (144, 176, 3)
            cap.release()
    finally:
        server.close()
    assert server.sent >= 50


def test_bench_through_perceptd_cli_when_asked_for_help_lists_its_options(cache_dir):
    proc = run_perceptd("bench", "--help", cache_dir=cache_dir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "perceptd bench" in proc.stdout


def test_bench_when_an_option_is_wrong_exits_2_with_one_line(cache_dir):
    proc = run_perceptd("bench", "--only", "nonsense", cache_dir=cache_dir, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nonsense" in proc.stderr
    proc = run_perceptd("bench", "--clip", "/nonexistent/clip.mp4", "--only", "decode", cache_dir=cache_dir,
                        timeout=60)
    assert proc.returncode == 2 and "/nonexistent/clip.mp4" in proc.stderr


def test_gpu_script_when_run_on_a_cpu_reports_each_config_and_keeps_going_past_a_failing_one(tmp_path, cache_dir):
    """The one-go CUDA script's plumbing, on this CPU machine: torch on cuda fails here and is reported as
    failed; ONNX Runtime (device auto: the CPU here) still runs, and the summary has its row."""
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--no-gpu-check", "--budget", "400",
                           "--configs", "torch-cuda-fp16,onnxruntime-retinaface", "--out", str(out),
                           "--only", "engine,plain,pipeline"],
                          cwd=REPO, env=perceptd_env(cache_dir), capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    configs = summary["configs"]
    assert configs["onnxruntime-retinaface"]["status"] == "ok"
    assert configs["torch-cuda-fp16"]["status"].startswith(("failed", "skipped"))
    doc = json.loads((out / "onnxruntime-retinaface" / "results.json").read_text())
    assert doc["results"]["pipeline"]["fps"]["median"] > 0
    table = (out / "summary.md").read_text()
    assert "| onnxruntime-retinaface | onnxruntime cpu fp32 |" in table
    assert "torch-cuda-fp16: failed" in table or "torch-cuda-fp16: skipped" in table


def test_nms_benchmark_when_quick_then_both_methods_timed_and_agree(capsys):
    from benchmarks.nms import main

    assert main(["--sizes", "10,200", "--repeats", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4 and {r[1] for r in rows} == {"numpy", "opencv"}
    assert all(float(r[-3]) > 0 and float(r[-2]) >= float(r[-3]) for r in rows)  # median <= p99
    assert "WARNING" not in out
