"""The inference worker process on its own: shared-memory frames in, batched results out."""

from __future__ import annotations

import logging
import time

import pytest

from engines.adapters import AdapterParams
from engines.base import EngineOptions
from engines.zoo import materialise
from pipeline.errors import UserError
from pipeline.frame import WorkItem
from pipeline.shm import SlotPool
from pipeline.supervisor import WorkerClient
from pipeline.worker import WorkerSpec
from tests.conftest import photo_bgr


def spec(cache_dir, max_batch=4, timeout_s=0.5, model_path=None, **kw) -> WorkerSpec:
    return WorkerSpec(model_name="retinaface", model_path=str(model_path or materialise("retinaface", cache_dir)),
                      family=kw.get("family", "retinaface"), labels=("face",), input_size=(512, 512),
                      params=AdapterParams(confidence=0.8, iou=0.4), backend="onnxruntime",
                      options=EngineOptions(max_batch=max_batch, threads=1), batch_timeout_s=timeout_s,
                      log_level=logging.WARNING)


def put_photo(pool: SlotPool, name: str, sid: int, index: int) -> WorkItem:
    image = photo_bgr(name)
    slot = pool.acquire(0)
    pool.view(slot, image.shape)[:] = image
    return WorkItem(sid, index, pool.name, slot, pool.offset(slot), image.shape[0], image.shape[1],
                    time.monotonic_ns())


def collect(worker: WorkerClient, n: int, timeout: float = 60) -> list:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(worker.results(0.2))
    return out


@pytest.fixture()
def pools():
    made = [SlotPool(4, 512 * 600 * 3, "a"), SlotPool(4, 512 * 600 * 3, "b")]
    yield made
    for p in made:
        p.close()


def test_worker_when_two_sources_have_frames_ready_batches_them_together(cache_dir, pools):
    worker = WorkerClient(spec(cache_dir))
    info = worker.start(120)
    try:
        assert info["family"] == "retinaface" and info["max_batch"] == 4 and info["pid"] != 0
        worker.submit([put_photo(pools[0], "astronaut", 0, 0)])
        worker.submit([put_photo(pools[1], "coffee", 1, 0)])  # a separate message, within the deadline
        results = collect(worker, 2)
    finally:
        worker.stop()
    assert [(r.source_id, r.batch_size) for r in results] == [(0, 2), (1, 2)]
    astronaut, coffee = results
    assert len(astronaut.detections) == 1 and astronaut.detections[0].label == "face"
    assert coffee.detections == ()
    assert astronaut.inference_ns == coffee.inference_ns > 0  # one engine call for the batch


def test_worker_when_the_batch_deadline_passes_runs_a_partial_batch(cache_dir, pools):
    worker = WorkerClient(spec(cache_dir, max_batch=4, timeout_s=0.01))
    worker.start(120)
    try:
        worker.submit([put_photo(pools[0], "astronaut", 0, 7)])
        results = collect(worker, 1)
    finally:
        worker.stop()
    assert len(results) == 1 and results[0].batch_size == 1 and results[0].index == 7


def test_worker_when_a_backlog_arrives_without_a_deadline_batches_it_up_to_the_limit(cache_dir, pools):
    worker = WorkerClient(spec(cache_dir, max_batch=2, timeout_s=0.0))
    worker.start(120)
    try:
        worker.submit([put_photo(pools[0], "astronaut", 0, i) for i in range(3)])
        results = collect(worker, 3)
    finally:
        worker.stop()
    assert [(r.index, r.batch_size) for r in results] == [(0, 2), (1, 2), (2, 1)]
    assert all(len(r.detections) == 1 for r in results)


def test_worker_when_killed_reports_its_death(cache_dir):
    import os
    import signal

    from pipeline.supervisor import WorkerDied
    from pipeline.worker import WORKER_NICE

    worker = WorkerClient(spec(cache_dir))
    worker.start(120)
    # It runs below the daemon's priority, so decoding and publishing win a contended core.
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerDied):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            worker.results(0.2)
    worker.kill()


def test_worker_when_worker_nice_is_0_then_runs_at_the_daemons_priority(cache_dir):
    import dataclasses
    import os

    worker = WorkerClient(dataclasses.replace(spec(cache_dir), nice=0))
    worker.start(120)
    try:
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        worker.kill()


def test_worker_when_the_model_is_not_a_model_raises_a_user_error(cache_dir, tmp_path):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)  # passes the cheap header check, not ONNX
    worker = WorkerClient(spec(cache_dir, model_path=bogus, family="auto"))
    with pytest.raises(UserError, match="bogus.onnx"):
        worker.start(120)
    worker.kill()
