"""Progress for people: a one-line bar per file source on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, mode: str, interval_s: float, stream=None):
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = {"auto": "bar" if tty else "log"}.get(mode, mode)
        self.interval_s = interval_s if self.mode == "log" else 0.5
        self._last = time.monotonic()

    def update(self, pipeline, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.mode == "bar":
            pairs = [(pipeline.readers[sid], out) for sid, out in list(pipeline.outputs.items())]
            self.stream.write("\r" + "  ".join(self._bar(r, o) for r, o in pairs) + "\x1b[K")
            self.stream.flush()
        else:
            for sid, out in list(pipeline.outputs.items()):
                reader = pipeline.readers[sid]
                fps, e2e = out.stats()
                total = reader.source.info.frame_count if reader.source.info and not reader.live else 0
                of = f"/{total}" if total else ""
                dropped = sum(c.get() for c in _drop_counters(pipeline, reader.name))
                log.info("%s: %d%s frames processed, %.1f fps, latency %.0f ms, %d dropped", reader.name,
                         out.processed, of, fps, e2e, dropped)

    def finish(self, pipeline) -> None:
        if self.mode == "bar":
            self.update(pipeline, force=True)
            self.stream.write("\n")
            self.stream.flush()
        if self.mode != "off":
            for out in list(pipeline.outputs.values()):
                log.info("%s", out.summary())

    @staticmethod
    def _bar(reader, out) -> str:
        fps, e2e = out.stats()
        info = reader.source.info
        total = info.frame_count if info and not (reader.live or reader.settings.loop) else 0
        if total:
            frac = min(1.0, out.processed / total)
            filled = int(frac * 20)
            return f"{reader.name} [{'#' * filled}{'.' * (20 - filled)}] {out.processed}/{total} {fps:5.1f} fps"
        return f"{reader.name} {out.processed} frames {fps:5.1f} fps {e2e:4.0f} ms"


def _drop_counters(pipeline, name: str):
    from pipeline.metrics import DROP_REASONS

    return [pipeline.metrics.frames_dropped.labels(name, reason)._value for reason in DROP_REASONS]
