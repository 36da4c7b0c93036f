"""What events out cost: the MQTT message rate, and the clip writer's CPU and memory, on a busy scene.

    python -m benchmarks.events_out                     # 4 cameras x 25 fps, 20 s, clips+snapshots+MQTT
    python -m benchmarks.events_out --sources 8 --duration 30

The scene is made here from the carphone sample: its face glides across a 640x360 frame and back, over and
over, so tracks start and end, cross a line and enter and leave a zone (every kind of event). Each source
runs it live (real-time pacing). Two runs in one call, the same scene: outputs only (video, JSONL), then
with clips, snapshots and MQTT (to a mosquitto started here on 127.0.0.1, when it is installed). Reported:
MQTT messages per second (counted by a subscriber), the daemon's CPU (cores) in each run and the clip
writers' own CPU (their threads, from /proc), the pre-roll buffers' bytes, and the daemon's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np


def make_scene(path: Path, sample: Path) -> Path:
    cap = cv2.VideoCapture(str(sample))
    ok, first = cap.read()
    cap.release()
    face = cv2.resize(first, (176 * 2, 144 * 2))  # the whole carphone frame, its face large
    h, w = face.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 360))
    background = np.full((360, 640, 3), 90, np.uint8)
    xs = list(range(0, 640 - w, 8)) + list(range(640 - w, 0, -8))
    for x in xs + [None] * 30:  # then a second with nobody: tracks end, clips close
        frame = background.copy()
        if x is not None:
            frame[40:40 + h, x:x + w] = face
        out.write(frame)
    out.release()
    return path


def thread_cpu(name_prefix: str) -> float:
    """CPU seconds of this process's threads whose name starts with `name_prefix` (Linux)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid, name in names.items():
        if not name.startswith(name_prefix):
            continue
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class Broker:
    def __init__(self, workdir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        import paho.mqtt.client as mqtt

        self.count = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("perceptd/#")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()

    def _message(self, *args) -> None:
        self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.proc.terminate()
        self.proc.wait(10)


def run(scene: Path, n: int, duration: float, out: Path, media: bool, broker: Broker | None) -> dict:
    from pipeline.resources import proc_stats
    from pipeline.runner import Pipeline
    from pipeline.settings import load_settings

    scene_cfg = {"lines": [{"name": "middle", "points": [[0.5, 0], [0.5, 1]]}],
                 "zones": [{"name": "east", "polygon": [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]}]}
    o = {"sources": [{"name": f"cam{i}", "uri": str(scene), "loop": True, "realtime": True, **scene_cfg}
                     for i in range(n)],
         "sinks.output_dir": str(out), "sinks.progress": "off", "metrics.enabled": False}
    if media:
        o.update({"sinks.clips": {"enabled": True}, "sinks.snapshots": {"enabled": True}})
        if broker is not None:
            o["mqtt"] = {"host": "127.0.0.1", "port": broker.port, "device": "bench"}
    p = Pipeline(load_settings(None, o))
    p.open()
    p.start()
    time.sleep(3)  # warm-up: every source open, the first tracks started
    cpu0, t0 = proc_stats(os.getpid())[0], time.monotonic()
    media0, msgs0 = thread_cpu("media-"), broker.count if broker else 0
    time.sleep(duration)
    span = time.monotonic() - t0
    cpu1, media1 = proc_stats(os.getpid())[0], thread_cpu("media-")
    msgs = ((broker.count if broker else 0) - msgs0) / span
    preroll = sum(o.media.writer._preroll_bytes for o in p.outputs.values() if o.media is not None)
    rss = proc_stats(os.getpid())[1]
    processed = sum(o.processed for o in p.outputs.values())
    p.request_stop()
    p.run(drain_timeout_s=10)
    p.close()
    return {"cores_daemon": (cpu1 - cpu0) / span, "cores_clip_writers": (media1 - media0) / span,
            "mqtt_messages_per_s": msgs if media and broker else None, "preroll_mb": preroll / 1e6,
            "rss_mb": rss / 1e6, "frames": processed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.events_out", description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from pipeline.sources.file import resolve_sample

    with tempfile.TemporaryDirectory(prefix="perceptd-events-") as tmp:
        tmp = Path(tmp)
        scene = make_scene(tmp / "scene.avi", resolve_sample("sample:carphone"))
        broker = Broker(tmp) if shutil.which("mosquitto") else None
        try:
            plain = run(scene, args.sources, args.duration, tmp / "plain", False, None)
            full = run(scene, args.sources, args.duration, tmp / "full", True, broker)
        finally:
            if broker is not None:
                broker.close()
    result = {"sources": args.sources, "duration_s": args.duration, "outputs_only": plain, "with_events_out": full}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.sources} cameras x 25 fps, {args.duration:g} s each run")
    for name, r in (("outputs only", plain), ("+ clips, snapshots, MQTT", full)):
        mqtt = f", MQTT {r['mqtt_messages_per_s']:.1f} msg/s" if r["mqtt_messages_per_s"] is not None else ""
        print(f"  {name:26s} daemon {r['cores_daemon']:.2f} cores (clip writers {r['cores_clip_writers']:.2f}), "
              f"pre-roll {r['preroll_mb']:.1f} MB, RSS {r['rss_mb']:.0f} MB{mqtt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
