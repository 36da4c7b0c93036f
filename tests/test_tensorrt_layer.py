"""engines/tensorrt.py, the thin layer that calls TensorRT, over tests/trt_standin.py (TensorRT cannot run
here; tests/gpu/ runs the real one). The plan the stand-in builds carries the real ONNX model and its
execution context runs it with ONNX Runtime on the buffers perceptd binds, so what perceptd returns can be
compared with ONNX Runtime; the order of TensorRT calls is in the stand-in's events."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from engines.base import EngineOptions, create_engine
from engines.build import TensorRTOptions
from engines.cache import sha256_file, sidecar_path
from tests.test_fp16 import tiny_conv_model
from tests.trt_standin import StandIn


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_conv_model(tmp_path_factory.mktemp("layer") / "tiny.onnx")


def options(tmp_path, precision="fp16", max_batch=4, **trt) -> EngineOptions:
    return EngineOptions(max_batch=max_batch, precision=precision, device="cuda", cache_dir=str(tmp_path / "cache"),
                         tensorrt=TensorRTOptions(**trt))


def reference(model, x) -> list[np.ndarray]:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def test_tensorrt_engine_when_dla_core_is_set_sets_the_runtime_core_before_deserialising(tmp_path, tiny, monkeypatch):
    stand_in = StandIn("10.3.0", dla_cores=2).install(monkeypatch)
    with create_engine("tensorrt", tiny, options(tmp_path, dla_core=1)) as engine:
        assert engine.device == "dla1"
    events = stand_in.rec.events
    assert ("IBuilderConfig.DLA_core", 1) in events  # built for core 1...
    runtime_core = events.index(("Runtime.DLA_core", 1))
    loaded = events.index(("deserialize_cuda_engine", 1))  # ...and loaded with the runtime on core 1
    assert runtime_core < loaded


def test_tensorrt_engine_when_no_dla_core_leaves_the_runtime_core_alone(tmp_path, tiny, monkeypatch):
    stand_in = StandIn("10.3.0").install(monkeypatch)
    with create_engine("tensorrt", tiny, options(tmp_path)):
        pass
    assert not any(name.endswith("DLA_core") for name, *_ in stand_in.rec.events)
    assert ("deserialize_cuda_engine", None) in stand_in.rec.events


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.0.0"])
def test_tensorrt_engine_when_run_returns_what_onnxruntime_computes_through_the_device_buffers(tmp_path, tiny,
                                                                                            monkeypatch, version):
    StandIn(version).install(monkeypatch)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32)
    with create_engine("tensorrt", tiny, options(tmp_path, "fp32")) as engine:
        assert [o.name for o in engine.outputs] == ["features", "pooled"]
        for n in (4, 1, 3):  # the largest batch first, then smaller ones: set_input_shape again each time
            got = engine.infer(x[:n])
            for g, w in zip(got, reference(tiny, x[:n])):
                np.testing.assert_array_equal(g, w)
        assert engine.artifact.sidecar["verification"]["error"] == 0.0


def test_tensorrt_engine_when_batch_is_fixed_runs_a_smaller_batch_padded(tmp_path, tiny, monkeypatch):
    """A DLA engine has one batch size: one frame runs padded, and only its own results come back."""
    StandIn("10.3.0").install(monkeypatch)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    with create_engine("tensorrt", tiny, options(tmp_path, max_batch=2, dla_core=0)) as engine:
        assert engine.inputs[0].shape == (2, 3, 32, 32)
        got = engine.infer(x)
    assert [g.shape[0] for g in got] == [1, 1]
    np.testing.assert_array_equal(got[1], reference(tiny, x)[1])


def test_tensorrt_engine_when_cached_engine_does_not_deserialise_rebuilds_it(tmp_path, tiny, monkeypatch, caplog):
    """A file whose sidecar matches but that TensorRT refuses (written by another build of the same version)."""
    StandIn("10.3.0").install(monkeypatch)
    with create_engine("tensorrt", tiny, options(tmp_path)) as engine:
        path = engine.artifact.path
    path.write_bytes(b"not a plan")
    side = json.loads(sidecar_path(path).read_text())
    side.update(engine_bytes=path.stat().st_size, engine_sha256=sha256_file(path))
    sidecar_path(path).write_text(json.dumps(side))
    caplog.set_level(logging.WARNING, logger="engines")
    with create_engine("tensorrt", tiny, options(tmp_path)) as engine:
        assert engine.artifact.built and engine.artifact.path == path
        x = np.ones((2, 3, 32, 32), np.float32)
        np.testing.assert_array_equal(engine.infer(x)[1], reference(tiny, x)[1])
    assert "does not deserialise" in caplog.text and "the plan is corrupt" in caplog.text

