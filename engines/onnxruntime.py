"""ONNX Runtime backend (CPU here; the CUDA provider is chosen by `backend: auto` in the engines issue)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from engines.base import Engine, EngineError, EngineOptions, TensorInfo, cpu_lanes, cpu_threads
from engines.spin import SpinChooser

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, options: EngineOptions):
        super().__init__(model_path, options)
        import onnxruntime as ort

        self.threads = cpu_threads(options.threads)
        providers = ["CPUExecutionProvider"]
        cuda_here = "CUDAExecutionProvider" in ort.get_available_providers()
        if options.device.startswith("cuda") or (options.device == "auto" and cuda_here):
            providers.insert(0, "CUDAExecutionProvider")
        self.spin_wait = {None: "auto", True: "on", False: "off"}[options.spin_wait]
        on_cpu = providers[0] == "CPUExecutionProvider"
        self.lanes, per_lane = cpu_lanes(options.instances, self.threads) if on_cpu else (1, self.threads)
        self._lane_sessions: list = []
        self._chooser = None
        if self.lanes > 1:
            # Lanes: while frames queue up, the worker runs one call per lane at once, each on `per_lane`
            # threads; YOLO11n and RetinaFace ran 25-35% more frames per second as two one-thread calls than as
            # one two-thread call on this project's 2-core machine (README, Benchmarks): a thread that finishes
            # its share of an operator no longer waits for the other, nor sleeps and is woken between operators,
            # and a core taken by decoding stalls one call instead of both. A lone frame still gets one call on
            # every thread (the wide session), the lowest latency; it spins only with spin_wait: true (when it
            # runs, the worker is not the bottleneck). One-thread calls share one session (its weights once):
            # a session runs concurrent calls each on its caller's thread.
            self._session = self._load(ort, options.spin_wait is True, providers, self.threads)
            if per_lane == 1:
                self._lane_sessions = [self._load(ort, False, providers, 1)] * self.lanes
            else:
                self._lane_sessions = [self._load(ort, False, providers, per_lane) for _ in range(self.lanes)]
        else:
            # auto on a CPU with a thread pool: a spinning and a sleeping session of the model, picked per call
            # by engines/spin.py (spin only while the worker is the bottleneck and spinning pays). A GPU run or
            # one thread has nothing to spin for: one sleeping session.
            both = options.spin_wait is None and on_cpu and self.threads > 1
            modes = (True, False) if both else (bool(options.spin_wait),)
            self._sessions = {spin: self._load(ort, spin, providers, self.threads) for spin in modes}
            self._chooser = SpinChooser() if both else None
            self._session = self._sessions[modes[-1]]
        self._busy = False
        self.per_lane_threads = per_lane
        self.providers = self._session.get_providers()
        self._inputs = [_info(i) for i in self._session.get_inputs()]
        self._outputs = [_info(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        if len(self._inputs) != 1:
            raise EngineError(f"{self.model_path} has {len(self._inputs)} inputs; perceptd runs single-input image models")
        self._input_name = self._inputs[0].name
        log.info("onnxruntime %s: %s providers=%s threads=%s spin_wait=%s instances=%s", ort.__version__,
                 self.model_path.name, ",".join(self.providers),
                 f"{self.threads}{'' if options.threads else ' (all cores)'}", self.spin_wait,
                 f"{self.lanes} x {per_lane} thread(s) while frames queue up" if self.lanes > 1 else 1)

    def _load(self, ort, spin: bool, providers: list[str], threads: int):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # A spinning session of `auto` stops spinning the moment a run returns: between runs the worker pre/
        # postprocesses or waits, and the daemon's decoding needs the core.
        so.add_session_config_entry("session.force_spinning_stop", "1" if self.options.spin_wait is None else "0")
        # Inter-op parallelism only helps graphs with parallel branches; one thread keeps the worker
        # from competing with decode and encode threads on small machines.
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            return ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own non-exported exception types
            raise EngineError(f"ONNX Runtime cannot load {self.model_path}: {str(exc).splitlines()[0]}") from exc

    def set_busy(self, busy: bool) -> None:
        self._busy = busy

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def describe(self) -> dict:
        d = super().describe()
        if self.device == "cpu":
            d["spin_wait"] = self.spin_wait
        if self.lanes > 1:
            d["threads_per_instance"] = self.per_lane_threads
        return d

    def spin_stats(self) -> dict:
        """What `auto` measured: per-frame call time of each session (ms), None before its first call."""
        return self._chooser.describe() if self._chooser else {}

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._chooser is None:
            return self._session.run(self._output_names, {self._input_name: batch})
        spin = self._chooser.choose(self._busy)
        t0 = time.perf_counter()
        outputs = self._sessions[spin].run(self._output_names, {self._input_name: batch})
        self._chooser.record(spin, time.perf_counter() - t0, len(batch))
        return outputs

    def infer_lane(self, batch: np.ndarray, lane: int) -> list[np.ndarray]:
        if not self._lane_sessions:
            return self.infer(batch)
        return self._lane_sessions[lane].run(self._output_names, {self._input_name: batch})

    def _close_impl(self) -> None:
        self._sessions = {}
        self._lane_sessions = []
        self._session = None


def _info(node) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorInfo(node.name, shape, _ORT_TYPES.get(node.type, node.type))
