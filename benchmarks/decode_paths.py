"""CPU per decoded frame, FFmpeg against GStreamer (the decoder `sources[].decoder: auto` picks), on one clip.

    python -m benchmarks.decode_paths --clip sample:bigbuckbunny
    /usr/bin/python3 -m benchmarks.decode_paths ...   # where only the system OpenCV has GStreamer

Each path decodes the clip's frames (up to --frames) into BGR, as perceptd's reader does, --repeats times,
alternating; reported per path: the process's CPU time per frame (every thread: decoders run several) and
the wall time per frame, median and range over repeats. On a Jetson the GStreamer path is NVDEC: the
difference is the CPU the reader no longer spends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2


def decode(capture: cv2.VideoCapture, frames: int) -> tuple[int, float, float]:
    cpu0, wall0, n = time.process_time(), time.perf_counter(), 0
    while n < frames:
        ok, _ = capture.read()
        if not ok:
            break
        n += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    capture.release()
    return n, cpu, wall


def main(argv: list[str] | None = None) -> int:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pipeline.sources import gst
    from pipeline.sources.csi import opencv_has_gstreamer
    from pipeline.sources.file import resolve_sample

    ap = argparse.ArgumentParser(prog="python -m benchmarks.decode_paths", description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="sample:bigbuckbunny")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = resolve_sample(args.clip) if args.clip.startswith("sample:") else Path(args.clip)
    probe = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    codec = gst.codec_of(probe.get(cv2.CAP_PROP_FOURCC))
    probe.release()
    paths = {"ffmpeg": lambda: cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)}
    decoder = ""
    if opencv_has_gstreamer():
        pipeline, decoder = gst.build(str(path), codec, live=False)
        paths["gstreamer"] = lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    runs: dict[str, list] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, open_ in paths.items():
            runs[name].append(decode(open_(), args.frames))
    result = {"clip": str(path), "codec": codec, "opencv": cv2.__version__, "gstreamer_decoder": decoder, "paths": {}}
    for name, rs in runs.items():
        cpu = [c / n * 1e3 for n, c, _ in rs if n]
        wall = [w / n * 1e3 for n, _, w in rs if n]
        result["paths"][name] = {"frames": rs[0][0], "cpu_ms_per_frame": statistics.median(cpu),
                                 "cpu_range": [min(cpu), max(cpu)], "wall_ms_per_frame": statistics.median(wall)}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{path.name} ({codec}), OpenCV {cv2.__version__}, {args.repeats} x {args.frames} frames")
    for name, r in result["paths"].items():
        label = f"gstreamer ({decoder})" if name == "gstreamer" else name
        print(f"  {label:32s} CPU {r['cpu_ms_per_frame']:.2f} ms/frame ({r['cpu_range'][0]:.2f}-{r['cpu_range'][1]:.2f}), "
              f"wall {r['wall_ms_per_frame']:.2f} ms/frame")
    if "gstreamer" not in result["paths"]:
        print("  (this OpenCV has no GStreamer: run it with one that has, e.g. /usr/bin/python3 on Debian)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
