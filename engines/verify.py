"""A built engine is checked before it is trusted: its outputs against ONNX Runtime's on the same ONNX.

A broken fp16 or int8 build does not fail; it returns plausible-looking numbers (NaN at best). So after a
build the engine runs a few deterministic sample inputs, ONNX Runtime (CPU, fp32) runs the original ONNX
on the same, and the worst normalised difference is compared with the tolerance for the precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engines.base import EngineError

log = logging.getLogger(__name__)

MAX_SAMPLE_BATCH = 4  # the profile's far end is exercised without a long ONNX Runtime run on a Jetson CPU


class EngineVerificationError(EngineError):
    """The engine's outputs are too far from ONNX Runtime's: a broken reduced-precision build."""


@dataclass(frozen=True)
class Verification:
    error: float  # worst over outputs of max |engine - reference| / max(1, max |reference|)
    max_abs_diff: float
    per_output: dict  # output name -> its normalised error
    samples: int

    def as_dict(self) -> dict:
        return {"error": self.error, "max_abs_diff": self.max_abs_diff, "per_output": self.per_output,
                "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict) -> "Verification":
        return cls(float(d["error"]), float(d["max_abs_diff"]), dict(d.get("per_output", {})), int(d.get("samples", 0)))


def sample_inputs(shape_chw: tuple[int, int, int], batches: tuple[int, int], dtype="float32") -> list[np.ndarray]:
    """Deterministic inputs at the scales image models see: a smooth picture-like pattern at 8-bit
    mean-subtracted scale (catches fp16 overflow), noise in [0, 1), noise at +-128; at both batch ends."""
    c, h, w = shape_chw
    lo, hi = batches
    rng = np.random.default_rng(20240607)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pattern = np.stack([np.sin(xx / (7 + 5 * i)) * np.cos(yy / (11 + 3 * i)) * 127 for i in range(c)])
    n = max(lo, min(hi, MAX_SAMPLE_BATCH))
    samples = [np.repeat(pattern[None], lo, axis=0), rng.random((n, c, h, w), dtype=np.float32),
               rng.uniform(-128, 128, (lo, c, h, w)).astype(np.float32)]
    return [np.ascontiguousarray(s.astype(dtype)) for s in samples]


def compare_with_onnxruntime(run: Callable[[np.ndarray], list[np.ndarray]], onnx_path: Path,
                             shape_chw: tuple[int, int, int], batches: tuple[int, int]) -> Verification:
    """Run `run` (the engine) and ONNX Runtime on the same samples; the worst differences."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    in_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    names = [o.name for o in session.get_outputs()]
    per_output = {n: 0.0 for n in names}
    worst_abs = 0.0
    samples = sample_inputs(shape_chw, batches)
    for x in samples:
        ref = session.run(None, {name: x.astype(in_type)})
        got = run(x)
        if len(got) != len(ref):
            raise EngineVerificationError(f"the engine returned {len(got)} outputs, ONNX Runtime {len(ref)}")
        for n, r, g in zip(names, ref, got):
            r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
            if r.shape != g.shape:
                raise EngineVerificationError(f"output {n}: engine shape {g.shape}, ONNX Runtime {r.shape}")
            diff = float(np.max(np.abs(g - r))) if r.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")  # NaN or inf from the engine: the classic overflowed fp16 build
            worst_abs = max(worst_abs, diff)
            scale = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
            per_output[n] = max(per_output[n], diff / scale)
    return Verification(max(per_output.values(), default=0.0), worst_abs,
                        {k: round(v, 6) for k, v in per_output.items()}, len(samples))


def check(v: Verification, tolerance: float, refuse: bool, what: str) -> None:
    """Log the measurement; outside tolerance, say so loudly and (by default) refuse the engine."""
    detail = ", ".join(f"{k} {e:.4g}" for k, e in v.per_output.items())
    if v.error <= tolerance:
        log.info("%s matches ONNX Runtime: error %.4g <= %.4g (max |diff| %.4g; %s)", what, v.error, tolerance,
                 v.max_abs_diff, detail)
        return
    msg = (f"{what} disagrees with ONNX Runtime on the same model: error {v.error:.4g} > tolerance {tolerance:.4g} "
           f"(max |diff| {v.max_abs_diff:.4g}; per output: {detail}); a broken reduced-precision build? Use "
           "engine.precision fp32/fp16, raise engine.verify_tolerance, or set engine.verify: false to accept it")
    if refuse:
        log.error("%s", msg)
        raise EngineVerificationError(msg)
    log.error("%s [accepted: engine.verify is false]", msg)
