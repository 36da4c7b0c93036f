"""A stand-in for the tensorrt module and pycuda.driver, where neither can run, that records every TensorRT
name perceptd touches. TensorRT is the one part the tests may stand in for: it needs an NVIDIA GPU and
libraries that cannot be installed here (tests/gpu/ runs the real one where they exist).

It behaves like TensorRT where perceptd depends on it: the builder parses the ONNX (ONNX Runtime reads it)
and returns a 'plan' carrying the model; the runtime deserialises it, refusing anything else; the execution
context runs the model with ONNX Runtime on the stand-in device buffers, so perceptd's copies, shapes and
verification run for real. During a build it calls back into perceptd's logger, progress monitor and int8
calibrator as TensorRT does. Given one TensorRT version's names (tests/trt_wheels.py reads them from its
wheel) it answers hasattr as that version would and refuses every other name; given none, it has them all.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from tests.pycuda_standin import Memory, stand_in_pycuda

PLAN_MAGIC = b"STAND-IN TENSORRT PLAN\n"


class Recorder:
    """What one run touched: `used` names ("IBuilderConfig.set_flag", "BuilderFlag.FP16"), `absent` names
    asked for that this version lacks (a hasattr probe, or a bug), `unmodelled` names the stand-in lacks,
    `events` (attributes set, deserialisations, calibration batches) in call order."""

    def __init__(self, version: str, names: frozenset[str] | None = None):
        self.version, self.names = version, names
        self.used: set[str] = set()
        self.absent: set[str] = set()
        self.unmodelled: set[str] = set()
        self.events: list[tuple] = []

    def check(self, owner: str, name: str) -> None:
        qualified = f"{owner}.{name}"
        if self.names is not None and name not in self.names:
            self.absent.add(qualified)
            raise AttributeError(f"TensorRT {self.version} has no {qualified}")
        self.used.add(qualified)

    def modelled(self, get, owner: str, name: str):
        """A name this TensorRT has but the stand-in does not model: the test fails, never a silent hasattr."""
        try:
            return get()
        except (AttributeError, KeyError):
            self.unmodelled.add(f"{owner}.{name}")
            raise AttributeError(f"the stand-in does not model {owner}.{name}") from None

    def callback(self, obj, owner: str, name: str):
        """A method of perceptd's subclass that TensorRT calls (logger, progress monitor, calibrator)."""
        self.check(owner, name)
        return getattr(obj, name)


class _Obj:
    """A TensorRT object: every public attribute read or written is checked and recorded."""

    _kind = "?"

    def __init__(self, rec: Recorder, **private):
        object.__setattr__(self, "_rec", rec)
        object.__setattr__(self, "_set", {})  # what perceptd assigned (config.int8_calibrator = ...)
        self._keep(**private)

    def _keep(self, **private) -> None:  # the stand-in's own state, out of the recorded namespace
        for key, value in private.items():
            object.__setattr__(self, "_" + key, value)

    def __getattribute__(self, name):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        rec, kind = object.__getattribute__(self, "_rec"), type(self)._kind
        rec.check(kind, name)
        value = rec.modelled(lambda: object.__getattribute__(self, name), kind, name)
        if not isinstance(value, types.MethodType):
            return value

        def call(*args, **kwargs):  # keyword names are part of the API too (set_timing_cache(ignore_mismatch=))
            for keyword in kwargs:
                rec.check(f"{kind}.{name}", keyword)
            return value(*args, **kwargs)
        return call

    def __setattr__(self, name, value):
        self._rec.check(self._kind, name)
        self._set[name] = value
        self._rec.events.append((f"{self._kind}.{name}", value))


@dataclass(frozen=True)
class _Member:
    kind: str
    name: str
    value: int = field(compare=False)

    def __int__(self) -> int:
        return self.value


