"""The torch backend on CPU: TorchScript and exported programs, shapes from sidecar / program / options,
batch probing, and the one-line errors for files it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.base import EngineError, EngineOptions, available_backends, cpu_threads, create_engine
from engines.export import export_model
from engines.zoo import resolve_model
from pipeline.errors import ModelError
from tests import user_cnn

# torch 2.x deprecates TorchScript, yet it is still what many users ship; these tests write it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class FixedBatch(nn.Module):
    """Flattens with a hard-coded batch of 1, as some hand-written models do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 15 * 15, 3)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(1, -1))


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return user_cnn.make().eval()


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 64, 64), dtype=np.float32)


def _trace(model: nn.Module, path, shape=(1, 3, 64, 64)):
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, torch.zeros(shape)), str(path))
    return path


def test_backend_registry_when_listed_then_torch_is_there():
    assert "torch" in available_backends()


def test_torch_engine_when_exported_torchscript_then_matches_eager_and_reads_sidecar(cnn, tmp_path):
    export_model(cnn, (1, 3, 64, 64), tmp_path / "m.onnx", torchscript=tmp_path / "m.pt")
    with create_engine("torch", tmp_path / "m.pt", EngineOptions(max_batch=4)) as engine:
        assert engine.inputs[0].shape == (None, 3, 64, 64)  # from m.pt.json
        assert engine.outputs[0].shape == (None, 2) and engine.outputs[0].name == "output"
        assert engine.max_batch == 4
        assert engine.describe() == {"backend": "torch", "precision": "fp32", "device": "cpu", "max_batch": 4,
                                     "threads": cpu_threads(0)}
        x = _batch(3)
        (out,) = engine.infer(x)
    with torch.inference_mode():
        expected = cnn(torch.from_numpy(x)).numpy()
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_torch_engine_when_exported_program_then_input_shape_comes_from_the_program(cnn, tmp_path):
    program = torch.export.export(cnn, (torch.zeros(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    with create_engine("torch", tmp_path / "m.pt2", EngineOptions(max_batch=2)) as engine:
        assert engine.inputs[0].shape == (None, 3, 64, 64)
        x = _batch(2, seed=1)
        (out,) = engine.infer(x)
    with torch.inference_mode():
        np.testing.assert_allclose(out, cnn(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_torch_engine_when_torchscript_has_no_sidecar_then_size_from_options(cnn, tmp_path):
    path = _trace(cnn, tmp_path / "plain.pt")
    with create_engine("torch", path, EngineOptions(max_batch=2, input_hw=(64, 64))) as engine:
        assert engine.inputs[0].shape == (None, 3, 64, 64)
        assert engine.outputs[0].shape == (None, 2)


def test_torch_engine_when_no_size_known_and_model_needs_one_then_asks_for_input_size(cnn, tmp_path):
    path = _trace(cnn, tmp_path / "plain.pt")
    with pytest.raises(EngineError, match="set model.input_size"):
        create_engine("torch", path, EngineOptions())


def test_torch_engine_when_batch_is_hard_coded_then_runs_one_frame_per_call(tmp_path):
    path = _trace(FixedBatch().eval(), tmp_path / "fixed.pt", (1, 3, 32, 32))
    with create_engine("torch", path, EngineOptions(max_batch=8, input_hw=(32, 32))) as engine:
        assert engine.max_batch == 1
        assert engine.infer(np.zeros((1, 3, 32, 32), np.float32))[0].shape == (1, 3)


def test_torch_engine_when_given_onnx_with_torchscript_beside_it_then_runs_the_torchscript(cnn, tmp_path):
    # What `backend: auto` hands over when it picks torch for a model resolved as ONNX.
    export_model(cnn, (1, 3, 64, 64), tmp_path / "m.onnx", torchscript=tmp_path / "m.pt")
    with create_engine("torch", tmp_path / "m.onnx", EngineOptions(max_batch=2)) as engine:
        assert engine.model_path == tmp_path / "m.pt"
        assert engine.inputs[0].shape == (None, 3, 64, 64)


@pytest.mark.parametrize("kind, message", [
    ("onnx", "is an ONNX model; run it with engine.backend onnxruntime"),
    ("checkpoint", "is a torch.save checkpoint"),
    ("text", "is neither TorchScript"),
    ("missing", "no such file"),
])
def test_torch_engine_when_file_is_not_runnable_then_one_line_error(kind, message, cnn, tmp_path):
    path = tmp_path / f"m.{kind}"
    if kind == "onnx":
        export_model(cnn, (1, 3, 64, 64), path)
    elif kind == "checkpoint":
        torch.save(cnn.state_dict(), path)
    elif kind == "text":
        path.write_text("not a model\n")
    with pytest.raises(EngineError) as info:
        create_engine("torch", path, EngineOptions())
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_torch_engine_when_cuda_asked_without_gpu_then_error(cnn, tmp_path):
    path = _trace(cnn, tmp_path / "plain.pt")
    with pytest.raises(EngineError, match="sees no CUDA GPU"):
        create_engine("torch", path, EngineOptions(device="cuda", input_hw=(64, 64)))


def test_resolve_model_when_torch_backend_and_onnx_file_then_model_error(cnn, tmp_path, cache_dir):
    export_model(cnn, (1, 3, 64, 64), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="ONNX model; run it with engine.backend onnxruntime"):
        resolve_model(str(tmp_path / "m.onnx"), "auto", None, None, cache_dir, list, backend="torch")


def test_resolve_model_when_onnx_backend_and_torchscript_file_then_suggests_torch_backend(cnn, tmp_path, cache_dir):
    path = _trace(cnn, tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="run it with engine.backend torch"):
        resolve_model(str(path), "auto", None, None, cache_dir, list, backend="onnxruntime")

