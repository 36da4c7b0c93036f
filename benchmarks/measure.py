"""The in-process baselines the pipeline is compared with: decode only, engine only, a plain serial loop.

Each is time-boxed: it runs untimed for the warm-up, then counts frames for the timed duration, so every
measurement covers the same wall-clock span whatever the machine's speed. The engine and adapter come
from the worker's own construction (pipeline.worker._Runner, which also does the worker's warm-up call),
so the baselines run exactly what the pipeline's worker runs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.config import BenchConfig
from benchmarks.stats import percentiles

_MS = 1e-6


class Frames:
    """The clip decoded in a loop, as a user's code reads it (cv2.VideoCapture, rewound at the end)."""

    def __init__(self, cfg: BenchConfig):
        self._path = str(cfg.clip.path)
        self._cap = cv2.VideoCapture(self._path, cv2.CAP_FFMPEG)

    def read(self) -> np.ndarray:
        ok, frame = self._cap.read()
        if not ok:
            # Seeking to 0 is what the pipeline's looping file source does too.
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        return frame

    def close(self) -> None:
        self._cap.release()


def _timed(step, cfg: BenchConfig) -> tuple[int, float]:
    """Call step() for the warm-up, then for the duration: (calls in the timed part, seconds)."""
    end_warmup = time.perf_counter() + cfg.warmup_s
    while time.perf_counter() < end_warmup:
        step()
    n, t0 = 0, time.perf_counter()
    end = t0 + cfg.duration_s
    while True:
        step()
        n += 1
        now = time.perf_counter()
        if now >= end:
            return n, now - t0


def decode_only(cfg: BenchConfig) -> dict:
    frames = Frames(cfg)
    try:
        n, seconds = _timed(frames.read, cfg)
    finally:
        frames.close()
    return {"fps": n / seconds, "frames": n, "seconds": seconds}


def load_runner(cfg: BenchConfig, spin_wait: bool = False):
    """The worker's engine + adapter, built in this process from the same WorkerSpec the daemon builds
    (`spin_wait` True: ONNX Runtime's default session, one call on every thread spinning, for the plain loop)."""
    from pipeline.worker import _Runner

    spec, _ = cfg.worker_spec()
    if spin_wait:
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, spin_wait=True, instances=1))
    return _Runner(spec)


def prepared_batch(runner, cfg: BenchConfig) -> np.ndarray:
    """max_batch copies of the clip's first frame, preprocessed, in the engine's input dtype."""
    frame = cfg.clip.first_frame()
    for i in range(runner.max_batch):
        runner.adapter.preprocess(frame, runner.batch[i])
    return runner.batch.astype(runner.input_dtype, copy=True)


def engine_only(runner, cfg: BenchConfig, batch: int) -> dict:
    """engine.infer on prepared input in a tight loop: fps (frames/s) and per-call latency."""
    x = np.ascontiguousarray(prepared_batch(runner, cfg)[:batch])
    calls: list[int] = []
    runner.engine.set_busy(True)  # a tight loop: each call's input is waiting, as a busy worker's is

    def step():
        t0 = time.perf_counter_ns()
        runner.engine.infer(x)  # backends return host arrays: the call includes the device sync
        calls.append(time.perf_counter_ns() - t0)

    n, seconds = _timed(step, cfg)
    latencies = [ns * _MS for ns in calls[-n:]]
    return {"batch": batch, "fps": n * batch / seconds, "calls": n, "seconds": seconds,
            "latency_ms": percentiles(latencies), "latency_ms_mean": sum(latencies) / n}


def plain_loop(runner, cfg: BenchConfig, video_path) -> dict:
    """read -> preprocess -> run -> postprocess -> draw -> write, one frame at a time, one thread: the
    loop most users write, with the pipeline's model, adapter, engine, overlay and video settings."""
    from pipeline.settings import load_settings
    from pipeline.sinks.overlay import draw

    from pipeline import encoders

    sinks = load_settings(None).sinks
    frames = Frames(cfg)
    # The encoder the pipeline's recorder gets with the same settings (H.264 where it can).
    encoder = encoders.choose(sinks.video.codec, sinks.video.extension, Path(video_path).parent)
    writer = encoder.open(Path(video_path), cfg.clip.fps, (cfg.clip.width, cfg.clip.height))
    x = runner.batch[:1]
    adapter, engine = runner.adapter, runner.engine

    def step():
        frame = frames.read()
        fit = adapter.preprocess(frame, x[0])
        outputs = engine.infer(x.astype(runner.input_dtype, copy=False))
        detections = adapter.postprocess([o[0] for o in outputs], fit)
        draw(frame, tuple(detections), sinks.overlay, "plain loop")
        writer.write(frame)

    try:
        n, seconds = _timed(step, cfg)
    finally:
        writer.close()
        frames.close()
    return {"fps": n / seconds, "frames": n, "seconds": seconds}


def describe_engine(runner) -> dict:
    d = runner.describe()
    d.pop("pid", None)
    return d
