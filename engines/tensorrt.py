"""TensorRT backend: the only module that imports tensorrt and pycuda, and only when called.

Kept thin on purpose: what to build, whether a cached engine may be loaded and whether a built one is
trusted are decided in engines/build.py, engines/cache.py and engines/verify.py (tested without a GPU).
This module does the TensorRT and CUDA calls: build, deserialise, run.

Named-tensor API only (TensorRT 8.5+): set_input_shape, set_tensor_address, execute_async_v3. The CUDA
context is created here, i.e. inside the worker process (never pycuda.autoinit in the parent); buffers
(pinned host, device) and the stream are allocated once for the largest batch; copies and execution are
asynchronous on the stream with one synchronize per batch. Every TensorRT call's result is checked, and
failures raise TensorRTError carrying TensorRT's own log lines.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import numpy as np

from engines.base import Engine, EngineError, EngineOptions, TensorInfo
from engines.errors import UserError

log = logging.getLogger(__name__)
trt_log = logging.getLogger(__name__ + ".trt")  # TensorRT's own messages

HOW_TO_GET = ("on a Jetson use JetPack's TensorRT (sudo apt install python3-libnvinfer; create the venv with "
              "--system-site-packages) and build pycuda there (pip install pycuda); on a PC: pip install "
              "tensorrt pycuda")
OTHER_BACKENDS = "; or set engine.backend to auto or onnxruntime"


class TensorRTError(EngineError):
    """A TensorRT call failed; `log_lines` holds what TensorRT logged meanwhile."""

    def __init__(self, message: str, log_lines: list[str] | tuple[str, ...] = ()):
        self.log_lines = tuple(log_lines)
        errors = [line for line in self.log_lines if line.startswith(("ERROR", "INTERNAL_ERROR"))]
        shown = errors or list(self.log_lines)
        super().__init__(message + (f"; TensorRT said: {' | '.join(shown[-3:])}" if shown else ""))


class TensorRTUnavailable(EngineError, UserError):
    """tensorrt or pycuda cannot be imported here (a user's fix: install them, or pick another backend)."""


def import_tensorrt(hint: str = ""):
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"TensorRT is not importable here ({exc}); {HOW_TO_GET}{hint}") from None
    return trt


def import_pycuda(hint: str = ""):
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise TensorRTUnavailable(f"pycuda is not importable here ({exc}); TensorRT's buffers need it: "
                                  f"{HOW_TO_GET}{hint}") from None
    return cuda


def require_tensorrt() -> str:
    """TensorRT's version, or TensorRTUnavailable: the cheap check before any slow work."""
    trt = import_tensorrt()
    import_pycuda()
    return trt.__version__


# ------------------------------------------------------------------------------------------ logging

_LOGGER = None  # one per process: TensorRT keeps the first logger it is given for the whole process


def _logger(trt):
    global _LOGGER
    if _LOGGER is None:
        sev = trt.ILogger.Severity
        levels = {sev.INTERNAL_ERROR: ("INTERNAL_ERROR", logging.CRITICAL), sev.ERROR: ("ERROR", logging.ERROR),
                  sev.WARNING: ("WARNING", logging.WARNING), sev.INFO: ("INFO", logging.DEBUG)}

        class CapturingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.lines: collections.deque = collections.deque(maxlen=400)
                self.count = 0
                self._lock = threading.Lock()  # the builder logs from its own threads

            def log(self, severity, msg):
                if severity not in levels:  # VERBOSE: megabytes during a build
                    return
                name, level = levels[severity]
                with self._lock:
                    self.lines.append((self.count, f"{name}: {msg}"))
                    self.count += 1
                trt_log.log(level, "%s", msg)

            def mark(self) -> int:
                return self.count

            def since(self, mark: int) -> list[str]:
                with self._lock:
                    return [text for i, text in self.lines if i >= mark]

        _LOGGER = CapturingLogger()
    return _LOGGER


# ------------------------------------------------------------------------------------------ building

