"""The statistics every measurement reports: percentiles, median and spread over repeats, least-squares
slopes (latency drift, memory growth), and per-window percentiles over time. Plain Python on lists: the
benchmark's own numbers must not depend on which numpy the machine has."""

from __future__ import annotations

import math
import statistics
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default 'linear' method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def percentiles(values: Sequence[float], qs: Iterable[int] = (50, 95, 99)) -> dict[str, float]:
    """{"p50": ..., "p95": ..., "p99": ...}; empty values give {} (a run that processed nothing)."""
    if not values:
        return {}
    return {f"p{q}": percentile(values, q) for q in qs}


def spread(values: Sequence[float]) -> dict:
    """Median and range over repeats: {"median", "min", "max", "n", "values"}."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": vals}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (units of y per unit of x); 0.0 with fewer than 2 distinct xs."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} xs for {len(ys)} ys")
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def windows(times_s: Sequence[float], values: Sequence[float], width_s: float, q: float = 99,
            min_count: int = 5) -> list[tuple[float, float, float]]:
    """Cut (time, value) pairs into consecutive windows of width_s: (window centre, q-th percentile,
    median) for each window holding at least min_count values (a nearly empty window's p99 is noise)."""
    if not times_s:
        return []
    start = min(times_s)
    buckets: dict[int, list[float]] = {}
    for t, v in zip(times_s, values):
        buckets.setdefault(int((t - start) // width_s), []).append(v)
    return [(start + (k + 0.5) * width_s, percentile(vs, q), percentile(vs, 50))
            for k, vs in sorted(buckets.items()) if len(vs) >= min_count]
