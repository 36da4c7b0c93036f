"""Every metric perceptd exports, on one registry. Names are perceptd_<what>_<unit>; labels stay
low-cardinality: source (config names, never URIs), stage, reason."""

from __future__ import annotations

import socket

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics)

from pipeline import __version__

# No *_created series: Prometheus 2.x stores each as one more series that nothing reads (rate() and increase()
# handle counter resets without it), and they were a quarter of what a device's agent sent upstream.
disable_created_metrics()

STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "sink")

# Latency buckets from 1 ms to 10 s: Jetson-class inference is 5-50 ms, a stalled pipeline is seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

# queue_full/pipeline_full: a live source outran the worker; worker_restart: in flight when the worker died;
# worker_hang: in flight when a worker that stopped answering was killed; shutdown: decoded but not processed
# when the daemon stopped; retired: in flight for a source a reload removed.
DROP_REASONS = ("queue_full", "pipeline_full", "worker_restart", "worker_hang", "shutdown", "retired")
SINKS = ("overlay", "preview", "events", "video")


class Metrics:
    """One instance per daemon; tests make their own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # The standard process_*, python_* series: process_start_time_seconds is how restarts show.
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
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
        # Per engine call, as the worker timed it. Its sum's rate is the calls in flight on average: about
        # engine.instances while frames queue up on a CPU (lanes), at most 1 one call at a time.
        self.inference_call = Histogram(
            "perceptd_inference_call_seconds", "Duration of each inference engine call (calls may overlap)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0), registry=r)
        self.worker_restarts = Counter(
            "perceptd_worker_restarts_total", "Times the inference worker died and was restarted", registry=r)
        self.worker_up = Gauge("perceptd_worker_up", "1 while the inference worker is ready", registry=r)
        self.preview_viewers = Gauge(
            "perceptd_preview_viewers", "Live-view clients watching the source", ["source"], registry=r)
        self.preview_frames = Counter(
            "perceptd_preview_frames_total", "JPEGs encoded for the live view (only while watched)", ["source"],
            registry=r)
        self.sink_errors = Counter(
            "perceptd_sink_errors_total", "Failed writes of an output (disk full, permissions, I/O errors); the "
            "output pauses and is retried", ["source", "sink"], registry=r)
        self.sink_up = Gauge(
            "perceptd_sink_up", "1 while the output writes, 0 while it is paused after an error", ["source", "sink"],
            registry=r)
        self.sink_skipped = Counter(
            "perceptd_sink_frames_skipped_total", "Processed frames an output did not write because it was paused",
            ["source", "sink"], registry=r)
        self.source_stuck_reads = Gauge(
            "perceptd_source_stuck_reads", "Reads abandoned after stall_timeout_s that are still blocked in the "
            "driver", ["source"], registry=r)
        self.worker_hangs = Counter(
            "perceptd_worker_hangs_total", "Times the inference worker answered no batch within the hang bound and "
            "was killed and restarted", registry=r)
        self.tracks = Counter(
            "perceptd_tracks_total", "Tracks confirmed (objects that got an id)", ["source", "label"], registry=r)
        self.zone_objects = Gauge(
            "perceptd_zone_objects", "Tracked objects inside a zone now", ["source", "zone", "label"], registry=r)
        self.line_crossings = Counter(
            "perceptd_line_crossings_total", "Tracks that crossed a line, by the side they went to",
            ["source", "line", "label", "direction"], registry=r)
        self.media_dropped = Counter(
            "perceptd_clip_frames_dropped_total", "Frames left out of event clips because the clip writer was "
            "behind", ["source"], registry=r)
        self.mqtt_connected = Gauge(
            "perceptd_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_dropped = Counter(
            "perceptd_mqtt_dropped_total", "MQTT messages dropped (the oldest) while the broker was away or slow",
            registry=r)
        self.webhook_sent = Counter(
            "perceptd_webhook_sent_total", "Track events POSTed to the webhook", ["result"], registry=r)
        for result in ("ok", "failed", "dropped"):
            self.webhook_sent.labels(result)
        self.reloads = Counter(
            "perceptd_reloads_total", "Configuration reloads (SIGHUP): ok, rejected (the file did not validate) or "
            "failed (the new model or engine did not load; the old one kept serving)", ["result"], registry=r)
        for result in ("ok", "rejected", "failed"):
            self.reloads.labels(result)
        self.info = Info("perceptd", "Version, the model/engine in use and the recording's codec", registry=r)
        # "accelerator", not "device": a fleet's Prometheus agents add a `device` label naming the Jetson, and a
        # series' own label would win over it (external_labels never replace a label a series has).
        self._info = {"version": __version__, "model": "", "backend": "", "precision": "", "accelerator": "",
                      "host": socket.gethostname(), "codec": "", "encoder": ""}
        self.info.info(self._info)

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
        self.source_stuck_reads.labels(name).set(0)

    def accounting(self, name: str) -> str:
        """One line that shows a source's frames conserved: captured = processed + dropped, by reason."""
        value = self.registry.get_sample_value
        captured = value("perceptd_frames_captured_total", {"source": name}) or 0
        processed = value("perceptd_frames_processed_total", {"source": name}) or 0
        drops = {r: value("perceptd_frames_dropped_total", {"source": name, "reason": r}) or 0 for r in DROP_REASONS}
        dropped = sum(drops.values())
        detail = ", ".join(f"{r} {n:.0f}" for r, n in drops.items() if n)
        text = (f"source '{name}': {captured:.0f} captured = {processed:.0f} processed + {dropped:.0f} dropped"
                + (f" ({detail})" if detail else ""))
        return text if captured == processed + dropped else text.replace(" = ", " != ", 1)

    def remove_source(self, name: str) -> None:
        """Drop every series of a source a reload removed: a source that no longer exists is not 'down'."""
        for metric in self._per_source():
            labelled = [key for key in list(metric._metrics) if key[metric._labelnames.index("source")] == name]
            for key in labelled:
                metric.remove(*key)

    def _per_source(self) -> list:
        return [m for m in vars(self).values()
                if isinstance(m, (Counter, Gauge, Histogram)) and "source" in getattr(m, "_labelnames", ())]

    def set_engine(self, model: str, backend: str, precision: str, device: str) -> None:
        self._info.update(model=model, backend=backend, precision=precision, accelerator=device)
        self.info.info(self._info)
        self.worker_up.set(1)

    def set_recording(self, codec: str, encoder: str) -> None:
        """The video sink's codec (h264, mp4v...) and the encoder writing it (libx264, nvv4l2h264enc...)."""
        self._info.update(codec=codec, encoder=encoder)
        self.info.info(self._info)
