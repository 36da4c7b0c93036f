"""What recording costs: CPU time per frame of each video encoder this Python can run, at 720p.

    python -m benchmarks.encoders                        # sample:bigbuckbunny (1280x720), every encoder here
    python -m benchmarks.encoders --encoders libx264,mp4v --frames 300 --repeats 5
    /usr/bin/python3 -m benchmarks.encoders --clip /path/to/bigbuckbunny.mp4   # a GStreamer-enabled OpenCV

Every candidate of `sinks.video.codec: auto` is probed as the daemon probes it; those that work here encode
the clip's first frames (decoded once, held in memory, looped) into a file in a temporary directory, exactly
as the recorder does (the writer's `write` per frame, `close` at the end). Reported per encoder: the process's
CPU time per frame over the whole file, close (the encoder's drain) included, which counts the encoder's own
threads; the per-write CPU and wall time, median and p99 (a frame-threaded encoder spreads work over later
calls, so per-write CPU is the calling thread's view); and the bitrate the file came out at. Warm-up frames
are written first, untimed. Median and range over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2

from benchmarks.config import load_frames
from benchmarks.stats import percentiles, spread


def measure(encoder, frames: list, fps: float, count: int, warmup: int, directory: Path) -> dict:
    h, w = frames[0].shape[:2]
    path = directory / f"bench-{encoder.name}.mp4"
    writer = encoder.open(path, fps, (w, h))
    for i in range(warmup):
        writer.write(frames[i % len(frames)])
    cpu_ms, wall_ms = [], []
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    for i in range(warmup, warmup + count):
        c, t = time.process_time_ns(), time.perf_counter_ns()
        writer.write(frames[i % len(frames)])
        cpu_ms.append((time.process_time_ns() - c) / 1e6)
        wall_ms.append((time.perf_counter_ns() - t) / 1e6)
    writer.close()
    total_cpu = (time.process_time_ns() - cpu0) / 1e6
    total_wall = (time.perf_counter_ns() - wall0) / 1e6
    size = path.stat().st_size
    path.unlink()
    return {"cpu_ms_per_frame": total_cpu / count, "wall_ms_per_frame": total_wall / count,
            "write_cpu_ms": percentiles(cpu_ms, (50, 99)), "write_wall_ms": percentiles(wall_ms, (50, 99)),
            # the warm-up frames are in the file too
            "mbit_s": size * 8 / ((warmup + count) / fps) / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="sample:bigbuckbunny", help="a video file, or sample:<name> (1280x720 "
                    "default)")
    ap.add_argument("--encoders", default="", help="comma-separated encoder names (libx264, x264enc, "
                    "openh264enc, nvv4l2h264enc, h264_nvenc, avc1, mp4v); default: every one that works here")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per repeat")
    ap.add_argument("--warmup", type=int, default=25, help="untimed frames first (encoder start, lookahead)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--held", type=int, default=60, help="frames decoded and held in memory (looped)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)

    from pipeline import encoders

    frames, fps = load_frames(args.clip, args.held)
    wanted = {n for n in args.encoders.split(",") if n}
    results = {}
    with tempfile.TemporaryDirectory(prefix="perceptd-bench-") as tmp:
        directory = Path(tmp)
        for encoder in [*encoders.candidates("auto"), encoders.OpenCVEncoder("avc1")]:
            if wanted and encoder.name not in wanted:
                continue
            why = encoders.probe(encoder, directory, ".mp4")
            if why is not None:
                results[encoder.name] = {"skipped": why}
                continue
            runs = [measure(encoder, frames, fps, args.frames, args.warmup, directory) for _ in range(args.repeats)]
            results[encoder.name] = {
                "encoder": str(encoder),
                "cpu_ms_per_frame": spread([r["cpu_ms_per_frame"] for r in runs]),
                "wall_ms_per_frame": spread([r["wall_ms_per_frame"] for r in runs]),
                "write_cpu_ms_p50": spread([r["write_cpu_ms"]["p50"] for r in runs]),
                "write_cpu_ms_p99": spread([r["write_cpu_ms"]["p99"] for r in runs]),
                "write_wall_ms_p50": spread([r["write_wall_ms"]["p50"] for r in runs]),
                "write_wall_ms_p99": spread([r["write_wall_ms"]["p99"] for r in runs]),
                "mbit_s": spread([r["mbit_s"] for r in runs]),
            }
    h, w = frames[0].shape[:2]
    meta = {"clip": args.clip, "size": f"{w}x{h}", "fps": fps, "frames": args.frames, "repeats": args.repeats,
            "cores": os.cpu_count(), "opencv": cv2.__version__}
    if args.json:
        print(json.dumps({"meta": meta, "encoders": results}))
        return 0
    print(f"{meta['size']} at {fps:g} fps, {args.frames} frames x {args.repeats} repeats, {meta['cores']} cores, "
          f"OpenCV {cv2.__version__}")
    print(f"{'encoder':<44} {'CPU ms/frame':>13} {'write CPU p50/p99':>18} {'write wall p50/p99':>19} {'Mbit/s':>7}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<44} skipped: {r['skipped']}")
            continue
        med = lambda k: r[k]["median"]  # noqa: E731
        print(f"{r['encoder']:<44} {med('cpu_ms_per_frame'):>13.2f} "
              f"{med('write_cpu_ms_p50'):>8.2f}/{med('write_cpu_ms_p99'):<9.2f} "
              f"{med('write_wall_ms_p50'):>8.2f}/{med('write_wall_ms_p99'):<10.2f} {med('mbit_s'):>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
