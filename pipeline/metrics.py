"""Every metric perceptd exports, on one registry. Names are perceptd_<what>_<unit>; labels stay
low-cardinality: source (config names, never URIs), stage, reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from pipeline import __version__

STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "sink")

# Latency buckets from 1 ms to 10 s: Jetson-class inference is 5-50 ms, a stalled pipeline is seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

DROP_REASONS = ("queue_full", "pipeline_full", "worker_restart", "shutdown")


class Metrics:
    """One instance per daemon; tests make their own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_latency = Histogram(
            "perceptd_stage_latency_seconds", "Time a frame spent in each pipeline stage",
            ["source", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_latency = Histogram(
            "perceptd_end_to_end_latency_seconds",
            "From capture start to the frame's results published (events written, overlay drawn for the live view)",
            ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.record_latency = Histogram(
            "perceptd_record_seconds", "Encoding and writing one frame to the video file (after its results are "
            "published, in the source's own recorder thread)", ["source"], buckets=LATENCY_BUCKETS, registry=r)
        self.frames_captured = Counter(
            "perceptd_frames_captured_total", "Frames decoded from the source", ["source"], registry=r)
        self.frames_processed = Counter(
            "perceptd_frames_processed_total", "Frames through inference with their results published",
            ["source"], registry=r)
        self.frames_dropped = Counter(
            "perceptd_frames_dropped_total", "Frames decoded but not processed, by reason",
            ["source", "reason"], registry=r)
        self.detections = Counter(
            "perceptd_detections_total", "Detections reported", ["source"], registry=r)
        self.queue_depth = Gauge(
            "perceptd_queue_depth_frames", "Frames waiting for the worker", ["source"], registry=r)
        self.source_up = Gauge(
            "perceptd_source_up", "1 while the source delivers frames, 0 while it is down", ["source"], registry=r)
        self.source_reconnects = Counter(
            "perceptd_source_reconnects_total", "Times a live source was reopened", ["source"], registry=r)
        self.batch_size = Histogram(
            "perceptd_batch_size_frames", "Frames per inference call", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r)
        self.worker_restarts = Counter(
            "perceptd_worker_restarts_total", "Times the inference worker died and was restarted", registry=r)
        self.worker_up = Gauge("perceptd_worker_up", "1 while the inference worker is ready", registry=r)
        self.preview_viewers = Gauge(
            "perceptd_preview_viewers", "Live-view clients watching the source", ["source"], registry=r)
        self.preview_frames = Counter(
            "perceptd_preview_frames_total", "JPEGs encoded for the live view (only while watched)", ["source"],
            registry=r)
        self.info = Info("perceptd", "Version and the model/engine in use", registry=r)
        self.info.info({"version": __version__, "model": "", "backend": "", "precision": "", "device": ""})

    def add_source(self, name: str) -> None:
        """Create a source's series up front so dashboards show zeros, not gaps."""
        self.frames_captured.labels(name)
        self.frames_processed.labels(name)
        self.detections.labels(name)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(name, reason)
        self.queue_depth.labels(name).set(0)
        self.source_up.labels(name).set(0)
        self.source_reconnects.labels(name)
        self.preview_viewers.labels(name).set(0)
        self.preview_frames.labels(name)

    def set_engine(self, model: str, backend: str, precision: str, device: str) -> None:
        self.info.info({"version": __version__, "model": model, "backend": backend, "precision": precision,
                        "device": device})
        self.worker_up.set(1)