class _Enum:
    """trt.BuilderFlag and the like: members made on first use, numbered in that order."""

    def __init__(self, rec: Recorder, kind: str):
        self._rec, self._kind, self._members = rec, kind, {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        self._rec.check(self._kind, name)
        return self._member(name)

    def _member(self, name: str) -> _Member:  # the stand-in's own use: not recorded
        return self._members.setdefault(name, _Member(self._kind, name, len(self._members)))


def _base_class(rec: Recorder, kind: str, **class_attrs):
    """A class perceptd subclasses (ILogger, IProgressMonitor, IInt8EntropyCalibrator2); attributes read
    from the class itself (ILogger.Severity) are recorded too."""

    class Meta(type):
        def __getattr__(cls, name):
            if name.startswith("_"):
                raise AttributeError(name)
            rec.check(kind, name)
            return rec.modelled(lambda: class_attrs[name], kind, name)

    return Meta(kind, (), {"__init__": lambda self: None})


class StandIn:
    """One TensorRT version: `.tensorrt` and `.cuda` to put in sys.modules, `.rec` what they saw."""

    def __init__(self, version: str, names: frozenset[str] | None = None, dla_cores: int = 2):
        self.rec = Recorder(version, names)
        self.memory = Memory()
        self.tensorrt = _Module(self.rec, version, self.memory, dla_cores)
        self.cuda = stand_in_pycuda(self.memory)

    def install(self, monkeypatch) -> "StandIn":
        import engines.tensorrt

        pycuda = types.ModuleType("pycuda")
        pycuda.driver = self.cuda
        for name, module in (("tensorrt", self.tensorrt), ("pycuda", pycuda), ("pycuda.driver", self.cuda)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(engines.tensorrt, "_LOGGER", None)  # one per process: this "process" is new
        return self


class _Module(_Obj):
    _kind = "tensorrt"

    def __init__(self, rec, version, memory, dla_cores):
        super().__init__(rec)
        d = object.__getattribute__(self, "__dict__")
        d["__version__"] = version
        d["_memory"], d["_dla_cores"] = memory, dla_cores
        d["_enums"] = {k: _Enum(rec, k) for k in ("BuilderFlag", "NetworkDefinitionCreationFlag", "MemoryPoolType",
                                                  "DeviceType", "TensorIOMode", "DataType")}
        severity = _Enum(rec, "ILogger.Severity")
        d["_severity"] = severity
        d["_classes"] = {k: _base_class(rec, k, **({"Severity": severity} if k == "ILogger" else {}))
                         for k in ("ILogger", "IProgressMonitor", "IInt8EntropyCalibrator2")}

    def __getattribute__(self, name):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        rec = object.__getattribute__(self, "_rec")
        for table in ("_enums", "_classes"):
            found = object.__getattribute__(self, table).get(name)
            if found is not None:
                rec.check("tensorrt", name)
                return found
        return super().__getattribute__(name)

    def Builder(self, logger):  # noqa: N802 (TensorRT's names)
        return _Builder(self._rec, logger=logger, module=self)

    def Runtime(self, logger):  # noqa: N802
        return _Runtime(self._rec, logger=logger, module=self)

    def OnnxParser(self, network, logger):  # noqa: N802
        return _Parser(self._rec, network=network)

    def nptype(self, dtype):
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32}[dtype.name]

    def _log(self, logger, severity: str, msg: str) -> None:
        self._rec.callback(logger, "ILogger", "log")(self._severity._member(severity), msg)


class _Tensor(_Obj):
    _kind = "ITensor"
    name = property(lambda self: self._name)


class _Network(_Obj):
    _kind = "INetworkDefinition"

    num_inputs = property(lambda self: len(_session(self._onnx).get_inputs()))

    def get_input(self, index):
        return _Tensor(self._rec, name=_session(self._onnx).get_inputs()[index].name)


class _Parser(_Obj):
    _kind = "OnnxParser"

    num_errors = property(lambda self: 0)

    def parse(self, model, path=None):
        _session(bytes(model))  # ONNX Runtime refuses what TensorRT's parser would
        self._network._keep(onnx=bytes(model))
        return True

    def get_error(self, index):
        raise IndexError(index)


class _Profile(_Obj):
    _kind = "IOptimizationProfile"

    def set_shape(self, name, lo, opt, hi):
        self._keep(shapes=(name, tuple(lo), tuple(opt), tuple(hi)))


class _TimingCache(_Obj):
    _kind = "ITimingCache"

    def serialize(self):
        return b"STAND-IN TIMING " + self._data

    def combine(self, other, ignore_mismatch):
        self._keep(data=self._data + b"+" + other._data)
        return True


class _Config(_Obj):
    _kind = "IBuilderConfig"

    def set_memory_pool_limit(self, pool, size):
        pass

    def set_flag(self, flag):
        self._flags.add(flag.name)

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile):
        return True

    def create_timing_cache(self, data):
        return _TimingCache(self._rec, data=bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self._keep(timing=cache)
        return True

    def get_timing_cache(self):
        return self._timing


class _Builder(_Obj):
    _kind = "Builder"

    def create_network(self, flags=0):
        return _Network(self._rec, flags=flags, onnx=None)

    def create_builder_config(self):
        return _Config(self._rec, flags=set(), profiles=[], timing=None)

    def create_optimization_profile(self):
        return _Profile(self._rec)

    platform_has_fast_fp16 = property(lambda self: True)

    def build_serialized_network(self, network, config):
        rec, logger, module = self._rec, self._logger, self._module
        module._log(logger, "INFO", "stand-in: building")
        monitor = config._set.get("progress_monitor")
        if monitor is not None:
            rec.callback(monitor, "IProgressMonitor", "phase_start")("Building engine", None, 2)
            for step in range(2):
                rec.callback(monitor, "IProgressMonitor", "step_complete")("Building engine", step)
            rec.callback(monitor, "IProgressMonitor", "phase_finish")("Building engine")
        calibrator = config._set.get("int8_calibrator")
        if calibrator is not None and "INT8" in config._flags and not self._calibrate(calibrator, network):
            module._log(logger, "ERROR", "Calibration failure occurred with no scaling factors detected")
            return None
        _, lo, opt, hi = config._profiles[0]._shapes
        header = {"input": _session(network._onnx).get_inputs()[0].name, "profile": [lo, opt, hi],
                  "flags": sorted(config._flags)}
        return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network._onnx

    def _calibrate(self, calibrator, network) -> bool:
        """As TensorRT does: the cache if it gives one, else batches until None, then the cache written."""
        rec, name = self._rec, _session(network._onnx).get_inputs()[0].name
        batch = rec.callback(calibrator, "IInt8EntropyCalibrator2", "get_batch_size")()
        if rec.callback(calibrator, "IInt8EntropyCalibrator2", "read_calibration_cache")():
            return True
        shape = (batch, *_session(network._onnx).get_inputs()[0].shape[1:])
        seen = 0
        while (pointers := rec.callback(calibrator, "IInt8EntropyCalibrator2", "get_batch")([name])) is not None:
            x = self._module._memory.view(pointers[0], np.float32, shape)
            rec.events.append(("calibration batch", float(x.mean())))
            seen += 1
        if not seen:
            return False
        rec.callback(calibrator, "IInt8EntropyCalibrator2", "write_calibration_cache")(b"STAND-IN SCALES %d" % seen)
        return True


class _Runtime(_Obj):
    _kind = "Runtime"

    num_DLA_cores = property(lambda self: self._module._dla_cores)

    def deserialize_cuda_engine(self, data):
        self._rec.events.append(("deserialize_cuda_engine", self._set.get("DLA_core")))
        head, _, rest = bytes(data).partition(b"\n")
        if head + b"\n" != PLAN_MAGIC:
            self._module._log(self._logger, "ERROR", "stand-in: the plan is corrupt or not a plan")
            return None
        header, _, onnx_bytes = rest.partition(b"\n")
        s = _session(onnx_bytes)
        names = [s.get_inputs()[0].name] + [o.name for o in s.get_outputs()]
        return _Engine(self._rec, module=self._module, header=json.loads(header), onnx=onnx_bytes, names=names)


class _Engine(_Obj):
    _kind = "ICudaEngine"

    num_io_tensors = property(lambda self: len(self._names))

    def get_tensor_name(self, index):
        return self._names[index]

    def get_tensor_mode(self, name):
        return self._module._enums["TensorIOMode"]._member("INPUT" if name == self._names[0] else "OUTPUT")

    def get_tensor_dtype(self, name):
        return self._module._enums["DataType"]._member("FLOAT")  # I/O stay fp32 in every plan perceptd builds

    def create_execution_context(self):
        return _Context(self._rec, engine=self, shape=None, addresses={})


class _Context(_Obj):
    _kind = "IExecutionContext"

    def set_input_shape(self, name, shape):
        lo, _, hi = self._engine._header["profile"]
        ok = name == self._engine._names[0] and all(a <= b <= c for a, b, c in zip(lo, shape, hi))
        if ok:
            self._keep(shape=tuple(shape))
        return ok

    def get_tensor_shape(self, name):
        if name == self._engine._names[0]:
            return self._shape
        outputs = self._outputs(np.zeros(self._shape, np.float32))
        return outputs[self._engine._names.index(name) - 1].shape

    def set_tensor_address(self, name, address):
        self._addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle):
        memory, names = self._engine._module._memory, self._engine._names
        x = memory.view(self._addresses[names[0]], np.float32, self._shape)
        for name, out in zip(names[1:], self._outputs(x)):
            memory.view(self._addresses[name], np.float32, out.shape)[...] = out
        return True

    def _outputs(self, x):
        s = _session(self._engine._onnx)
        return [np.asarray(o, np.float32) for o in s.run(None, {s.get_inputs()[0].name: x})]


_SESSIONS: dict[int, ort.InferenceSession] = {}


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    key = hash(onnx_bytes)
    if key not in _SESSIONS:
        _SESSIONS[key] = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]
