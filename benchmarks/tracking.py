"""The tracker's cost per frame at 10, 50 and 200 boxes, on one core (goal: under 1 ms at 50).

    python -m benchmarks.tracking                     # 3 repeats of 600 frames per box count
    python -m benchmarks.tracking --boxes 50 --frames 2000 --repeats 5

Objects move at constant velocity with jitter, 5% of detections are missed each frame and scores spread
from 0.3 to 1 (both ByteTrack associations run). The process is pinned to one core and numpy's BLAS to one
thread, as the daemon's main process would give it. Reports the median and p99 of the per-frame update
time over the timed frames (after a warm-up), median and range over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks.stats import percentiles, spread


def scene(n: int, frames: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, 1800, (n, 2))
    vel = rng.normal(0, 3, (n, 2))
    half = rng.uniform(10, 40, (n, 1)) * np.array([1.0, 2.0])  # person-shaped
    out = []
    for _ in range(frames):
        pos = pos + vel
        seen = rng.random(n) > 0.05
        centre = pos[seen] + rng.normal(0, 1, (int(seen.sum()), 2))
        boxes = np.concatenate([centre - half[seen], centre + half[seen]], axis=1)
        out.append((boxes, rng.uniform(0.3, 1.0, len(boxes)), ["person"] * len(boxes)))
    return out


def measure(n: int, frames: int, seed: int, warmup: int = 50) -> dict:
    from pipeline.tracking import Tracker

    data = scene(n, frames + warmup, seed)
    tracker = Tracker()
    times = []
    for k, (boxes, scores, labels) in enumerate(data):
        t0 = time.perf_counter_ns()
        tracker.update(boxes, scores, labels)
        if k >= warmup:
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return percentiles(times, (50, 99))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", default="10,50,200", help="comma-separated box counts")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # numpy's small ops here do not use BLAS threads anyway
        pass
    results = {}
    for n in (int(x) for x in args.boxes.split(",")):
        runs = [measure(n, args.frames, seed) for seed in range(args.repeats)]
        results[n] = {q: spread([r[q] for r in runs]) for q in ("p50", "p99")}
        if not args.json:
            p50, p99 = results[n]["p50"], results[n]["p99"]
            print(f"{n:4d} boxes: per frame p50 {p50['median']:.3f} ms ({p50['min']:.3f}-{p50['max']:.3f}), "
                  f"p99 {p99['median']:.3f} ms ({p99['min']:.3f}-{p99['max']:.3f}), one core, "
                  f"{args.repeats} x {args.frames} frames")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
