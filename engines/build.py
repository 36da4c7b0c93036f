"""ONNX -> TensorRT engine: everything decided before TensorRT is touched, and the build orchestration.

plan_build turns (model, options, TensorRT version, GPU) into a BuildJob: the precision plan for this
TensorRT generation, the optimisation profile, the int8 calibration data, the cache key and file. It is
pure Python, so the choices (and the refusals) are tested on machines without TensorRT. load_or_build
then loads a matching cached engine or builds one through a Builder (engines/tensorrt.py), persisting the
timing cache under a file lock. Checking a built engine against ONNX Runtime lives in engines/verify.py.

Precision across TensorRT generations:
- 8.5-10.x (every JetPack today): weakly typed networks. fp16 is the builder's FP16 flag; int8 is the
  INT8 flag with an entropy calibrator over images, or an explicitly quantized (Q/DQ) ONNX.
- 11+: strongly typed only; the precision flags and calibrators are gone. fp16 is an ONNX graph converted
  to mixed fp16 first (engines/fp16.py); int8 needs a model that is already explicitly quantized.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from engines.cache import (EngineKey, FileLock, atomic_write, decide, default_cache_dir, ensure_writable, key_stem,
                           make_sidecar, read_sidecar, sidecar_path, timing_cache_path, write_sidecar)
from engines.calibration import CalibrationSource, Preprocess, calibration_source
from engines.base import report_progress
from engines.errors import ModelError, UserError

if TYPE_CHECKING:
    from engines.base import EngineOptions

log = logging.getLogger(__name__)

MIN_VERSION = (8, 5)  # the named-tensor API (set_input_shape, set_tensor_address, execute_async_v3)
STRONGLY_TYPED_ONLY = 11
# Normalised error (max |engine - ONNX Runtime| / max(1, max |ONNX Runtime|), worst output) allowed per
# precision. fp32 leaves room for TF32, which TensorRT enables by default on Ampere and later (Orin).
DEFAULT_TOLERANCE = {"fp32": 0.02, "fp16": 0.05, "int8": 0.25}
LOCK_WAIT_S = 3600.0  # another process building the same engine: wait for it rather than build twice
HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class TensorRTOptions:
    """The TensorRT-only part of EngineOptions (engine.* settings)."""

    workspace_mb: int = 1024
    dla_core: Optional[int] = None
    calibration_images: Optional[str] = None
    calibration_cache: Optional[str] = None
    verify: bool = True
    verify_tolerance: Optional[float] = None
    # int8 calibration preprocesses images as frames are at run time; that is the model family's business,
    # so the caller supplies it (engines.calibration.Preprocess: picklable, it crosses into the worker).
    calibration_preprocess: Optional[Preprocess] = None

    @classmethod
    def from_settings(cls, engine, calibration_preprocess: Optional[Preprocess] = None) -> "TensorRTOptions":
        """From pipeline.settings.EngineSettings."""
        as_str = lambda p: str(p) if p is not None else None  # noqa: E731
        return cls(engine.workspace_mb, engine.dla_core, as_str(engine.calibration_images),
                   as_str(engine.calibration_cache), engine.verify, engine.verify_tolerance, calibration_preprocess)


@dataclass(frozen=True)
class OnnxFacts:
    """What the ONNX file declares, read without TensorRT (for the key and the profile)."""

    sha256: str
    input_name: str
    input_shape: tuple  # ints, None where dynamic
    input_dtype: str
    output_names: tuple[str, ...]
    has_qdq: bool


@dataclass(frozen=True)
class RuntimeFacts:
    """The TensorRT and GPU this process builds with."""

    tensorrt: str
    gpu: str
    compute_capability: str
    dla_cores: int = 0


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str
    builder_flags: tuple[str, ...] = ()  # trt.BuilderFlag names
    convert_fp16: bool = False  # convert the ONNX graph to mixed fp16 before parsing (TensorRT 11+)
    calibrate: bool = False  # attach an int8 entropy calibrator
    strongly_typed: bool = False
    explicit_batch_flag: bool = False  # TensorRT < 10 needs it; 10 made it the default


@dataclass(frozen=True)
class BuildJob:
    model_path: Path
    onnx: OnnxFacts
    key: EngineKey
    engine_path: Path
    plan: PrecisionPlan
    profile: tuple[tuple, tuple, tuple]  # min, opt, max input shapes
    workspace_mb: int
    dla_core: Optional[int]
    calibration: Optional[CalibrationSource]
    verify: bool
    tolerance: float

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.key.input_hw


def parse_version(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise UserError(f"cannot read TensorRT's version {version!r}") from None


def plan_precision(tensorrt: str, precision: str, has_qdq: bool, dla: bool = False) -> PrecisionPlan:
    """How to get `precision` out of this TensorRT; UserError where it cannot."""
    major, minor = parse_version(tensorrt)
    if (major, minor) < MIN_VERSION:
        raise UserError(f"TensorRT {tensorrt} is too old: perceptd needs 8.5 or newer (JetPack 5.1+)")
    if dla and precision == "fp32":
        raise UserError("engine.dla_core: the DLA runs fp16 or int8 only; set engine.precision to fp16")
    if dla and major >= STRONGLY_TYPED_ONLY:
        raise UserError(f"engine.dla_core: TensorRT {tensorrt} does not build for the DLA (10.x does); remove "
                        "engine.dla_core")
    explicit = major < 10
    if major >= STRONGLY_TYPED_ONLY:
        if precision == "fp16":
            return PrecisionPlan(precision, convert_fp16=True, strongly_typed=True)
        if precision == "int8":
            if not has_qdq:
                raise UserError(f"engine.precision int8: TensorRT {tensorrt} builds int8 only from an explicitly "
                                "quantized ONNX (QuantizeLinear/DequantizeLinear nodes); quantize the model with "
                                "NVIDIA ModelOpt (python -m modelopt.onnx.quantization --quantize_mode int8) and "
                                "give that file, or use precision fp16")
            return PrecisionPlan(precision, strongly_typed=True)
        return PrecisionPlan(precision, strongly_typed=True)
    if precision == "fp16":
        return PrecisionPlan(precision, ("FP16",), explicit_batch_flag=explicit)
    if precision == "int8":
        # FP16 too: layers without an int8 kernel then fall back to fp16, not fp32 (as trtexec --int8 --fp16).
        return PrecisionPlan(precision, ("INT8", "FP16"), calibrate=not has_qdq, explicit_batch_flag=explicit)
    return PrecisionPlan(precision, explicit_batch_flag=explicit)


def profile_shapes(onnx: OnnxFacts, max_batch: int, input_hw: Optional[tuple[int, int]], model: str,
                   fixed_batch: bool = False):
    """(min, opt, max) input shapes: a dynamic batch 1..max_batch (fixed at max_batch for the DLA, which has
    no dynamic shapes; the runtime pads smaller batches); H/W from the model, else from the config."""
    shape = onnx.input_shape
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise ModelError(f"model {model}: input {onnx.input_name} has shape {list(shape)}; perceptd needs an "
                         "image input [N, 3, H, W]")
    if isinstance(shape[0], int):
        bmin = bmax = shape[0]
    else:
        bmin, bmax = (max_batch if fixed_batch else 1), max_batch
    if isinstance(shape[2], int) and isinstance(shape[3], int):
        hw = (shape[2], shape[3])
    elif input_hw:
        hw = (int(input_hw[0]), int(input_hw[1]))
    else:
        raise ModelError(f"model {model} has a dynamic height/width and TensorRT fixes them at build time; "
                         "set model.input_size: [height, width] (build-engine: --input-size HxW), or model.family "
                         "to use its default size")
    # opt = max: under load the worker fills whole batches, and TensorRT tunes its kernels for `opt`.
    c = shape[1]
    return (bmin, c, *hw), (bmax, c, *hw), (bmax, c, *hw)


def inspect_onnx(path: Path) -> OnnxFacts:
    """Read the ONNX declaration with ONNX Runtime (a hard dependency) on CPU, optimisations off (fast)."""
    import onnxruntime as ort

    data = Path(path).read_bytes()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types are not exported
        raise ModelError(f"model {path}: ONNX Runtime cannot read it ({str(exc).splitlines()[0]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} inputs; perceptd runs single-input image models")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape)
    # op_type strings are stored verbatim in the protobuf: no need for the onnx package to find Q/DQ nodes.
    qdq = b"QuantizeLinear" in data and b"DequantizeLinear" in data
    return OnnxFacts(hashlib.sha256(data).hexdigest(), inputs[0].name, shape, inputs[0].type,
                     tuple(o.name for o in session.get_outputs()), qdq)


def engines_dir(cache_dir) -> Path:
    if cache_dir is None:
        cache_dir = default_cache_dir()
    return Path(cache_dir).expanduser() / "engines"


def plan_build(model_path: Path, options: "EngineOptions", onnx: OnnxFacts, rt: RuntimeFacts) -> BuildJob:
    """Everything about the build that can be decided (or refused) without TensorRT."""
    trt_opts = getattr(options, "tensorrt", None) or TensorRTOptions()
    model_path = Path(model_path)
    dla = trt_opts.dla_core
    if dla is not None and rt.dla_cores <= dla:
        raise UserError(f"engine.dla_core {dla}: this device has {rt.dla_cores} DLA core(s)"
                        + ("; remove engine.dla_core" if rt.dla_cores == 0 else f"; use 0..{rt.dla_cores - 1}"))
    plan = plan_precision(rt.tensorrt, options.precision, onnx.has_qdq, dla is not None)
    lo, opt, hi = profile_shapes(onnx, options.max_batch, getattr(options, "input_hw", None), model_path.name,
                                 fixed_batch=dla is not None)
    directory = engines_dir(getattr(options, "cache_dir", None))
    calibration = None
    if plan.calibrate:
        # The default cache is per model, input size and (appended there) calibration data: a new image set
        # never meets the scales of the old one.
        default = directory / f"{key_stem(model_path.stem, onnx.sha256)}-{lo[2]}x{lo[3]}"
        images = Path(trt_opts.calibration_images) if trt_opts.calibration_images else None
        cache = Path(trt_opts.calibration_cache) if trt_opts.calibration_cache else None
        calibration = calibration_source(images, cache, default, hi[0], trt_opts.calibration_preprocess)
    key = EngineKey(onnx.sha256, rt.tensorrt, rt.gpu, rt.compute_capability, options.precision,
                    (lo[0], hi[0]), (lo[2], lo[3]), dla, calibration.digest if calibration else "")
    tolerance = trt_opts.verify_tolerance or DEFAULT_TOLERANCE[options.precision]
    return BuildJob(model_path, onnx, key, directory / key.file_name(model_path.stem), plan, (lo, opt, hi),
                    trt_opts.workspace_mb, dla, calibration, trt_opts.verify, tolerance)


class Builder(Protocol):
    """Turns a job and ONNX bytes into serialized engine bytes (engines/tensorrt.py implements it)."""

    def build(self, job: BuildJob, onnx_bytes: bytes, timing_cache: bytes | None) -> tuple[bytes, bytes | None]: ...

    # Optional: merge_timing(ours: bytes, theirs: bytes) -> bytes, when another process saved meanwhile.


@dataclass
class Artifact:
    path: Path
    data: bytes
    sidecar: dict
    built: bool


def load_or_build(job: BuildJob, builder: Builder, force: bool = False) -> Artifact:
    """The cached engine when its sidecar matches, else a fresh build (written atomically, sidecar last)."""
    decision = decide(job.engine_path, job.key)
    if decision.action == "load" and not force:
        log.info("TensorRT engine: %s (%s)", job.engine_path.name, decision.reason)
        return _loaded(job)
    reason = "rebuilding after a failed load" if force else decision.reason
    ensure_writable(job.engine_path.parent)
    lock = job.engine_path.with_suffix(".lock")
    with FileLock(lock, LOCK_WAIT_S, f"the build of {job.engine_path.name}"):
        if not force and decide(job.engine_path, job.key).action == "load":  # built by whoever held the lock
            return _loaded(job)
        return _build(job, builder, reason)


def _loaded(job: BuildJob) -> Artifact:
    return Artifact(job.engine_path, job.engine_path.read_bytes(), read_sidecar(sidecar_path(job.engine_path)) or {},
                    built=False)


def _build(job: BuildJob, builder: Builder, reason: str) -> Artifact:
    k = job.key
    log.info("building a TensorRT engine for %s (%s, batch %d..%d, %dx%d, TensorRT %s on %s): %s. This can "
             "take minutes (tens on a small Jetson); `perceptd build-engine` does it ahead of time",
             job.model_path.name, k.precision, k.batch[0], k.batch[1], k.input_hw[0], k.input_hw[1], k.tensorrt,
             k.gpu, reason)
    extra: dict = {}
    if job.plan.convert_fp16:
        from engines.fp16 import convert_to_mixed_fp16

        onnx_bytes, extra["fp16_converter"] = convert_to_mixed_fp16(job.model_path)
        log.info("converted %s to mixed fp16 (fp32 inputs/outputs) with %s", job.model_path.name,
                 extra["fp16_converter"])
    else:
        onnx_bytes = job.model_path.read_bytes()
    timing_path = timing_cache_path(job.engine_path.parent, k)
    timing_lock = FileLock(timing_path.with_suffix(".lock"), 60.0, "the timing cache")
    with timing_lock:
        timing = timing_path.read_bytes() if timing_path.is_file() else None
    t0 = time.monotonic()
    with _Heartbeat(job.model_path.name):
        data, new_timing = builder.build(job, onnx_bytes, timing)
    build_s = time.monotonic() - t0
    if new_timing:
        with timing_lock:
            current = timing_path.read_bytes() if timing_path.is_file() else None
            if current and current != timing and hasattr(builder, "merge_timing"):
                new_timing = builder.merge_timing(new_timing, current)  # another build saved meanwhile
            atomic_write(timing_path, new_timing)
    atomic_write(job.engine_path, data)
    side = make_sidecar(k, job.engine_path, build_s, {"model_file": job.model_path.name, **extra})
    write_sidecar(job.engine_path, side)
    log.info("TensorRT engine built in %.0f s: %s (%.1f MB)", build_s, job.engine_path, len(data) / 1e6)
    return Artifact(job.engine_path, data, side, built=True)


class _Heartbeat:
    """A log line every HEARTBEAT_S while a build runs, so a long build never looks like a hang (TensorRT
    10+ also reports its phases; 8.5-9 say nothing for minutes)."""

    def __init__(self, what: str):
        self.what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-build-heartbeat", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(HEARTBEAT_S):
            log.info("still building the TensorRT engine for %s (%.0f s so far)", self.what, time.monotonic() - t0)
            report_progress(f"building the TensorRT engine for {self.what} ({time.monotonic() - t0:.0f} s)")

    def __enter__(self) -> "_Heartbeat":
        report_progress(f"building the TensorRT engine for {self.what}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(1.0)


def record_verification(artifact: Artifact, verification: dict) -> None:
    """Remember the measured error beside the engine: a later start checks it against the tolerance then
    in force instead of measuring again (or rebuilding)."""
    artifact.sidecar["verification"] = verification
    try:
        write_sidecar(artifact.path, artifact.sidecar)
    except OSError as exc:  # a read-only cache of prebuilt engines: measured again next start, harmless
        log.warning("cannot record the verification in %s (%s)", sidecar_path(artifact.path), exc.strerror)
