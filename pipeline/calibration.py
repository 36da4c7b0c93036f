"""int8 calibration's preprocessing, decided by the pipeline: engines/ never knows model families.

TensorRT's int8 calibrator (engines/calibration.py) takes a callable that writes one image into a network
input row; this one runs the model family's adapter, built as the worker builds it, so calibration images
look exactly like frames at run time. It travels inside EngineOptions into the spawned worker, hence a
small frozen dataclass (picklable, with a stable repr that keys the calibration cache and the engine).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from engines.adapters import FAMILIES, AdapterParams, adapter_class


@dataclass(frozen=True)
class FramePreprocess:
    family: str
    kwargs: tuple[tuple[str, object], ...] = ()  # the adapter's preprocessing options (classifiers' mean/std)

    def __call__(self, image_bgr: np.ndarray, out: np.ndarray) -> None:
        """`out` is one (3, H, W) row of the engine's input: H/W are the engine's, fixed at build time."""
        _adapter(self.family, tuple(out.shape[1:]), self.kwargs).preprocess(image_bgr, out)


@functools.lru_cache(maxsize=4)
def _adapter(family: str, input_hw: tuple[int, int], kwargs: tuple):
    # One adapter for every calibration image: building one can precompute per-size tables (anchors).
    return adapter_class(family)(input_hw, [], AdapterParams(), **dict(kwargs))


def calibration_preprocess(spec) -> FramePreprocess | None:
    """For a pipeline.worker.WorkerSpec: the worker's own adapter preprocessing, or None while the family is
    "auto" (told from the engine's outputs, after the build; calibrating then asks for model.family)."""
    from pipeline.worker import _adapter_kwargs  # the worker's rule for which options reach its adapter

    if spec.family not in FAMILIES:
        return None
    # Only what preprocessing reads (a YOLO export's metadata shapes its decoding, not its input).
    kwargs = {k: v for k, v in _adapter_kwargs(spec, spec.family).items() if k in ("mean", "std", "resize")}
    return FramePreprocess(spec.family, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
