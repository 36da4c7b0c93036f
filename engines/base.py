"""The engine interface every backend implements, and the registry the pipeline picks backends from.

A backend runs a batch of already-preprocessed tensors and returns raw outputs. It never knows the model
family: anchors, letterboxing and NMS live in engines/adapters.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from engines.build import TensorRTOptions

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The backend failed to load or run a model."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints, or str/None for dynamic dimensions
    dtype: str  # numpy dtype name

    def dynamic(self, axis: int) -> bool:
        dim = self.shape[axis]
        return not isinstance(dim, int) or dim <= 0


@dataclass(frozen=True)
class EngineOptions:
    """Backend-neutral knobs; a backend ignores what it has no use for."""

    max_batch: int = 1
    threads: int = 0  # CPU inference threads; 0 = every usable core (cpu_threads)
    precision: str = "fp32"
    device: str = "cpu"
    # (h, w) the model takes, for formats that do not record it (TorchScript) and for ONNX models with a
    # dynamic H/W that TensorRT must fix at build time; None: the model's own.
    input_hw: tuple[int, int] | None = None
    cache_dir: str | None = None  # built engines (TensorRT); None: the default cache directory
    tensorrt: "TensorRTOptions | None" = None  # engines.build.TensorRTOptions; None: its defaults
    # ONNX Runtime's intra-op threads spin-wait instead of sleeping between operators. None (auto): only
    # while the worker is the bottleneck and spinning measures faster (engines/spin.py), and never after a
    # run returns. True: ONNX Runtime's own default, spinning on after each run too (the plain loop's
    # setting, as a hand-written loop gets it). False: never.
    spin_wait: bool | None = None
    # Inference calls that may run at once on a CPU, each on fewer threads, while frames queue up (like Triton's
    # instance count): 0 (auto) is one single-threaded call per inference thread, up to AUTO_INSTANCES_MAX;
    # 1 is one call at a time on every thread. Backends without per-call threads ignore it.
    instances: int = 0


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which cgroups and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_threads(requested: int) -> int:
    """Inference threads for a CPU runtime: `requested`, or with 0 every usable core."""
    return requested if requested > 0 else usable_cores()


# Each concurrent call holds its own activations, and past two calls the gain is not measured (this project's
# machines have 2 cores): on bigger machines auto stops at this many calls and gives each several threads.
AUTO_INSTANCES_MAX = 8


def cpu_lanes(requested: int, threads: int) -> tuple[int, int]:
    """(concurrent calls, threads per call) for a CPU runtime with `threads` inference threads:
    `requested` calls (0: auto, one per thread up to AUTO_INSTANCES_MAX), the threads shared out among them."""
    lanes = requested if requested > 0 else max(1, min(threads, AUTO_INSTANCES_MAX))
    return lanes, max(1, threads // lanes)


class Engine(ABC):
    """Load once, run batches, close. Lifecycle is explicit: use as a context manager or call close()."""

    name: str = "?"
    threads: int = 0  # CPU inference threads in use (set by CPU runtimes); 0: not applicable
    lanes: int = 1  # infer_lane() calls that may run at once, each from its own thread (EngineOptions.instances)

    def __init__(self, model_path: Path, options: EngineOptions):
        self.model_path = Path(model_path)
        self.options = options
        self._closed = False

    # Backends set these once the model is loaded: what it takes and what it returns.
    _inputs: list[TensorInfo] = []
    _outputs: list[TensorInfo] = []

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    @property
    def max_batch(self) -> int:
        """The most frames one infer() call takes: the options' value, capped by a fixed batch dimension."""
        first = self.inputs[0]
        if first.dynamic(0):
            return self.options.max_batch
        return min(self.options.max_batch, int(first.shape[0]))

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def device(self) -> str:
        return self.options.device

    def set_busy(self, busy: bool) -> None:
        """The worker's hint before a call: True when the next batch is already waiting (the worker is the
        bottleneck). A backend may trade CPU for speed while it holds (ONNX Runtime's spin_wait auto)."""

    def spin_stats(self) -> dict:
        """What the backend measured for that trade (logged when the worker stops); {} when it makes none."""
        return {}

    @abstractmethod
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch (N <= max_batch, N first) through the model; outputs in `self.outputs` order."""

    def infer_lane(self, batch: np.ndarray, lane: int) -> list[np.ndarray]:
        """Run a batch as one of `lanes` concurrent calls (0 <= lane < lanes): a backend with lanes gives each
        fewer threads than infer() uses, so that together they keep every core busy without the per-operator
        handoffs between threads that one wide call pays. Without lanes: infer()."""
        return self.infer(batch)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_impl()

    def _close_impl(self) -> None:
        """Release runtime resources; backends override."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        d = {"backend": self.name, "precision": self.precision, "device": self.device, "max_batch": self.max_batch}
        if self.threads:
            d["threads"] = self.threads
        if self.lanes > 1:
            d["instances"] = self.lanes
        return d


# Long loads (a TensorRT build takes minutes) report progress through this hook; the inference worker
# forwards it to the daemon, which then keeps waiting instead of declaring the load hung.
_progress_hook: Callable[[str], None] | None = None


def set_progress_hook(hook: Callable[[str], None] | None) -> None:
    global _progress_hook
    _progress_hook = hook


def report_progress(what: str) -> None:
    if _progress_hook is not None:
        _progress_hook(what)


# name -> "module:Class"; modules are imported lazily so an absent optional runtime (tensorrt, torch)
# costs nothing until it is asked for.
_BACKENDS: dict[str, str] = {
    "onnxruntime": "engines.onnxruntime:OnnxRuntimeEngine",
    "torch": "engines.torch:TorchEngine",
    "tensorrt": "engines.tensorrt:TensorRTEngine",  # imports tensorrt/pycuda only when an engine is created
    "auto": "engines.select:create_auto_engine",  # a Factory: probes, then creates one of the above
}
_LOADED: dict[str, type[Engine] | Factory] = {}


def register_backend(name: str, target: str | type[Engine]) -> None:
    """Register a backend by import path ("pkg.module:Class") or class."""
    if isinstance(target, str):
        _BACKENDS[name] = target
    else:
        _BACKENDS[name] = f"{target.__module__}:{target.__qualname__}"
        _LOADED[name] = target


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Engine] | Factory:
    if name not in _BACKENDS:
        raise EngineError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    if name not in _LOADED:
        module_name, _, attr = _BACKENDS[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise EngineError(f"backend {name!r} is not installed here ({exc}); install its extra or pick another backend") from exc
        _LOADED[name] = getattr(module, attr)
    return _LOADED[name]


def create_engine(name: str, model_path: Path, options: EngineOptions) -> Engine:
    cls = backend_class(name)
    log.debug("creating %s engine for %s", name, model_path)
    return cls(model_path, options)


Factory = Callable[[Path, EngineOptions], Engine]
