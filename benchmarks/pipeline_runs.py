"""perceptd's own pipeline, run in this process as the daemon runs it, measured from the outside.

Per-frame latencies come from the JSONL events the sinks write (latency_ms per stage and total): exact,
and no extra instrumentation. The timed window is cut by frame index: the readers' frame counters are
sampled every 0.1 s, so a frame's index says when it was captured, and a gap in the indices the events
cover is a frame the pipeline dropped. Counters from the pipeline's own metrics say why it dropped them.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.config import BenchConfig
from benchmarks.stats import percentiles, slope, windows
from pipeline.metrics import DROP_REASONS
from pipeline.resources import proc_stats

log = logging.getLogger(__name__)

STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "sink")
TICK_S = 0.1


@dataclass
class Snapshot:
    t: float
    read: dict[str, int]  # reader.frames_read: the next frame index per source
    processed: dict[str, int]  # frames the sinks have written
    cpu_s: tuple[float, float]  # CPU seconds used so far by this process (decode, sinks) and the worker


@dataclass
class Trace:
    """What was sampled while the pipeline ran."""

    marks: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (t, frames_read per source)
    pending: list[int] = field(default_factory=list)  # frames decoded and not back from the worker
    start: Snapshot | None = None
    end: Snapshot | None = None
    worker: dict = field(default_factory=dict)  # the worker's own description (backend, device, pid...)
    mean_batch: float = 0.0  # frames per inference call, over the whole run
    worker_restarts: int = 0

    def capture_times(self, name: str, indices: list[int]) -> list[float]:
        """When each frame of `name` was read, interpolated between the 0.1 s samples."""
        counts = [m[1][name] for m in self.marks]
        return [self._interpolate(counts, i) for i in indices]

    def _interpolate(self, counts: list[int], index: int) -> float:
        k = bisect.bisect_right(counts, index)
        if k == 0:
            return self.marks[0][0]
        if k == len(counts):
            return self.marks[-1][0]
        (t0, c0), (t1, c1) = (self.marks[k - 1][0], counts[k - 1]), (self.marks[k][0], counts[k])
        return t0 + (t1 - t0) * (index - c0) / max(c1 - c0, 1)


def _snapshot(p, t: float) -> Snapshot:
    readers = list(p.readers.items())
    cpu = tuple((proc_stats(pid) or (0.0, 0))[0] for pid in (os.getpid(), p.worker.pid))
    return Snapshot(t, {r.name: r.frames_read for _, r in readers},
                    {r.name: p.outputs[sid].processed for sid, r in readers}, cpu)


def run(cfg: BenchConfig, sources: list[dict], tag: str, seconds: float,
        on_tick: Callable[[object, float], None] | None = None, events: bool = True) -> tuple[Trace, dict]:
    """Run a Pipeline on `sources`: warm-up, `seconds` timed, then stop and drain. Returns the trace and
    the per-source results (see analyse; {} with events=False: the events are written, not read)."""
    from pipeline.runner import Pipeline

    out_dir = cfg.scratch / tag
    p = Pipeline(cfg.settings(sources, out_dir))
    p.open()
    trace = Trace(worker=dict(p.worker.info))
    try:
        p.start()
        t0 = time.monotonic()
        warm_end, end = t0 + cfg.warmup_s, t0 + cfg.warmup_s + seconds
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            if any(o.paused() for o in p.outputs.values()):  # a failing output pauses alone: not a result
                raise RuntimeError(f"{tag}: an output failed: {[o.paused() for o in p.outputs.values()]}")
            if p.done():
                raise RuntimeError(f"{tag}: the sources ended before the timed run did")
            snap = _snapshot(p, now - t0)
            trace.marks.append((snap.t, snap.read))
            if trace.start is None and now >= warm_end:
                trace.start = snap
            if trace.start is not None:
                trace.pending.append(p.pending())
            if on_tick is not None:
                on_tick(p, now - t0)
            if now >= end:
                trace.end = snap
                break
        p.request_stop()
        p.run(drain_timeout_s=10)
    finally:
        p.close()
    calls = _counter(p, "perceptd_batch_size_frames_count")
    trace.mean_batch = _counter(p, "perceptd_batch_size_frames_sum") / calls if calls else 0.0
    trace.worker_restarts = int(_counter(p, "perceptd_worker_restarts_total"))
    return trace, (analyse(p, trace) if events else {})


def read_events(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _counter(p, name: str, **labels) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


def analyse(p, trace: Trace) -> dict:
    """Per source: fps, offered rate, drops, and the per-frame latencies of the timed window."""
    a, b = trace.start, trace.end
    span = b.t - a.t
    out = {}
    files = {o.name: o.events.files for o in p.outputs.values()}  # a run never reuses a name: ask, not guess
    for name in a.read:
        i0, i1 = a.read[name], b.read[name]
        events = [e for f in files[name] for e in read_events(f) if i0 <= e["frame"] < i1]
        lat = {s: [e["latency_ms"][s] for e in events] for s in (*STAGES, "total")}
        # Waiting for batch-mates' pre/postprocessing, the result's trip back, the sink's queue: the part
        # of the total no stage names.
        lat["other"] = [e["latency_ms"]["total"] - sum(e["latency_ms"][s] for s in STAGES) for e in events]
        times = [t - a.t for t in trace.capture_times(name, [e["frame"] for e in events])]
        dropped_by = {r: _counter(p, "perceptd_frames_dropped_total", source=name, reason=r)
                      for r in DROP_REASONS}
        captured = _counter(p, "perceptd_frames_captured_total", source=name)
        processed = _counter(p, "perceptd_frames_processed_total", source=name)
        out[name] = {
            "fps": (b.processed[name] - a.processed[name]) / span,
            "offered_fps": (i1 - i0) / span,
            "window_frames": i1 - i0,
            "window_processed": len(events),
            "window_dropped": (i1 - i0) - len(events),
            "latencies": lat, "times": times,
            "run_dropped_by_reason": dropped_by,
            # Every decoded frame is either processed or counted as dropped, over the whole run.
            "run_unaccounted": int(captured - processed - sum(dropped_by.values())),
        }
    return out


def latency_summary(per_source: dict, window_s: float) -> dict:
    """Pooled over the sources: stage and total percentiles, drops, and the p99 drift over time."""
    pooled = {s: [v for r in per_source.values() for v in r["latencies"][s]] for s in (*STAGES, "other", "total")}
    times = [t for r in per_source.values() for t in r["times"]]
    series = windows(times, pooled["total"], window_s)
    frames = sum(r["window_frames"] for r in per_source.values())
    dropped = sum(r["window_dropped"] for r in per_source.values())
    return {
        "fps": sum(r["fps"] for r in per_source.values()),
        "offered_fps": sum(r["offered_fps"] for r in per_source.values()),
        "dropped": dropped, "drop_fraction": dropped / frames if frames else 0.0,
        "latency_ms": {s: percentiles(v) for s, v in pooled.items()},
        # ms per minute: the least-squares slope of the per-window p99 over the run.
        "p99_slope_ms_per_min": slope([t for t, _, _ in series], [q for _, q, _ in series]) * 60,
        "series": [[round(t, 3), round(q, 3), round(m, 3)] for t, q, m in series],
        "per_source_p99_ms": {n: percentiles(r["latencies"]["total"]).get("p99") for n, r in per_source.items()},
        "dropped_by_reason": {k: sum(r["run_dropped_by_reason"][k] for r in per_source.values())
                              for k in next(iter(per_source.values()))["run_dropped_by_reason"]},
        "unaccounted": sum(r["run_unaccounted"] for r in per_source.values()),
    }


def _run_facts(trace: Trace) -> dict:
    """What the pipeline itself says about the run: frames in flight, batch size, its worker."""
    pending, a, b = trace.pending, trace.start, trace.end
    span = b.t - a.t
    return {"in_flight_mean": sum(pending) / len(pending) if pending else 0.0, "mean_batch": trace.mean_batch,
            # Cores kept busy in the timed window: which process is the bottleneck.
            "cpu_cores_main": (b.cpu_s[0] - a.cpu_s[0]) / span, "cpu_cores_worker": (b.cpu_s[1] - a.cpu_s[1]) / span,
            "worker_restarts": trace.worker_restarts, "worker": {k: v for k, v in trace.worker.items() if k != "pid"}}


# the pipeline measurements --------------------------------------------------------------------------------

def _looping(name: str, cfg: BenchConfig, speed: float | None = None, detect_fps: float | None = None) -> dict:
    src = {"name": name, "uri": cfg.clip.uri, "loop": True}
    if speed is not None:
        src.update(realtime=True, speed=speed)
    if detect_fps is not None:
        src["detect_fps"] = detect_fps
    return src


def unpaced(cfg: BenchConfig, n_sources: int, tag: str) -> dict:
    """As fast as it goes: file sources wait for the pipeline, nothing is dropped."""
    names = ["bench"] if n_sources == 1 else [f"src{i}" for i in range(n_sources)]
    trace, per_source = run(cfg, [_looping(n, cfg) for n in names], tag, cfg.duration_s)
    summary = latency_summary(per_source, _window(cfg))
    summary.pop("series")
    summary.update(_run_facts(trace))
    return summary


def paced(cfg: BenchConfig, n_sources: int, target_fps_each: float, tag: str,
          detect_fps: float | None = None) -> dict:
    """Live-paced sources (drop-oldest when the pipeline falls behind), each offering target_fps_each; with
    `detect_fps`, each runs the model at most that often and the tracker predicts the frames between."""
    speed = min(1000.0, target_fps_each / cfg.clip.fps)  # the settings' bound on speed
    names = ["live"] if n_sources == 1 else [f"src{i}" for i in range(n_sources)]
    trace, per_source = run(cfg, [_looping(n, cfg, speed, detect_fps) for n in names], tag, cfg.duration_s)
    summary = latency_summary(per_source, _window(cfg))
    summary.update(target_fps=target_fps_each * n_sources, speed=speed, duration_s=trace.end.t - trace.start.t,
                   **_run_facts(trace))
    # The decoder, not the pipeline, limits what is offered when it cannot keep to the schedule.
    summary["source_limited"] = summary["offered_fps"] < 0.9 * summary["target_fps"]
    return summary


def _window(cfg: BenchConfig) -> float:
    """1 s windows for the drift slope; shorter in quick runs, so a few seconds still give ~8 windows."""
    return min(1.0, max(0.2, cfg.duration_s / 8))