class _Builder:
    """engines.build.Builder over the TensorRT Python API."""

    def __init__(self, trt, cuda, logger):
        self.trt, self.cuda, self.log = trt, cuda, logger

    def build(self, job, onnx_bytes: bytes, timing_cache: bytes | None) -> tuple[bytes, bytes | None]:
        trt, logger = self.trt, self.log
        mark = logger.mark()
        fail = lambda what: TensorRTError(what, logger.since(mark))  # noqa: E731
        builder = trt.Builder(logger)
        if not builder:
            raise fail("TensorRT could not create a builder (is a CUDA GPU visible to this process?)")
        flags = 0
        if job.plan.explicit_batch_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if job.plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes, str(job.model_path)):
            errors = [f"ERROR: {parser.get_error(i)}" for i in range(parser.num_errors)]
            raise TensorRTError(f"TensorRT's ONNX parser rejected {job.model_path.name}", errors + logger.since(mark))
        if network.num_inputs != 1:
            raise fail(f"the parsed network has {network.num_inputs} inputs; perceptd needs one image input")
        config = builder.create_builder_config()
        if job.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, job.workspace_mb << 20)
        for flag in job.plan.builder_flags:
            if not hasattr(trt.BuilderFlag, flag):
                raise fail(f"TensorRT {trt.__version__} has no BuilderFlag.{flag}")
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if "FP16" in job.plan.builder_flags and not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast fp16: TensorRT will mostly keep fp32 kernels, so fp16 gains little "
                        "here; engine.precision fp32 builds the same speed with full accuracy")
        name = network.get_input(0).name
        lo, opt, hi = job.profile
        profile = builder.create_optimization_profile()
        profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise fail(f"TensorRT rejected the optimisation profile {lo}..{hi} for input {name}")
        calibrator = self._calibrator(job, builder, config, name)
        if job.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = job.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers the DLA lacks run on the GPU
        self._set_timing_cache(config, timing_cache)
        monitor = _progress_monitor(trt)
        if monitor is not None:
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
        if calibrator is not None:
            calibrator.check_fed()  # before TensorRT's bare "no scaling factors" when no batch could be made
        del calibrator  # after the build: TensorRT calls it until then
        if serialized is None:
            raise fail(f"TensorRT could not build an engine for {job.model_path.name}")
        cache = config.get_timing_cache()
        return bytes(serialized), (bytes(cache.serialize()) if cache is not None else None)

    def _calibrator(self, job, builder, config, name):
        if not job.plan.calibrate:
            return None
        from engines.calibration import make_calibrator

        _, _, hi = job.profile
        calibrator = make_calibrator(self.trt, self.cuda, job.calibration, hi)
        fixed = builder.create_optimization_profile()  # calibration runs at one shape: the largest batch
        fixed.set_shape(name, hi, hi, hi)
        if not config.set_calibration_profile(fixed):
            raise TensorRTError("TensorRT rejected the int8 calibration profile", self.log.since(0)[-5:])
        config.int8_calibrator = calibrator
        return calibrator

    def _set_timing_cache(self, config, data: bytes | None) -> None:
        cache = None
        if data:
            try:
                cache = config.create_timing_cache(data)
            except Exception as exc:  # a corrupt file: start a fresh cache rather than fail the build
                log.warning("ignoring an unreadable timing cache (%s)", exc)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            if cache is not None:
                log.warning("the timing cache was made for another device or TensorRT; starting a fresh one")
            if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
                log.warning("TensorRT refused an empty timing cache; building without one")

    def merge_timing(self, ours: bytes, theirs: bytes) -> bytes:
        """Another build saved its timing cache meanwhile: keep both sets of measurements."""
        try:
            config = self.trt.Builder(self.log).create_builder_config()
            merged = config.create_timing_cache(ours)
            if merged.combine(config.create_timing_cache(theirs), True):
                return bytes(merged.serialize())
        except Exception as exc:
            log.warning("could not merge timing caches (%s); keeping this build's", exc)
        return ours


