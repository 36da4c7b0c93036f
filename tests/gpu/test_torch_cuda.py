"""The torch backend on CUDA: fp16, channels-last, same answers as on CPU. Skipped without a CUDA GPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.adapters import AdapterParams  # noqa: E402
from engines.adapters.classifier import ClassifierAdapter, softmax  # noqa: E402
from engines.base import EngineOptions, create_engine  # noqa: E402
from engines.export import export_model  # noqa: E402
from engines.zoo import BUILTINS, materialise  # noqa: E402
from tests import user_cnn  # noqa: E402
from tests.conftest import photo_bgr  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")]

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _photos_batch(adapter: ClassifierAdapter) -> np.ndarray:
    batch = np.zeros((2, 3, 224, 224), np.float32)
    for i, name in enumerate(("chelsea", "coffee")):
        adapter.preprocess(photo_bgr(name), batch[i])
    return batch


def test_torch_engine_on_cuda_when_mobilenet_v2_then_fp16_and_same_classes_as_cpu(cache_dir):
    path = materialise("mobilenet_v2", cache_dir, "torch")
    labels = BUILTINS["mobilenet_v2"].labels
    batch = _photos_batch(ClassifierAdapter((224, 224), list(labels), AdapterParams()))
    with create_engine("torch", path, EngineOptions(max_batch=4, device="cuda")) as gpu:
        assert gpu.describe() == {"backend": "torch", "precision": "fp16", "device": "cuda", "max_batch": 4}
        (on_gpu,) = gpu.infer(batch)
    with create_engine("torch", path, EngineOptions(max_batch=4)) as cpu:
        (on_cpu,) = cpu.infer(batch)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == (2, 1000)
    for row_gpu, row_cpu, wanted in zip(on_gpu, on_cpu, (CATS, {"espresso"})):
        assert labels[int(np.argmax(row_gpu))] in wanted
        # fp16 against fp32: probabilities agree to a couple of decimals.
        assert float(np.max(np.abs(softmax(row_gpu) - softmax(row_cpu)))) < 1e-2


def test_torch_engine_on_cuda_when_exported_program_then_matches_cpu_torch(tmp_path):
    torch.manual_seed(0)
    model = user_cnn.make().eval()
    export_model(model, (1, 3, 64, 64), tmp_path / "m.onnx", exported_program=tmp_path / "m.pt2")
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    with create_engine("torch", tmp_path / "m.pt2", EngineOptions(max_batch=4, device="cuda")) as gpu:
        assert gpu.precision == "fp16" and gpu.inputs[0].shape == (None, 3, 64, 64)
        (out,) = gpu.infer(x)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-2, rtol=2e-2)
