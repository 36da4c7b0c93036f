"""Strict models of the YAML config, one class per section.

Unknown keys are rejected with the nearest valid key suggested; every error names the file, the YAML line,
the key path and the bad value. No singletons: `load_settings` returns a frozen Settings to pass around.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator

from engines.cache import default_cache_dir
from pipeline.errors import ConfigError
from pipeline.per_label import Area, Confidence
from pipeline.secrets import ExpandError, expand_tree
from pipeline.settings_errors import describe, dotted as dotted_key
from pipeline.settings_events import MqttSettings, WebhookSettings
from pipeline.settings_tracking import SceneSettings, Strict, TrackingSettings
from pipeline.settings_video import CODEC_HELP, Codec, SegmentSeconds, VideoSinkSettings
from pipeline.yamlpos import line_for, load_yaml_with_lines

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SourceSettings(SceneSettings):
    name: str = Field(description="Unique name: output file names, metric labels, JSONL 'source'")
    uri: str = Field(min_length=1, description="File path, camera index or /dev/videoN, rtsp/http URL, "
                     "GStreamer pipeline, or sample:carphone")
    kind: Literal["auto", "file", "camera", "network", "gstreamer"] = "auto"
    decoder: Literal["auto", "ffmpeg", "gstreamer"] = Field(
        "auto", description="Files and RTSP: auto = through GStreamer when this OpenCV has it and a hardware "
        "decoder exists for the codec (NVDEC, VA-API), else FFmpeg; ffmpeg; gstreamer (required, software too)")
    loop: bool = Field(False, description="Files: start again at the end instead of finishing")
    realtime: bool = Field(False, description="Files: pace at the native frame rate (then behaves as live)")
    speed: float = Field(1.0, gt=0, le=1000, description="Files with realtime: pace multiplier")
    max_frames: Optional[int] = Field(None, ge=1, description="Stop this source after N frames")
    open_timeout_s: float = Field(10.0, gt=0, le=600, description="Network sources: connect timeout")
    stall_timeout_s: float = Field(30.0, gt=0, le=3600, description="Live sources: no frame this long means "
                                   "stalled, reconnect (generous for sparse cameras)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use 1-64 letters, digits, '_', '.' or '-'")
        return v

    @property
    def resolved_kind(self) -> str:
        return self.kind if self.kind != "auto" else guess_kind(self.uri)


class ModelSettings(Strict):
    name: str = Field("retinaface", min_length=1, description="Built-in model name, or path to an .onnx file "
                      "(.pt/.pt2 with the torch backend)")
    family: Literal["auto", "retinaface", "yolo", "classifier"] = "auto"
    labels: Optional[Path] = Field(None, description="Text file, one label per line")
    input_size: Optional[tuple[int, int]] = Field(None, description="[height, width] fed to the network")
    confidence: Confidence = Field(None, description="Minimum score: a number, or per label {person: 0.6, "
                                   "default: 0.4}; unset (and unnamed labels without a default): the family's")
    min_area: Area = Field(0.0, description="Smallest box kept, source pixels (below 1: a fraction of the frame); "
                           "a number or per label {person: 2000, default: 0}; 0: no limit")
    max_area: Area = Field(0.0, description="Largest box kept, as min_area; 0: no limit")
    iou: float = Field(0.45, ge=0, le=1, description="NMS overlap threshold")
    max_detections: int = Field(100, ge=1, le=10000)
    top_k: int = Field(5, ge=1, le=1000, description="Classifiers: classes reported per frame")
    classes: tuple[str, ...] = Field((), description="Keep only these labels (empty: all)")
    mean: Optional[tuple[float, float, float]] = Field(
        None, description="Classifiers: RGB mean subtracted from pixels scaled to [0, 1]; null: ImageNet's")
    std: Optional[tuple[float, float, float]] = Field(
        None, description="Classifiers: RGB std the centred pixels are divided by; null: ImageNet's")
    resize: Literal["crop", "stretch"] = Field(
        "crop", description="Classifiers: crop = shorter side to input/0.875, centre crop (torchvision eval); "
        "stretch = straight to the input size")

    @field_validator("input_size")
    @classmethod
    def _size(cls, v):
        if v is not None and not all(16 <= d <= 8192 for d in v):
            raise ValueError("each of [height, width] must be between 16 and 8192")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v):
        if v is not None and min(v) <= 0:
            raise ValueError("each std value must be greater than 0")
        return v


class EngineSettings(Strict):
    backend: str = Field("onnxruntime", description="Inference backend: onnxruntime, tensorrt, torch, or auto "
                         "(TensorRT on a GPU, else ONNX Runtime CUDA, else torch CUDA, else ONNX Runtime CPU)")
    max_batch: int = Field(4, ge=1, le=64, description="Most frames per inference call, across sources")
    threads: int = Field(0, ge=0, le=256, description="CPU inference threads; 0 = every usable core")
    worker_nice: int = Field(5, ge=0, le=19, description="Added to the daemon's nice value for the inference "
                             "worker: decoding and publishing win a contended core (0: equal priority)")
    spin_wait: Literal["auto", True, False] = Field(
        "auto", description="ONNX Runtime on CPU: inference threads spin-wait between operators instead of "
        "sleeping. auto (with instances: 1): only while the worker is the bottleneck and spinning measures "
        "faster, never after a run; true: always, also after each run (ONNX Runtime's default); false: never")
    instances: Union[Literal["auto"], int] = Field(
        "auto", description="ONNX Runtime on CPU: inference calls run at once while frames queue up, the threads "
        "shared out among them (a lone frame still gets every thread). auto: one single-threaded call per thread "
        "(at most 8); 1: one call at a time on every thread")
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when the backend can "
                                                   "use one (onnxruntime-gpu's CUDA provider, torch with CUDA)")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Materialised models, engines")
    workspace_mb: int = Field(1024, ge=0, le=1 << 20, description="TensorRT builder workspace limit in MiB; "
                              "0 = TensorRT's default (all device memory)")
    dla_core: Optional[int] = Field(None, ge=0, le=15, description="TensorRT: build for this DLA core (Jetson "
                                    "Xavier/Orin; fp16 or int8), layers it lacks fall back to the GPU")
    calibration_images: Optional[Path] = Field(None, description="TensorRT int8 (8.5-10): folder of "
                                               "representative frames to calibrate on")
    calibration_cache: Optional[Path] = Field(None, description="TensorRT int8: calibration cache, read when "
                                              "present, written after calibrating; default in cache_dir")
    verify: bool = Field(True, description="TensorRT: refuse a new engine whose outputs differ from ONNX "
                         "Runtime's beyond verify_tolerance (false: report only)")
    verify_tolerance: Optional[float] = Field(None, gt=0, le=100, description="Largest max|diff|/max(1,max|ref|) "
                                              "accepted; null = per precision (fp32 0.02, fp16 0.05, int8 0.25)")

    @field_validator("instances", mode="before")
    @classmethod
    def _instances(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64):
            return v
        raise ValueError("use auto or a whole number of calls from 1 to 64 (1: one call at a time)")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from engines.base import available_backends

        if v not in available_backends():
            raise ValueError(f"unknown backend; available: {', '.join(available_backends())}")
        return v


class PipelineSettings(Strict):
    queue_size: int = Field(4, ge=1, le=1024, description="Frames waiting per source before drop/block")
    drop_policy: Literal["auto", "drop_oldest", "block"] = Field(
        "auto", description="auto: live sources drop the oldest frame, files block")
    batch_timeout_ms: float = Field(0.0, ge=0, le=1000, description="Longest wait for more frames to fill a "
                                    "batch; 0: run what is ready (a backlog still batches)")
    live_inflight: int = Field(1, ge=1, le=64, description="Frames of one live source at the worker at once; "
                               "1 keeps latency lowest, more trades latency for throughput")
    worker_start_timeout_s: float = Field(300.0, gt=0, description="Engine load (and build) deadline")
    hang_timeout_s: float = Field(0.0, ge=0, le=3600, description="A worker that answers no batch for this long "
                                  "is killed and restarted; 0: automatic (60 s for the first batches after a "
                                  "start, then 10x the slowest recent batch, at least 5 s)")
    reload_strategy: Literal["auto", "replace"] = Field(
        "auto", description="auto: a reload's new model loads beside the running one, which serves until it "
        "is ready (replace when both do not fit in memory); replace: the running worker stops first")
    max_stuck_reads: int = Field(2, ge=0, le=100, description="Reads of one source abandoned after "
                                 "stall_timeout_s and still blocked in the driver beyond which the daemon stops "
                                 "the watchdog pings (systemd then restarts it)")
    restart_backoff_s: float = Field(1.0, ge=0, le=300, description="First worker restart delay (doubles)")
    reconnect_initial_s: float = Field(1.0, gt=0, le=300, description="First live-source reconnect delay")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Reconnect delay cap (doubling, jittered)")
    reconnect_max_attempts: int = Field(0, ge=0, description="Give a source up after N failed reopenings; 0 = never")


class EventsSinkSettings(Strict):
    enabled: bool = True
    segment_s: SegmentSeconds = Field(600.0, description="Start a new JSONL file every N seconds; 0: one")


class OverlaySettings(Strict):
    boxes: bool = True
    labels: bool = True
    landmarks: bool = True
    keypoints: bool = Field(True, description="Pose models: keypoints and, for COCO's 17, the skeleton")
    masks: bool = Field(True, description="Segmentation models: each mask as a translucent fill")
    mask_alpha: float = Field(0.4, ge=0, le=1, description="Opacity of a mask's fill")
    banner: bool = True
    thickness: int = Field(2, ge=1, le=16)
    saliency: bool = Field(False, description="Where the network looks: a heat map under the boxes (video, clips, "
                           "the live view's toggle) and `saliency` in the JSONL; off: nothing is computed")
    saliency_alpha: float = Field(0.4, ge=0, le=1, description="Opacity of the heat map")
    saliency_labels: tuple[str, ...] = Field((), description="The map's labels: detectors, the best score of "
                                             "these; classifiers, the top class among these (empty: all)")


class PrivacySettings(Strict):
    labels: tuple[str, ...] = Field((), description="Mask detections of these labels (e.g. [face]) in every "
                                    "output that shows pixels; the events log still lists them")
    mode: Literal["blur", "pixelate", "fill"] = "blur"
    padding: float = Field(0.15, ge=0, le=1, description="Grow each masked box by this fraction per side")


class ClipSettings(Strict):
    enabled: bool = Field(False, description="An mp4 per event in <output_dir>/clips/<source>/")
    labels: tuple[str, ...] = Field((), description="Tracks of these labels make clips (empty: all)")
    pre_s: float = Field(5.0, ge=0, le=60, description="Seconds before a track appears (kept as JPEG in memory)")
    post_s: float = Field(5.0, ge=0, le=600, description="Seconds after the last track of the clip ends")
    max_s: float = Field(300.0, gt=0, le=3600, description="Longest clip")
    quality: int = Field(80, ge=10, le=100, description="JPEG quality of the pre-roll buffer")
    preroll_mb: float = Field(64.0, gt=0, le=4096, description="Memory cap of the pre-roll buffer per source")
    codec: Codec = Field("auto", description=CODEC_HELP)
    extension: Literal[".mp4", ".mkv", ".avi"] = ".mp4"


class SnapshotSettings(Strict):
    enabled: bool = Field(False, description="A JPEG per track (its best-scored frame, and a crop) in "
                          "<output_dir>/snapshots/<source>/")
    crop: bool = Field(True, description="Also a crop around the track")
    quality: int = Field(90, ge=10, le=100)


class SinkSettings(Strict):
    output_dir: Path = Field(Path("perceptd-out"), description="Annotated videos and JSONL events go here")
    video: VideoSinkSettings = VideoSinkSettings()
    events: EventsSinkSettings = EventsSinkSettings()
    overlay: OverlaySettings = OverlaySettings()
    privacy: PrivacySettings = PrivacySettings()
    clips: ClipSettings = ClipSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    retention_days: float = Field(0.0, ge=0, description="Delete finalised outputs older than this; 0: keep")
    max_disk_gb: float = Field(0.0, ge=0, description="Delete the oldest finalised outputs beyond this; 0: no cap")
    min_free_percent: float = Field(10.0, ge=0, le=90, description="Delete the oldest finalised outputs while the "
                                    "output file system has less free than this; 0: off")
    reserve_mb: float = Field(100.0, ge=0, le=1e6, description="Pause writing while less than this is free, so "
                              "files can still be finalised; 0: off")
    retry_s: float = Field(5.0, gt=0, le=3600, description="A paused output (write error) is retried this often")
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    log_interval_s: float = Field(10.0, gt=0, description="Seconds between progress log lines")

    @field_validator("progress", mode="before")
    @classmethod
    def _unquoted_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false


class MetricsSettings(Strict):
    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, description="Bind address; 0.0.0.0 exposes it")
    port: int = Field(9108, ge=0, le=65535)
    linger_s: float = Field(0.0, ge=0, le=3600, description="Keep serving after the sources end")


class WebSettings(Strict):
    enabled: bool = Field(True, description="The live view at / on the metrics server")
    preview_fps: float = Field(10.0, gt=0, le=60, description="Most JPEGs per second per source, while watched")
    jpeg_quality: int = Field(80, ge=10, le=100)
    max_width: int = Field(960, ge=64, le=7680, description="Larger frames are scaled down for the view")
    token: Optional[str] = Field(None, min_length=8, description="Require this token (bearer, basic-auth "
                                 "password or ?token=); $PERCEPTD_WEB_TOKEN sets it too")
    protect_metrics: bool = Field(False, description="Also require the token for /metrics")


class ServiceSettings(Strict):
    shutdown_grace_s: float = Field(10.0, ge=0, le=600, description="SIGTERM: longest wait for frames in flight")
    watchdog: bool = Field(True, description="Ping systemd's watchdog (when WatchdogSec= is set) while frames move")
    status_interval_s: float = Field(5.0, gt=0, le=3600, description="How often systemd's STATUS= line is updated")


class LoggingSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(Strict):
    sources: tuple[SourceSettings, ...] = Field(min_length=1)
    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    pipeline: PipelineSettings = PipelineSettings()
    sinks: SinkSettings = SinkSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    tracking: TrackingSettings = TrackingSettings()
    mqtt: Optional[MqttSettings] = Field(None, description="Events, counts and state to an MQTT broker")
    webhook: Optional[WebhookSettings] = Field(None, description="Each track event POSTed to a URL")
    service: ServiceSettings = ServiceSettings()
    logging: LoggingSettings = LoggingSettings()

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("sources", mode="before")
    @classmethod
    def _source_shorthand(cls, v):
        if not isinstance(v, (list, tuple)):
            return v
        taken: set[str] = {s["name"] for s in v if isinstance(s, dict) and isinstance(s.get("name"), str)}
        out = []
        for item in v:
            if isinstance(item, (str, int)):
                item = {"uri": str(item)}
            if isinstance(item, dict) and "name" not in item and isinstance(item.get("uri"), (str, int)):
                item = {**item, "uri": str(item["uri"]), "name": _unique(derive_name(str(item["uri"])), taken)}
            out.append(item)
        return out

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v):
        # A field validator, not a model one: the error then points at `sources` (its line, or "command
        # line" for --source) instead of line 1 with the whole config as the bad value.
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"source name {s.name!r} is used twice; give each source its own name")
            seen.add(s.name)
        return v


def guess_kind(uri: str) -> str:
    if uri.isdigit() or uri.startswith("/dev/video"):
        return "camera"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in NETWORK_SCHEMES:
        return "network"
    if uri.startswith("gst:") or " ! " in uri:
        return "gstreamer"
    return "file"


def derive_name(uri: str) -> str:
    kind = guess_kind(uri)
    if kind == "camera":
        base = "camera" + uri if uri.isdigit() else Path(uri).name
    elif kind == "network":
        rest = uri.split("://", 1)[1]
        host = rest.split("/", 1)[0].rsplit("@", 1)[-1]  # never the credentials
        base = host.split(":")[0]
    elif kind == "gstreamer":
        base = "gst"
    elif uri.startswith("sample:"):
        base = uri.split(":", 1)[1]
    else:
        base = Path(uri).stem
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "source"
    return base[:60]


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


# ---------------------------------------------------------------------------------------------- loading

# What `perceptd run` does with no config file: the built-in face model on the packaged sample clip.
BUILTIN_DEFAULTS: dict[str, Any] = {"sources": [{"name": "carphone", "uri": "sample:carphone"}]}


def load_settings(path: Optional[Path], overrides: Optional[dict[str, Any]] = None) -> Settings:
    """Read `path` (or the built-in defaults), apply command-line overrides, validate strictly.

    `overrides` maps dotted keys ("engine.backend") to values; they win over the file.
    """
    if path is None:
        data, lines, name = copy.deepcopy(BUILTIN_DEFAULTS), {}, "built-in defaults"
    else:
        data, lines = load_yaml_with_lines(path)
        name = str(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}:1: the config must be a mapping of sections (sources, model, ...), "
                          f"got {type(data).__name__}")
    try:  # before validation, so errors still point at the line; command-line values are the shell's
        data, written = expand_tree(data)
    except ExpandError as exc:
        line = line_for(lines, exc.loc)
        raise ConfigError(f"{name}{f':{line}' if line else ''}: {dotted_key(exc.loc)}: {exc}") from None
    if isinstance(data.get("model"), str):
        data["model"] = {"name": data["model"]}
    cli_keys: set[tuple] = set()
    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {k} must be a mapping to take the command-line value for {dotted}")
        node[keys[-1]] = value
        cli_keys.add(keys)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, Settings, name, lines, data, cli_keys, written)) from None
