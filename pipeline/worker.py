"""The inference worker: a separate process that owns the engine.

Frames arrive as WorkItems naming a shared-memory slot; the worker batches whatever is ready across
sources (up to the engine's batch limit, never waiting past a short deadline), runs preprocess ->
engine -> postprocess, and sends back small WorkResults. The parent's WorkerClient starts it, restarts it
when it dies, and turns load failures into one-line errors.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
import multiprocessing as mp
import os
import queue
import signal
import time
from dataclasses import dataclass

import numpy as np

from engines.adapters import AdapterParams, adapter_class
from engines.adapters.retinaface import input_size_for_sources
from engines.base import EngineError, EngineOptions, TensorInfo, create_engine, set_progress_hook
from pipeline.errors import ModelError, UserError
from pipeline.frame import WorkItem, WorkResult
from pipeline.lanes import serve_lanes
from pipeline.redact import RedactingFormatter, remember
from pipeline.resources import lower_priority
from pipeline.shm import Attachments

log = logging.getLogger(__name__)

FAMILY_INPUT_DEFAULTS = {"yolo": (640, 640), "classifier": (224, 224)}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the worker needs, picklable (the worker is spawned, not forked)."""

    model_name: str
    model_path: str
    family: str  # or "auto"
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None
    params: AdapterParams
    backend: str
    options: EngineOptions
    batch_timeout_s: float
    log_level: int
    source_hw: tuple[int, int] = (640, 640)  # largest source frame (h, w), for resolution-following families
    # Classifier preprocessing (model.mean / model.std / model.resize); None: the family's defaults.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: str = "crop"
    # The model file's metadata_props (sorted key/value pairs); the yolo family reads Ultralytics' fields.
    metadata: tuple[tuple[str, str], ...] = ()
    # Values that came from ${VAR} in the config: masked in the worker's log lines as in the daemon's.
    masked: tuple[str, ...] = ()
    # sinks.overlay.saliency: None (off: nothing computed), else the labels whose map is made (empty: all).
    saliency: tuple[str, ...] | None = None
    nice: int = 5  # added to the daemon's nice value (engine.worker_nice; WORKER_NICE says why)


def guess_family(outputs: list[TensorInfo]) -> str | None:
    """Tell a model's family from its outputs when the config says `family: auto`."""
    if len(outputs) == 3 and ({o.name.lower() for o in outputs} >= {"loc", "conf"}
                              or sorted(o.shape[-1] for o in outputs if isinstance(o.shape[-1], int)) == [2, 4, 10]):
        return "retinaface"
    if len(outputs) >= 1 and len(outputs[0].shape) == 3:
        return "yolo"
    # A classifier exported with --saliency has its feature map [N, C, H, W] as a second output.
    if (len(outputs) == 1 or (len(outputs) == 2 and len(outputs[1].shape) == 4)) and (
            len(outputs[0].shape) == 2 or (len(outputs[0].shape) == 4 and outputs[0].shape[2:] == (1, 1))):
        return "classifier"
    return None


def input_size_for(spec: WorkerSpec, family: str, info: TensorInfo) -> tuple[int, int]:
    if len(info.shape) != 4:
        raise ModelError(f"model {spec.model_name}: input {info.name} has shape {info.shape}; "
                         "perceptd needs an image input of shape [N, 3, H, W]")
    fixed = None if info.dynamic(2) or info.dynamic(3) else (int(info.shape[2]), int(info.shape[3]))
    if fixed and spec.input_size and tuple(spec.input_size) != fixed:
        raise ModelError(f"model.input_size: {list(spec.input_size)} but {spec.model_name} takes a fixed "
                         f"{list(fixed)}; remove model.input_size or re-export the model")
    if fixed:
        return fixed
    if spec.input_size:
        return tuple(spec.input_size)
    if family == "retinaface":
        return input_size_for_sources(spec.source_hw)
    return FAMILY_INPUT_DEFAULTS[family]


def planned_input_hw(spec: WorkerSpec) -> tuple[int, int] | None:
    """The size input_size_for will pick for a dynamic-H/W model, known before the engine exists: TensorRT
    fixes H/W at build time. None while the family is still "auto" (it is told from the engine's outputs)."""
    if spec.input_size:
        return tuple(spec.input_size)
    if spec.family == "retinaface":
        return input_size_for_sources(spec.source_hw)
    return FAMILY_INPUT_DEFAULTS.get(spec.family)


def _adapter_kwargs(spec: WorkerSpec, family: str) -> dict:
    kwargs = {"metadata": dict(spec.metadata)} if family == "yolo" else {}
    if spec.mean is None and spec.std is None and spec.resize == "crop":
        return kwargs
    if family != "classifier":
        raise ModelError(f"model.mean, model.std and model.resize apply to classifiers; {spec.model_name} is a "
                         f"{family} model: remove them")
    return {"mean": spec.mean, "std": spec.std, "resize": spec.resize}