def _progress_monitor(trt):
    """TensorRT 10+ reports build phases; older versions get the heartbeat only."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = num_steps
            if parent_phase is None:
                log.info("TensorRT build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name, step):
            now = time.monotonic()
            if now - self._last >= 10.0 and phase_name in self._steps:
                self._last = now
                log.info("TensorRT build: %s %d/%d", phase_name, step + 1, self._steps[phase_name])
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self._steps.pop(phase_name, None)

    return Progress()


# ------------------------------------------------------------------------------------------ running

class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, model_path, options: EngineOptions):
        super().__init__(model_path, options)
        self.trt = import_tensorrt(OTHER_BACKENDS)
        self.cuda = import_pycuda(OTHER_BACKENDS)
        self._log = _logger(self.trt)
        self._ctx = None
        self._engine = self._context = self._runtime = self._stream = None
        self._buffers: list = []
        try:
            self._ctx = self._make_context()
            self._load()
        except BaseException:
            self._release()
            raise

    def _make_context(self):
        cuda = self.cuda
        index = int(self.options.device.partition(":")[2] or 0) if self.options.device.startswith("cuda") else 0
        try:
            cuda.init()
            if cuda.Device.count() <= index:
                raise TensorRTError(f"no CUDA device {index} (found {cuda.Device.count()})")
            self._device = cuda.Device(index)
            return self._device.make_context()  # current on this (the worker's) thread from now on
        except cuda.Error as exc:
            raise TensorRTError(f"cannot create a CUDA context on device {index}: {exc}") from None

    def _load(self) -> None:
        from engines.build import RuntimeFacts, inspect_onnx, load_or_build, plan_build

        trt = self.trt
        self._runtime = trt.Runtime(self._log)
        if not self._runtime:
            raise TensorRTError("TensorRT could not create a runtime", self._log.since(0)[-5:])
        self.onnx = inspect_onnx(self.model_path)
        major, minor = self._device.compute_capability()
        facts = RuntimeFacts(trt.__version__, self._device.name(), f"{major}.{minor}",
                             int(getattr(self._runtime, "num_DLA_cores", 0)))
        self.job = plan_build(self.model_path, self.options, self.onnx, facts)
        builder = _Builder(trt, self.cuda, self._log)
        self.artifact = load_or_build(self.job, builder)
        if self.job.dla_core is not None:
            # A DLA engine runs on the runtime's DLA_core, set before deserialising: the core it was built for
            # is not guaranteed to carry over (TensorRT's default is core 0).
            self._runtime.DLA_core = self.job.dla_core
        mark = self._log.mark()
        self._engine = self._runtime.deserialize_cuda_engine(self.artifact.data)
        if self._engine is None and not self.artifact.built:
            log.warning("cached engine %s does not deserialise (%s); rebuilding it", self.artifact.path.name,
                        " | ".join(self._log.since(mark)[-2:]))
            self.artifact = load_or_build(self.job, builder, force=True)
            mark = self._log.mark()
            self._engine = self._runtime.deserialize_cuda_engine(self.artifact.data)
        if self._engine is None:
            raise TensorRTError(f"TensorRT cannot deserialise {self.artifact.path}", self._log.since(mark))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise TensorRTError("TensorRT could not create an execution context (out of GPU memory?)",
                                self._log.since(mark))
        self._allocate()
        self._verify()

    def _allocate(self) -> None:
        trt, cuda, engine = self.trt, self.cuda, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        order = {n: i for i, n in enumerate(self.onnx.output_names)}  # the adapters rely on ONNX's order
        outs = sorted((n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT),
                      key=lambda n: order.get(n, len(order)))
        if len(ins) != 1:
            raise TensorRTError(f"the engine has {len(ins)} inputs; perceptd runs single-input image models")
        self._in_name, self._out_names = ins[0], outs
        lo, _, hi = self.job.profile
        self._batch_range = (lo[0], hi[0])
        self._check(self._context.set_input_shape(self._in_name, hi), f"set_input_shape({self._in_name}, {hi})")
        self._stream = cuda.Stream()
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._in_name)))
        self._host_in, self._dev_in = self._pair(int(np.prod(hi)), self._in_dtype, self._in_name)
        self._host_out, self._dev_out, max_shapes = [], [], []
        for n in outs:
            shape = tuple(self._context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise TensorRTError(f"output {n} has a data-dependent shape {shape}; perceptd needs output shapes "
                                    "that follow from the input's")
            host, dev = self._pair(int(np.prod(shape)), np.dtype(trt.nptype(engine.get_tensor_dtype(n))), n)
            self._host_out.append(host)
            self._dev_out.append(dev)
            max_shapes.append(shape)
        self._current_batch = hi[0]
        self._out_shapes = max_shapes
        batch_dim = None if lo[0] != hi[0] else hi[0]
        self._inputs = [TensorInfo(self._in_name, (batch_dim, *hi[1:]), self._in_dtype.name)]
        self._outputs = [TensorInfo(n, (batch_dim, *s[1:]), h.dtype.name)
                         for n, s, h in zip(outs, max_shapes, self._host_out)]

    def _pair(self, count: int, dtype: np.dtype, name: str):
        """A pinned host buffer and a device buffer for one tensor at its largest shape, bound once."""
        host = self.cuda.pagelocked_empty(max(count, 1), dtype)
        dev = self.cuda.mem_alloc(max(host.nbytes, 1))
        self._buffers.append(dev)
        self._check(self._context.set_tensor_address(name, int(dev)), f"set_tensor_address({name})")
        return host, dev

    def _check(self, ok, call: str) -> None:
        if not ok:
            raise TensorRTError(f"TensorRT {call} failed", self._log.since(max(0, self._log.mark() - 5)))

    def _verify(self) -> None:
        from engines.build import record_verification
        from engines.verify import Verification, check, compare_with_onnxruntime

        recorded = self.artifact.sidecar.get("verification")
        try:
            v = Verification.from_dict(recorded) if recorded else None
        except (KeyError, TypeError, ValueError):
            v = None
        if v is None:
            _, c, h, w = self.job.profile[2]
            v = compare_with_onnxruntime(self.infer, self.model_path, (c, h, w), self._batch_range)
            record_verification(self.artifact, v.as_dict())
        check(v, self.job.tolerance, self.job.verify, f"TensorRT {self.precision} engine {self.artifact.path.name}")

    @property
    def device(self) -> str:
        return f"dla{self.job.dla_core}" if self.job.dla_core is not None else "cuda"

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        n = batch.shape[0]
        lo, hi = self._batch_range
        want = self._inputs[0].shape[1:]
        if tuple(batch.shape[1:]) != tuple(want) or not 1 <= n <= hi:
            raise EngineError(f"batch of shape {batch.shape} does not fit the engine's input "
                              f"[{lo}..{hi}, {', '.join(map(str, want))}]")
        try:
            return self._run(batch, n, max(n, lo), want)  # a fixed-batch engine (DLA, fixed model) runs padded
        except self.cuda.Error as exc:  # pycuda's own (a CUDA error poisons the context: the worker restarts)
            raise TensorRTError(f"CUDA error while running the engine: {exc}", self._log.since(0)[-5:]) from None

    def _run(self, batch: np.ndarray, n: int, run: int, want: tuple) -> list[np.ndarray]:
        ctx, cuda, stream = self._context, self.cuda, self._stream
        if run != self._current_batch:
            shape = (run, *want)
            self._check(ctx.set_input_shape(self._in_name, shape), f"set_input_shape({self._in_name}, {shape})")
            self._out_shapes = [tuple(ctx.get_tensor_shape(o)) for o in self._out_names]
            self._current_batch = run
        host_in = self._host_in[: run * int(np.prod(want))].reshape(run, *want)
        np.copyto(host_in[:n], batch, casting="unsafe")  # a float32 batch into an fp16 input, when the model has one
        host_in[n:] = 0
        cuda.memcpy_htod_async(self._dev_in, host_in, stream)
        mark = self._log.mark()
        if not ctx.execute_async_v3(stream.handle):
            raise TensorRTError("TensorRT execute_async_v3 failed", self._log.since(mark))
        views = []
        for host, dev, shape in zip(self._host_out, self._dev_out, self._out_shapes):
            view = host[: int(np.prod(shape))]
            cuda.memcpy_dtoh_async(view, dev, stream)
            views.append(view.reshape(shape))
        stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next batch, and callers may keep outputs longer.
        return [v[:n].copy() for v in views]

    def describe(self) -> dict:
        d = super().describe()
        d.update(tensorrt=self.trt.__version__, engine_file=self.artifact.path.name)
        return d

    def _close_impl(self) -> None:
        self._release()

    def _release(self) -> None:
        """TensorRT objects and buffers go before the context they live in; then the context is popped."""
        self._context = self._engine = self._runtime = None
        for buf in self._buffers:
            try:
                buf.free()
            except Exception:  # a context already torn down by a CUDA error: nothing left to free
                pass
        self._buffers = []
        self._stream = None
        if self._ctx is not None:
            try:
                self._ctx.pop()
                self._ctx.detach()
            except Exception as exc:
                log.warning("releasing the CUDA context failed: %s", exc)
            self._ctx = None
