"""perceptd's command line: run | check-config | models.

Exit codes: 0 done (sources ended, or stopped by SIGINT/SIGTERM after finalising outputs); 2 bad input,
with one line saying what to fix; 1 anything unexpected, with the traceback in the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.redact import redact_text

log = logging.getLogger("perceptd")


class RedactingFormatter(logging.Formatter):
    """Credentials in URIs never reach the log, whoever formatted the message."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perceptd", description="Real-time video perception daemon.")
    p.add_argument("--version", action="version", version=f"perceptd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (built-in face model on the sample clip by default)")
    run.add_argument("-c", "--config", type=Path, help="YAML config (default: built-in defaults)")
    run.add_argument("--source", action="append", metavar="[NAME=]URI",
                     help="file, camera index or /dev/videoN, rtsp/http URL, GStreamer pipeline, sample:carphone; "
                          "repeat for several; replaces the config's sources")
    run.add_argument("--model", metavar="NAME|PATH", help="built-in model name or .onnx path")
    run.add_argument("--family", choices=["auto", "retinaface", "yolo", "classifier"], help="model family")
    run.add_argument("--labels", type=Path, help="labels file, one per line")
    run.add_argument("--backend", help="inference backend (onnxruntime)")
    run.add_argument("--output", type=Path, metavar="DIR", help="output directory")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.add_argument("--metrics-port", type=int, metavar="P", help="Prometheus port (0 picks a free one)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    chk = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, 2 if not")
    chk.add_argument("config", type=Path)

    sub.add_parser("models", help="list the built-in models")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    o: dict = {}
    if args.source:
        sources = []
        for spec in args.source:
            name, sep, uri = spec.partition("=")
            # NAME=URI only when NAME looks like a name: URIs themselves contain '=' (query strings).
            if sep and name and "/" not in name and ":" not in name:
                sources.append({"name": name, "uri": uri})
            else:
                sources.append(spec)
        o["sources"] = sources
    for flag, key in (("model", "model.name"), ("family", "model.family"), ("labels", "model.labels"),
                      ("backend", "engine.backend"), ("output", "sinks.output_dir"),
                      ("metrics_port", "metrics.port"), ("log_level", "logging.level")):
        value = getattr(args, flag)
        if value is not None:
            o[key] = str(value) if isinstance(value, Path) else value
    return o


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.progress import Progress
    from pipeline.runner import Pipeline
    from pipeline.settings import load_settings

    settings = load_settings(args.config, overrides_from(args))
    if args.max_frames is not None:
        if args.max_frames < 1:
            raise UserError("--max-frames must be at least 1")
        settings = settings.model_copy(update={"sources": tuple(
            s.model_copy(update={"max_frames": args.max_frames}) for s in settings.sources)})
    setup_logging(settings.logging.level)
    pipeline = Pipeline(settings)
    signals = {"count": 0}

    def on_signal(signum, _frame):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second %s: exiting now without finalising outputs", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping; finishing frames in flight and finalising outputs", signal.Signals(signum).name)
        pipeline.interrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pipeline.open()
    try:
        pipeline.start()
        if signals["count"]:
            pipeline.interrupt()
        pipeline.run(Progress(settings.sinks.progress, settings.sinks.log_interval_s))
    finally:
        pipeline.close(linger_s=settings.metrics.linger_s)
    if pipeline.failure is not None:
        raise pipeline.failure
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from pipeline.settings import load_settings

    s = load_settings(args.config)
    print(f"{args.config}: OK ({len(s.sources)} source(s), model {s.model.name}, backend {s.engine.backend})")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from engines.zoo import BUILTINS

    for name, b in BUILTINS.items():
        print(f"{name:12s} {b.family:11s} {b.description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # OpenCV's own warnings ("[ WARN:0@...] cap.cpp ...") would repeat, less clearly, the one line we print.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", None) or "info")
    try:
        return {"run": cmd_run, "check-config": cmd_check_config, "models": cmd_models}[args.command](args)
    except UserError as exc:
        print(f"perceptd: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("perceptd failed unexpectedly")
        return 1
