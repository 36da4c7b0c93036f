"""What one benchmark run compares on: the clip, and the model/engine settings every measurement shares.

Every measurement gets its engine from the same place: the daemon's own settings -> WorkerSpec path, so
the engine-only loop, the plain loop and the pipeline's worker run the same model file, backend, device,
precision, input size and thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2


def load_frames(clip: str, n: int) -> tuple[list, float]:
    """The first `n` frames of a video file or sample (the daemon's own samples), decoded, and its rate."""
    if clip.startswith("sample:"):
        from pipeline.sources.file import resolve_sample

        clip = str(resolve_sample(clip))
    cap = cv2.VideoCapture(clip)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while len(frames) < n:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    if not frames:
        raise SystemExit(f"{clip}: no frames decoded")
    return frames, fps


@dataclass(frozen=True)
class Clip:
    uri: str
    path: Path
    height: int
    width: int
    fps: float
    frames: int

    @classmethod
    def probe(cls, uri: str) -> "Clip":
        from pipeline.errors import UserError
        from pipeline.sources.file import resolve_sample

        path = resolve_sample(uri) if uri.startswith("sample:") else Path(uri).expanduser()
        if not path.is_file():
            raise UserError(f"--clip {uri}: no such file")
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        ok, frame = cap.read()
        fps, frames = cap.get(cv2.CAP_PROP_FPS) or 0.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        if not ok:
            raise UserError(f"--clip {uri}: OpenCV cannot decode {path}")
        if fps <= 0:
            raise UserError(f"--clip {uri}: the file states no frame rate, which live pacing needs")
        return cls(uri, path, frame.shape[0], frame.shape[1], fps, frames)

    def first_frame(self):
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        _, frame = cap.read()
        cap.release()
        return frame


@dataclass(frozen=True)
class BenchConfig:
    clip: Clip
    model: str = "retinaface"
    backend: str = "onnxruntime"
    device: str = "auto"  # engine.device: auto, cpu or cuda
    precision: str = "fp32"
    batch: int = 4  # engine.max_batch: the largest batch the worker forms
    threads: int = 0  # engine.threads; 0 = auto (engines.base.cpu_threads)
    input_size: tuple[int, int] | None = None  # None: the model's default for the clip
    duration_s: float = 20.0  # timed part of each run
    warmup_s: float = 3.0  # run, untimed, before each timed part
    repeats: int = 3
    scratch: Path = Path(".")  # videos and JSONL events of the pipeline runs
    extra: tuple[tuple[str, object], ...] = ()  # more dotted settings (--set), e.g. pipeline.queue_size

    def overrides(self, sources: list[dict], out_dir: Path) -> dict:
        o = {"sources": sources, "model.name": self.model, "engine.backend": self.backend, "engine.device": self.device,
             "engine.max_batch": self.batch, "engine.threads": self.threads, "engine.precision": self.precision,
             "sinks.output_dir": str(out_dir), "sinks.progress": "off",
             "metrics.enabled": False}  # no HTTP server: nothing else competes for the CPU
        if self.input_size:
            o["model.input_size"] = list(self.input_size)
        o.update(self.extra)
        return o

    def settings(self, sources: list[dict], out_dir: Path):
        from pipeline.settings import load_settings

        return load_settings(None, self.overrides(sources, out_dir))

    def worker_spec(self):
        """The WorkerSpec the daemon would build for this clip (one source of it)."""
        from pipeline.spec import build_worker_spec

        settings = self.settings([{"name": "bench", "uri": self.clip.uri}], self.scratch)
        return build_worker_spec(settings, (self.clip.height, self.clip.width))
