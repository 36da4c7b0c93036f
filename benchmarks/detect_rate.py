"""What a detection rate saves: N live cameras at their frame rate, the model on every frame against the model
`detect_fps` times a second with the tracker predicting the frames between, in the same run.

    python -m benchmarks.detect_rate                          # 8 cameras x 25 fps, every frame vs 5 per second
    python -m benchmarks.detect_rate --sources 8 --fps 25 --detect-fps 5 --duration 20 --repeats 3

Reports per configuration (median and range over repeats): processed and offered fps, frames the model saw,
drops, end-to-end p50/p99, and the cores kept busy by the daemon and by the inference worker.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.stats import spread


def measure(cfg, sources: int, fps: float, detect_fps: float | None, tag: str) -> dict:
    from benchmarks.pipeline_runs import paced

    r = paced(cfg, sources, fps, tag, detect_fps=detect_fps)
    return {"fps": r["fps"], "offered_fps": r["offered_fps"], "drop_fraction": r["drop_fraction"],
            "mean_batch": r["mean_batch"], "p50_ms": r["latency_ms"]["total"].get("p50"),
            "p99_ms": r["latency_ms"]["total"].get("p99"), "cores_main": r["cpu_cores_main"],
            "cores_worker": r["cpu_cores_worker"], "unaccounted": r["unaccounted"]}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.config import BenchConfig, Clip

    ap = argparse.ArgumentParser(prog="python -m benchmarks.detect_rate", description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="sample:carphone")
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--fps", type=float, default=25.0, help="each camera's frame rate")
    ap.add_argument("--detect-fps", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results: dict = {"every frame": [], f"detect_fps {args.detect_fps:g}": []}
    with tempfile.TemporaryDirectory(prefix="perceptd-detect-rate-") as scratch:
        cfg = BenchConfig(Clip.probe(args.clip), duration_s=args.duration, warmup_s=args.warmup, scratch=Path(scratch))
        for i in range(args.repeats):  # interleaved: a drifting machine affects both alike
            for name, rate in (("every frame", None), (f"detect_fps {args.detect_fps:g}", args.detect_fps)):
                results[name].append(measure(cfg, args.sources, args.fps, rate, f"{i}-{rate}"))
    summary = {name: {k: spread([r[k] for r in runs if r[k] is not None]) for k in runs[0]}
               for name, runs in results.items()}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.sources} sources x {args.fps:g} fps of {args.clip}, {args.repeats} x {args.duration:g} s each")
    for name, s in summary.items():
        m = {k: v["median"] for k, v in s.items()}
        print(f"  {name:15s} processed {m['fps']:6.1f} of {m['offered_fps']:6.1f} fps offered, drops "
              f"{m['drop_fraction']:.1%}, e2e p50 {m['p50_ms']:.1f} / p99 {m['p99_ms']:.1f} ms, cores: daemon "
              f"{m['cores_main']:.2f} + worker {m['cores_worker']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