class _Runner:
    """The worker's state once the engine is loaded."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        options = spec.options
        if options.input_hw is None:
            options = dataclasses.replace(options, input_hw=planned_input_hw(spec))
        self.engine = create_engine(spec.backend, spec.model_path, options)
        try:
            self._setup(spec)
        except BaseException:
            # Close what was opened: a CUDA context left pushed makes pycuda abort the process at exit (a core
            # dump per failed start), and the parent reports the error itself.
            self.engine.close()
            raise

    def _setup(self, spec: WorkerSpec) -> None:
        family = spec.family
        if family == "auto":
            family = guess_family(self.engine.outputs)
            if family is None:
                raise ModelError(f"model {spec.model_name}: cannot tell its family from outputs "
                                 f"{[o.shape for o in self.engine.outputs]}; set model.family")
        self.family = family
        self.input_hw = input_size_for(spec, family, self.engine.inputs[0])
        try:
            self.adapter = adapter_class(family)(self.input_hw, list(spec.labels), spec.params,
                                                 **_adapter_kwargs(spec, family))
            self.adapter.check_outputs([o.shape for o in self.engine.outputs], [o.name for o in self.engine.outputs])
        except ValueError as exc:
            raise ModelError(f"model {spec.model_name} does not look like a {family} model: {exc}") from None
        self.saliency = False
        if spec.saliency is not None:
            try:
                why = self.adapter.enable_saliency(spec.saliency, [o.name for o in self.engine.outputs],
                                                   spec.model_path)
            except ValueError as exc:
                raise ModelError(str(exc)) from None
            self.saliency = why is None
            if why:
                log.warning("sinks.overlay.saliency: no saliency maps for %s: %s", spec.model_name, why)
        dtype = np.dtype(self.engine.inputs[0].dtype if self.engine.inputs[0].dtype != "?" else "float32")
        self.max_batch = self.engine.max_batch
        self.batch = np.zeros((self.max_batch, 3, *self.input_hw), dtype=np.float32)
        # One frame per lane call (pipeline/lanes.py): on a CPU, concurrency pays where batching does not.
        self.lane_batch = [np.zeros((1, 3, *self.input_hw), dtype=np.float32) for _ in range(self.engine.lanes)]
        self.input_dtype = dtype
        self.shm = Attachments()
        self.busy = False  # the next batch was waiting when this one started (_serve)
        self.last_call_ns = 0
        # One warm-up call: the first run allocates and picks kernels, and must not count as a frame's latency.
        self.engine.infer(self._cast(self.batch[:1]))

    def _cast(self, arr: np.ndarray) -> np.ndarray:
        return arr if arr.dtype == self.input_dtype else arr.astype(self.input_dtype)

    def describe(self) -> dict:
        d = self.engine.describe()
        d.update(family=self.family, input_size=list(self.input_hw), model=self.spec.model_name,
                 labels=len(self.adapter.labels), pid=os.getpid(), saliency=self.saliency)
        return d

    def run_batch(self, items: list[WorkItem], t_dequeued: list[int], lane: int | None = None) -> list[WorkResult]:
        """Preprocess, run and postprocess `items`: as one infer() call, or (lane k) as the engine's lane k,
        which other threads may be running beside it (pipeline/lanes.py)."""
        buf = self.batch if lane is None else self.lane_batch[lane]
        fits, pre_ns = [], []
        for i, item in enumerate(items):
            t0 = time.monotonic_ns()
            image = self.shm.view(item.shm_name, item.offset, (item.height, item.width, 3))
            fits.append(self.adapter.preprocess(image, buf[i]))
            pre_ns.append(time.monotonic_ns() - t0)
        n = len(items)
        t0 = time.monotonic_ns()
        if lane is None:
            self.engine.set_busy(self.busy)
            outputs = self.engine.infer(self._cast(buf[:n]))
        else:
            outputs = self.engine.infer_lane(self._cast(buf[:n]), lane)
        infer_ns = time.monotonic_ns() - t0
        if lane is None:  # what _serve's busy test compares the wait with (lanes have no such test)
            self.last_call_ns = infer_ns + sum(pre_ns)
        results = []
        for i, item in enumerate(items):
            t0 = time.monotonic_ns()
            outs = [np.asarray(o[i]) for o in outputs]
            dets = self.adapter.postprocess(outs, fits[i])
            saliency = self.adapter.saliency(outs, fits[i]) if self.saliency else None
            post_ns = time.monotonic_ns() - t0
            results.append(WorkResult(item.source_id, item.index, item.slot, tuple(dets), t_dequeued[i],
                                      pre_ns[i], infer_ns, post_ns, n, saliency=saliency))
        return results

    def control(self, message: tuple) -> None:
        kind, value = message
        if kind == "params":
            self.adapter.set_params(value)
            log.info("thresholds updated: %s", value)
        else:
            log.warning("unknown control message %r", kind)

    def close(self) -> None:
        self.shm.close()
        stats = self.engine.spin_stats()
        if stats:  # what engine.spin_wait auto measured: which way it went, and why
            log.info("spin_wait auto, per frame: %s", stats)
        self.engine.close()


# The daemon's decoding, drawing and publishing come before inference when they compete for a core: a
# starved reader loses camera frames and delays every result, while inference just runs a little later.
# With this, the runtime can take every core and still leave the daemon what it needs (benchmarks/README).
# The default of engine.worker_nice. It also puts the worker behind every other process of the machine at
# the normal priority: on a shared machine, 0 lets it compete with them as an equal.
WORKER_NICE = 5
# Busy: the wait for the next frame was under this fraction of the last batch's preprocessing + inference.
BUSY_WAIT_FRACTION = 0.25


def worker_main(spec: WorkerSpec, inq: mp.Queue, outq: mp.Queue) -> None:
    """Entry point of the worker process."""
    # Ctrl-C, systemd's SIGTERM and a terminal's SIGHUP reach the whole process group; the parent decides
    # when the worker stops (after draining) or is killed (a shutdown during a TensorRT build), so the
    # worker ignores them and exits on the sentinel, on SIGKILL, or when the parent is gone.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fmt = "%(asctime)s %(levelname)s [worker] %(name)s: %(message)s"
    logging.basicConfig(level=spec.log_level, format=fmt)
    for value in spec.masked:
        remember(value)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(fmt))
    parent = os.getppid()
    if spec.nice:
        lower_priority(spec.nice, "inference worker")
    set_progress_hook(lambda what: outq.put(("progress", what)))
    try:
        runner = _Runner(spec)
    except UserError as exc:
        outq.put(("error", "user", str(exc)))
        return
    except EngineError as exc:
        outq.put(("error", "user", f"model {spec.model_name}: {exc}"))
        return
    except Exception as exc:  # reported to the parent, which logs it with the traceback text
        import traceback

        outq.put(("error", "internal", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))
        return
    outq.put(("ready", runner.describe()))
    try:
        if runner.engine.lanes > 1:
            serve_lanes(runner, inq, outq, parent, _take)
        else:
            _serve(runner, spec, inq, outq, parent)
    finally:
        runner.close()


def _serve(runner: _Runner, spec: WorkerSpec, inq: mp.Queue, outq: mp.Queue, parent: int) -> None:
    """Run batches of whatever is ready. The dispatcher sends each pass's frames as one message, so a
    backlog is seen at once; with `batch_timeout_s` > 0 the worker also waits that long for a full batch."""
    backlog: deque[tuple[WorkItem, int]] = deque()  # (frame, when it left the queue)
    stop = False
    idle_since = time.monotonic_ns()
    while not (stop and not backlog):
        if not backlog and not stop:
            try:
                stop = _take(inq.get(timeout=1.0), backlog, runner)
            except queue.Empty:
                if os.getppid() != parent:  # orphaned: the daemon is gone
                    return
                continue
        # The worker is the bottleneck when its next frame was there (or all but there: one live source's
        # next frame goes out only when this result is back) as soon as it was free.
        runner.busy = time.monotonic_ns() - idle_since < BUSY_WAIT_FRACTION * runner.last_call_ns
        deadline = time.monotonic() + spec.batch_timeout_s
        while len(backlog) < runner.max_batch and not stop:
            remaining = deadline - time.monotonic()
            try:
                message = inq.get(timeout=remaining) if remaining > 0 else inq.get_nowait()
            except queue.Empty:
                break
            stop = _take(message, backlog, runner)
        if backlog:
            batch = [backlog.popleft() for _ in range(min(len(backlog), runner.max_batch))]
            outq.put(("results", runner.run_batch([b[0] for b in batch], [b[1] for b in batch])))
            idle_since = time.monotonic_ns()


def _take(message, backlog: deque, runner: _Runner) -> bool:
    """File a message from the parent; True for the stop sentinel (frames already sent still run)."""
    if message is None:
        return True
    if isinstance(message, tuple):  # control: new thresholds, from the next batch on
        runner.control(message)
    else:
        now = time.monotonic_ns()
        backlog.extend((item, now) for item in (message if isinstance(message, list) else [message]))
    return False
