"""TensorRT for real: build and run engines from a tiny ONNX model and from the built-in RetinaFace, compared
with ONNX Runtime on the same model (max abs difference printed; run with -s to see it). Skipped by
tests/gpu/conftest.py where TensorRT, pycuda or a GPU is missing."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from engines.adapters import AdapterParams
from engines.adapters.retinaface import RetinaFaceAdapter
from engines.base import EngineOptions, create_engine
from engines.build import TensorRTOptions
from engines.cache import sidecar_path
from engines.zoo import materialise
from pipeline.supervisor import WorkerClient
from tests.conftest import photo_bgr
from tests.test_fp16 import tiny_conv_model
from tests.test_worker import spec as worker_spec


def options(tmp_path, precision="fp32", max_batch=4, input_hw=None) -> EngineOptions:
    return EngineOptions(max_batch=max_batch, precision=precision, device="cuda", input_hw=input_hw,
                         cache_dir=str(tmp_path / "cache"), tensorrt=TensorRTOptions())


def reference(model, x) -> list[np.ndarray]:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def normalised(got, want) -> tuple[float, float]:
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    return max(d / max(1.0, float(np.abs(w).max())) for d, w in zip(diffs, want)), max(diffs)


@pytest.mark.parametrize("precision,tolerance", [("fp32", 0.02), ("fp16", 0.05)])
def test_tensorrt_engine_when_model_is_tiny_matches_onnxruntime(tmp_path, precision, tolerance):
    model = tiny_conv_model(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    with create_engine("tensorrt", model, options(tmp_path, precision)) as engine:
        assert engine.artifact.built and engine.describe()["backend"] == "tensorrt"
        assert [o.name for o in engine.outputs] == ["features", "pooled"]
        for n in (1, 3):
            got = engine.infer(x[:n])
            err, diff = normalised(got, reference(model, x[:n]))
            print(f"tiny {precision} batch {n}: max abs diff vs onnxruntime {diff:.3g} (normalised {err:.3g})")
            assert err <= tolerance and [g.dtype for g in got] == [np.float32, np.float32]
    with create_engine("tensorrt", model, options(tmp_path, precision)) as again:
        assert not again.artifact.built  # the cached engine, its sidecar matching


@pytest.mark.parametrize("precision,tolerance", [("fp32", 0.02), ("fp16", 0.05)])
def test_tensorrt_engine_when_model_is_retinaface_matches_onnxruntime(tmp_path, cache_dir, precision, tolerance):
    model = materialise("retinaface", cache_dir)
    adapter = RetinaFaceAdapter((320, 320), [], AdapterParams(confidence=0.8, iou=0.4))
    batch = np.zeros((2, 3, 320, 320), np.float32)
    fits = [adapter.preprocess(photo_bgr(name), batch[i]) for i, name in enumerate(("astronaut", "coffee"))]
    with create_engine("tensorrt", model, options(tmp_path, precision, input_hw=(320, 320))) as engine:
        assert engine.inputs[0].shape[1:] == (3, 320, 320)
        got = engine.infer(batch)
        side = json.loads(sidecar_path(engine.artifact.path).read_text())
    want = reference(model, batch)
    err, diff = normalised(got, want)
    print(f"retinaface {precision}: max abs diff vs onnxruntime {diff:.3g} (normalised {err:.3g}); "
          f"build verification {side['verification']}")
    assert err <= tolerance and side["verification"]["error"] <= tolerance
    faces = adapter.postprocess([o[0] for o in got], fits[0])
    ref = adapter.postprocess([o[0] for o in want], fits[0])
    assert len(faces) == len(ref) == 1
    assert np.abs(np.array(faces[0].box) - np.array(ref[0].box)).max() <= 2.0
    assert adapter.postprocess([o[1] for o in got], fits[1]) == []


def test_tensorrt_engine_when_cached_engine_is_corrupt_rebuilds_instead_of_loading(tmp_path):
    model = tiny_conv_model(tmp_path / "tiny.onnx")
    with create_engine("tensorrt", model, options(tmp_path)) as engine:
        path = engine.artifact.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with create_engine("tensorrt", model, options(tmp_path)) as engine:
        assert engine.artifact.built
        x = np.ones((1, 3, 32, 32), np.float32)
        assert normalised(engine.infer(x), reference(model, x))[0] <= 0.02


def test_tensorrt_engine_when_batch_exceeds_the_profile_raises(tmp_path):
    model = tiny_conv_model(tmp_path / "tiny.onnx")
    with create_engine("tensorrt", model, options(tmp_path, max_batch=2)) as engine:
        with pytest.raises(Exception, match="does not fit"):
            engine.infer(np.ones((3, 3, 32, 32), np.float32))


def test_worker_when_backend_is_auto_on_a_gpu_picks_tensorrt(cache_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    spec = worker_spec(cache_dir, max_batch=2)
    spec = dataclasses.replace(spec, backend="auto", input_size=(320, 320),
                               options=dataclasses.replace(options(tmp_path, "fp16", max_batch=2), input_hw=None))
    worker = WorkerClient(spec)
    try:
        info = worker.start(900)
    finally:
        worker.stop()
    assert info["backend"] == "tensorrt" and info["device"] == "cuda" and info["input_size"] == [320, 320]


def test_tensorrt_engine_when_int8_calibrates_on_photos_matches_onnxruntime_and_reuses_its_scales(tmp_path, photos,
                                                                                                 caplog):
    """TensorRT 8.5-10's entropy calibrator fed by real photos, preprocessed by the caller's callable; the
    scales are written beside their digest and read back by the next build instead of calibrating again."""
    import tensorrt

    from pipeline.calibration import FramePreprocess

    if int(tensorrt.__version__.split(".")[0]) >= 11:
        pytest.skip(f"TensorRT {tensorrt.__version__} has no calibrators (int8 needs a quantized model)")
    caplog.set_level(logging.INFO, logger="engines")
    model = tiny_conv_model(tmp_path / "tiny.onnx")
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in photos.values():
        (folder / path.name).write_bytes(path.read_bytes())
    int8 = dataclasses.replace(options(tmp_path, "int8", max_batch=2), tensorrt=TensorRTOptions(
        calibration_images=str(folder), calibration_preprocess=FramePreprocess("classifier")))
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    with create_engine("tensorrt", model, int8) as engine:
        err, diff = normalised(engine.infer(x), reference(model, x))
        cache = engine.job.calibration.cache_path
    print(f"tiny int8: max abs diff vs onnxruntime {diff:.3g} (normalised {err:.3g})")
    assert err <= 0.25 and cache.is_file() and "1 batch(es) of 2 fed to TensorRT" in caplog.text
    caplog.clear()
    again = dataclasses.replace(int8, cache_dir=str(tmp_path / "other"),  # a new engine, the same scales
                                tensorrt=dataclasses.replace(int8.tensorrt, calibration_cache=str(cache)))
    with create_engine("tensorrt", model, again) as engine:
        assert engine.artifact.built
    assert f"using calibration cache {cache}" in caplog.text and "fed to TensorRT" not in caplog.text
