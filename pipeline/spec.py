"""From settings to what the worker runs: the resolved model and the WorkerSpec."""

from __future__ import annotations

import dataclasses
import logging

from engines.adapters import AdapterParams, read_labels
from engines.base import EngineOptions
from engines.build import TensorRTOptions
from engines.zoo import ResolvedModel, resolve_model
from pipeline.calibration import calibration_preprocess
from pipeline.redact import remembered
from pipeline.settings import Settings
from pipeline.worker import WorkerSpec

log = logging.getLogger(__name__)

FAMILY_CONFIDENCE = {"retinaface": 0.8, "yolo": 0.25, "classifier": 0.0, "auto": 0.25}
PER_LABEL_KEYS = ("confidence", "min_area", "max_area")


def per_label(value, fallback: float) -> tuple[float, tuple[tuple[str, float], ...]]:
    """A setting that is a number or {label: number, default: number}: (the default, the per-label pairs)."""
    if isinstance(value, dict):
        return value.get("default", fallback), tuple((k, v) for k, v in value.items() if k != "default")
    return (fallback if value is None else value), ()


def adapter_params(settings: Settings, family: str) -> AdapterParams:
    m = settings.model
    confidence, label_confidence = per_label(m.confidence, FAMILY_CONFIDENCE.get(family, 0.25))
    min_area, label_min_area = per_label(m.min_area, 0.0)
    max_area, label_max_area = per_label(m.max_area, 0.0)
    return AdapterParams(confidence, m.iou, m.max_detections, m.top_k, tuple(m.classes), label_confidence,
                         min_area, max_area, label_min_area, label_max_area)


def warn_unknown_labels(settings: Settings, labels: tuple[str, ...]) -> list[str]:
    """Per-label settings naming a label the model does not have (a typo never matches anything): one
    warning per key, naming the known labels. Returns the warnings (nothing when the labels are unknown)."""
    if not labels:
        return []
    known = set(labels)
    shown = ", ".join(labels[:20]) + (f", ... ({len(labels)} in all)" if len(labels) > 20 else "")
    out = []
    for key in PER_LABEL_KEYS:
        value = getattr(settings.model, key)
        unknown = [k for k in value if k != "default" and k not in known] if isinstance(value, dict) else []
        if unknown:
            out.append(f"model.{key}: no label {', '.join(map(repr, unknown))} in the model; its labels: {shown}")
    for line in out:
        log.warning("%s", line)
    return out


def build_worker_spec(settings: Settings, source_hw: tuple[int, int]) -> tuple[WorkerSpec, ResolvedModel]:
    """Resolve the model (UserError when it is missing or not ONNX) and describe the worker to spawn."""
    s, m = settings, settings.model
    model = resolve_model(m.name, m.family, m.labels, m.input_size, s.engine.cache_dir, read_labels,
                          backend=s.engine.backend)
    warn_unknown_labels(settings, model.labels)
    spec = WorkerSpec(
        model_name=model.name, model_path=str(model.path), family=model.family, labels=model.labels,
        input_size=model.input_size,
        params=adapter_params(settings, model.family),
        backend=s.engine.backend,
        options=EngineOptions(max_batch=s.engine.max_batch, threads=s.engine.threads, precision=s.engine.precision,
                              device=s.engine.device,
                              spin_wait=None if s.engine.spin_wait == "auto" else s.engine.spin_wait,
                              instances=0 if s.engine.instances == "auto" else s.engine.instances,
                              input_hw=model.input_size, cache_dir=str(s.engine.cache_dir),
                              tensorrt=TensorRTOptions.from_settings(s.engine)),
        batch_timeout_s=s.pipeline.batch_timeout_ms / 1000.0,
        log_level=logging.getLogger().getEffectiveLevel(),
        source_hw=source_hw, mean=m.mean, std=m.std, resize=m.resize, metadata=model.metadata, masked=remembered(),
        saliency=saliency_spec(s), nice=s.engine.worker_nice)
    if s.engine.precision == "int8":  # TensorRT calibrates on images preprocessed as the worker's frames are
        trt = dataclasses.replace(spec.options.tensorrt, calibration_preprocess=calibration_preprocess(spec))
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, tensorrt=trt))
    return spec, model


def engine_changed(old: Settings, new: Settings) -> bool:
    """Does a reload need a new worker? Thresholds and filters are applied to the running one."""
    live = {"confidence", "iou", "max_detections", "top_k", "classes", "min_area", "max_area"}
    return (old.engine != new.engine
            or old.model.model_dump(exclude=live) != new.model.model_dump(exclude=live)
            or old.pipeline.batch_timeout_ms != new.pipeline.batch_timeout_ms
            or saliency_spec(old) != saliency_spec(new))


def saliency_spec(settings: Settings) -> tuple | None:
    """What the worker computes for sinks.overlay.saliency (the opacity is the sinks' alone)."""
    o = settings.sinks.overlay
    return tuple(o.saliency_labels) if o.saliency else None
