"""`backend: auto`: the fastest backend that really works here, chosen inside the worker process.

Order: TensorRT when importable and a CUDA GPU is present; else ONNX Runtime with its CUDA provider when
that provider is really active (an installed onnxruntime-gpu whose CUDA libraries fail to load silently
falls back to CPU, so the created session's providers are checked, not the installed ones); else torch on
CUDA; else ONNX Runtime on CPU. choose_backend is the rule as a pure function of the probed facts; the
probes run lazily, only while they can still change the answer, and in the worker (CUDA initialised there).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from engines.base import Engine, EngineOptions, available_backends, create_engine

log = logging.getLogger(__name__)


class Choice(NamedTuple):
    backend: str
    device: str
    reason: str


def choose_backend(trt_importable: bool, gpu_present: bool, ort_cuda_active: bool, torch_cuda: bool) -> Choice:
    if trt_importable and gpu_present:
        return Choice("tensorrt", "cuda", "TensorRT is importable and a CUDA GPU is present")
    why = ["TensorRT is not importable" if not trt_importable else "no CUDA GPU for TensorRT"]
    if ort_cuda_active:
        return Choice("onnxruntime", "cuda", "; ".join(why + ["ONNX Runtime's CUDA provider is active"]))
    why.append("ONNX Runtime's CUDA provider is not active")
    if torch_cuda:
        return Choice("torch", "cuda", "; ".join(why + ["torch has CUDA"]))
    why.append("torch has no CUDA")
    return Choice("onnxruntime", "cpu", "; ".join(why + ["ONNX Runtime on CPU"]))


# ---------------------------------------------------------------------------------------------- probes

def probe_tensorrt() -> tuple[bool, str]:
    try:
        import pycuda.driver  # noqa: F401  (the TensorRT backend's buffers)
        import tensorrt
    except ImportError as exc:
        return False, str(exc)
    return True, f"TensorRT {tensorrt.__version__}"


def probe_gpu() -> tuple[bool, str]:
    """A CUDA device through the driver API itself (libcuda): no toolkit, pycuda or torch needed."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1)"
    count = ctypes.c_int(0)
    err = libcuda.cuInit(0)
    if err != 0:
        return False, f"cuInit failed (CUDA error {err})"
    err = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if err != 0 or count.value == 0:
        return False, "no CUDA device" if err == 0 else f"cuDeviceGetCount failed (CUDA error {err})"
    return True, f"{count.value} CUDA device(s)"


def probe_ort_cuda(model_path: Path, options: EngineOptions) -> tuple[bool, str, Engine | None]:
    """Create the session with the CUDA provider asked for; active only if the session reports it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return False, f"this onnxruntime has no CUDA provider ({', '.join(available)})", None
    engine = create_engine("onnxruntime", model_path, replace(options, device="cuda"))
    providers = list(getattr(engine, "providers", []))
    if providers and providers[0] == "CUDAExecutionProvider":
        return True, "session providers " + ", ".join(providers), engine
    engine.close()
    return False, f"the CUDA provider did not load (session providers: {', '.join(providers)})", None


def probe_torch_cuda() -> tuple[bool, str]:
    if "torch" not in available_backends():
        return False, "no torch backend in this perceptd"
    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} without CUDA"
    return True, f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}"


def torch_can_run(model_path: Path) -> bool:
    """torch runs TorchScript or exported programs; an ONNX model only through one written beside it."""
    from engines.zoo import torch_file_kind

    path = Path(model_path)
    if torch_file_kind(path) in ("torchscript", "exported_program"):
        return True
    return any(torch_file_kind(path.with_suffix(s)) in ("torchscript", "exported_program") for s in (".pt2", ".pt")
               if path.with_suffix(s).exists())


def create_auto_engine(model_path: Path, options: EngineOptions) -> Engine:
    """The `auto` entry of the backend registry: probe, choose, log why, create."""
    trt_ok, trt_why = probe_tensorrt()
    gpu_ok, gpu_why = probe_gpu()
    ort_ok, ort_why, ort_engine = False, "not needed", None
    torch_ok, torch_why = False, "not needed"
    if not (trt_ok and gpu_ok):
        ort_ok, ort_why, ort_engine = probe_ort_cuda(model_path, options) if gpu_ok else (False, "no GPU", None)
        if not ort_ok:
            torch_ok, torch_why = probe_torch_cuda() if gpu_ok else (False, "no GPU")
    if torch_ok and not torch_can_run(model_path):
        torch_ok, torch_why = False, f"{Path(model_path).name} has no TorchScript/exported program beside it"
    choice = choose_backend(trt_ok, gpu_ok, ort_ok, torch_ok)
    log.info("backend auto -> %s on %s: %s [tensorrt: %s; gpu: %s; onnxruntime cuda: %s; torch cuda: %s]",
             choice.backend, choice.device, choice.reason, trt_why, gpu_why, ort_why, torch_why)
    if ort_engine is not None:
        return ort_engine  # the probe's session is the chosen engine: no second load
    return create_engine(choice.backend, model_path, replace(options, device=choice.device))
