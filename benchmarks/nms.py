"""Class-wise NMS: the numpy greedy loop against OpenCV's NMSBoxes, both on class_regions' boxes.

    python -m benchmarks.nms [--sizes 10,100,1000,5000] [--classes 80] [--repeats 300] [--warmup 20]

Candidates are clustered as a detector emits them (several overlapping boxes around each object, some
with negative or out-of-frame coordinates) on a 640x640 input. Each call is timed alone with
perf_counter_ns, after untimed warm-up calls; the table gives the median and p99 per call in microseconds.
`nms()` in engines/adapters/base.py uses whichever this shows faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.stats import percentile
from engines.adapters.base import class_regions, nms_greedy, nms_opencv

IOU = 0.45


def candidates(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes x1y1x2y2, scores, class ids): n boxes around n/8 objects, jittered, some past the frame."""
    objects = max(1, n // 8)
    centres = rng.uniform(-40, 680, (objects, 2))
    sizes = rng.uniform(10, 300, (objects, 2))
    pick = rng.integers(0, objects, n)
    c = centres[pick] + rng.normal(0, 6, (n, 2))
    s = sizes[pick] * rng.uniform(0.85, 1.15, (n, 2))
    boxes = np.hstack([c - s / 2, c + s / 2]).astype(np.float32)
    obj_class = rng.integers(0, classes, objects)
    return boxes, rng.uniform(0.25, 1.0, n).astype(np.float32), obj_class[pick]


def time_calls(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000,5000", help="candidate counts (after the confidence filter)")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    methods = {"numpy greedy": nms_greedy, "opencv NMSBoxes": nms_opencv}
    print(f"class-wise NMS, {args.classes} classes, IoU {IOU}; microseconds per call, {args.repeats} calls "
          f"after {args.warmup} warm-up")
    print(f"{'boxes':>6} {'method':<16} {'median':>10} {'p99':>10} {'kept':>6}")
    for n in (int(v) for v in args.sizes.split(",")):
        boxes, scores, class_ids = candidates(n, args.classes, rng)
        kept = {}
        for name, fn in methods.items():
            # class_regions is part of the cost: it runs on every call in nms().
            call = lambda fn=fn: fn(class_regions(boxes, class_ids), scores, IOU)  # noqa: E731
            kept[name] = call()
            us = time_calls(call, args.repeats, args.warmup)
            print(f"{n:>6} {name:<16} {percentile(us, 50):>10.1f} {percentile(us, 99):>10.1f} {len(kept[name]):>6}")
        first, *others = kept.values()
        if any(sorted(first.tolist()) != sorted(o.tolist()) for o in others):
            print(f"{n:>6} WARNING: the methods kept different boxes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
