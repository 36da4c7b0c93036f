"""engine.instances: concurrent single-threaded inference calls in the worker while frames queue up, one call on
every thread for a lone frame; real model, real decoded video, real worker processes."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

import pytest

from engines.adapters import AdapterParams
from engines.base import AUTO_INSTANCES_MAX, EngineOptions, cpu_lanes
from engines.zoo import materialise
from pipeline.errors import ConfigError
from pipeline.frame import WorkItem
from pipeline.settings import load_settings
from pipeline.shm import SlotPool
from pipeline.supervisor import WorkerClient, WorkerDied
from pipeline.worker import WorkerSpec
from tests.conftest import decoded_frames, read_jsonl, run_perceptd

LANE_LOG = re.compile(r"instances: (\d+) frame\(s\) ran in lanes \((\d+) at once\), (\d+) as a lone frame")


def spec(cache_dir, instances: int, threads: int = 2) -> WorkerSpec:
    return WorkerSpec(model_name="retinaface", model_path=str(materialise("retinaface", cache_dir)),
                      family="retinaface", labels=("face",), input_size=(320, 320),
                      params=AdapterParams(confidence=0.5, iou=0.4), backend="onnxruntime",
                      options=EngineOptions(max_batch=4, threads=threads, instances=instances),
                      batch_timeout_s=0.0, log_level=logging.INFO)


@pytest.fixture(scope="module")
def frames(carphone):
    return decoded_frames(carphone, 24)


@pytest.fixture()
def pool(frames):
    p = SlotPool(len(frames), frames[0].nbytes, "lanes")
    yield p
    p.close()


def items(pool: SlotPool, frames, indices) -> list[WorkItem]:
    out = []
    for i in indices:
        slot = pool.acquire(0)
        pool.view(slot, frames[i].shape)[:] = frames[i]
        out.append(WorkItem(0, i, pool.name, slot, pool.offset(slot), frames[i].shape[0], frames[i].shape[1],
                            time.monotonic_ns()))
    return out


def collect(worker: WorkerClient, n: int, timeout: float = 120) -> list:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(worker.results(0.2))
    return out


def lane_counts(text: str) -> tuple[int, int, int]:
    m = LANE_LOG.search(text)
    assert m, text[-3000:]
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def boxes(results) -> list[list[tuple]]:
    return [[(d.label, *d.box) for d in r.detections] for r in results]


def test_lanes_when_frames_queue_up_then_calls_overlap_answer_in_order_and_match_one_call_at_a_time(
        cache_dir, frames, pool, capfd):
    backlog = range(len(frames))
    worker = WorkerClient(spec(cache_dir, instances=2))
    info = worker.start(120)
    try:
        assert info["instances"] == 2 and info["threads_per_instance"] == 1
        t0 = time.monotonic_ns()
        worker.submit(items(pool, frames, backlog))
        results = collect(worker, len(frames))
        wall = time.monotonic_ns() - t0
    finally:
        worker.stop()
    in_lanes, at_once, lone = lane_counts(capfd.readouterr().err)
    assert at_once == 2 and in_lanes + lone == len(frames) and in_lanes >= len(frames) - 2
    # Frames of one source come back in the order they were sent, though two lanes finish as they may.
    assert [r.index for r in results] == list(backlog)
    assert all(r.batch_size == 1 for r in results)
    # Each call's duration is a wall-clock interval: more call time than wall time means calls overlapped.
    assert sum(r.inference_ns for r in results) > 1.2 * wall

    for p in range(len(frames)):
        pool.release(p)
    single = WorkerClient(spec(cache_dir, instances=1))
    assert "instances" not in single.start(120)
    try:
        single.submit(items(pool, frames, backlog))
        reference = collect(single, len(frames))
    finally:
        single.stop()
    assert sum(len(b) for b in boxes(reference)) >= len(frames) // 2  # carphone: a face in most frames
    for got, want in zip(boxes(results), boxes(reference)):  # one thread or two: the same sums, nearly
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g[0] == w[0] and max(abs(a - b) for a, b in zip(g[1:], w[1:])) < 0.5


def test_lanes_when_frames_come_one_at_a_time_then_each_gets_every_thread(cache_dir, frames, pool, capfd):
    worker = WorkerClient(spec(cache_dir, instances=2))
    worker.start(120)
    try:
        for i in range(5):  # a live camera whose next frame goes out when this result is back
            worker.submit(items(pool, frames, [i]))
            assert [r.index for r in collect(worker, 1)] == [i]
    finally:
        worker.stop()
    assert lane_counts(capfd.readouterr().err) == (0, 2, 5)


def test_lanes_when_a_lane_fails_then_the_worker_dies_and_says_so(cache_dir, frames, pool):
    worker = WorkerClient(spec(cache_dir, instances=2))
    worker.start(120)
    good = items(pool, frames, range(3))
    gone = dataclasses.replace(good[1], shm_name="perceptd-no-such-block")  # its pool was unlinked
    try:
        worker.submit([good[0], gone, good[2]])
        with pytest.raises(WorkerDied):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                worker.results(0.2)
    finally:
        worker.kill()


def test_cpu_lanes_when_auto_then_one_thread_per_call_up_to_the_cap():
    assert cpu_lanes(0, 1) == (1, 1)
    assert cpu_lanes(0, 2) == (2, 1)
    assert cpu_lanes(0, 4 * AUTO_INSTANCES_MAX) == (AUTO_INSTANCES_MAX, 4)
    assert cpu_lanes(1, 8) == (1, 8)  # one call on every thread: the old behaviour
    assert cpu_lanes(3, 8) == (3, 2)
    assert cpu_lanes(4, 2) == (4, 1)  # more calls than threads when asked: each still gets one


@pytest.mark.parametrize("value", [0, "two", True, 65])
def test_settings_when_instances_is_not_auto_or_a_count_then_the_error_names_the_line(tmp_path, value):
    cfg = tmp_path / "perceptd.yaml"
    cfg.write_text(f"sources: [{{uri: 'sample:carphone'}}]\nengine:\n  threads: 2\n  instances: {value}\n")
    with pytest.raises(ConfigError, match=r"perceptd.yaml:4: engine.instances: use auto or a whole number"):
        load_settings(cfg)


def test_daemon_when_a_file_runs_with_lanes_then_every_frame_is_published_in_order_as_without(
        carphone, tmp_path, cache_dir):
    def run(instances) -> tuple[list[dict], str]:
        cfg = tmp_path / f"i{instances}.yaml"
        out = tmp_path / f"out{instances}"
        cfg.write_text(f"engine: {{threads: 2, instances: {instances}}}\nsinks: {{video: {{enabled: false}}}}\n"
                       "metrics: {enabled: false}\n")
        proc = run_perceptd("run", "-c", str(cfg), "--source", f"car={carphone}", "--output", str(out),
                            "--log-level", "info", cache_dir=cache_dir, check=True)
        return read_jsonl(Path(out) / "car.jsonl"), proc.stderr

    lanes, log = run("auto")
    in_lanes, at_once, lone = lane_counts(log)
    assert at_once == 2 and in_lanes > 60 and in_lanes + lone == 120  # a file is read ahead: frames queue up
    single, log1 = run(1)
    assert not LANE_LOG.search(log1)
    assert [r["frame"] for r in lanes] == [r["frame"] for r in single] == list(range(120))
    faces = [sum(d["label"] == "face" for d in r["detections"]) for r in lanes]
    assert faces == [sum(d["label"] == "face" for d in r["detections"]) for r in single]
    assert sum(1 for f in faces if f) >= 0.95 * 120
