"""ONNX -> mixed fp16 (TensorRT 11's fp16): outputs stay within a stated tolerance of fp32, I/O stays fp32.

Run in ONNX Runtime on CPU, the converted graph is the one TensorRT 11 would parse, so its accuracy is
checked here without a GPU. Tolerance (the same measure engines are verified with): max |fp16 - fp32| /
max(1, max |fp32|), worst output, <= FP16_TOLERANCE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engines.adapters import AdapterParams
from engines.adapters.retinaface import RetinaFaceAdapter
from engines.build import DEFAULT_TOLERANCE
from engines.fp16 import convert_to_mixed_fp16
from engines.verify import check, compare_with_onnxruntime
from engines.zoo import materialise
from tests.conftest import photo_bgr

FP16_TOLERANCE = DEFAULT_TOLERANCE["fp16"]  # 0.05; RetinaFace measures ~0.027, the tiny CNN ~0.0004


def tiny_conv_model(path: Path, seed: int = 0, dynamic_hw: bool = False, hw: tuple[int, int] = (32, 32),
                    scale: float = 1.0) -> Path:
    """A small real CNN: conv3x3 -> relu -> conv1x1 -> 'features' [N,4,H,W] and global-avg-pool -> 'pooled'
    [N,4]; dynamic batch, fixed or dynamic H/W. `seed` and `scale` make a different (wrong) model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.2 * scale).astype(np.float32)
    b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    h, w = ("height", "width") if dynamic_hw else hw
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4, h, w]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


def runner(model):
    s = session(model)
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})


@pytest.fixture(scope="module")
def retinaface(cache_dir) -> Path:
    return materialise("retinaface", cache_dir)


def test_fp16_conversion_when_model_is_retinaface_stays_within_tolerance(retinaface):
    fp16, converter = convert_to_mixed_fp16(retinaface)
    assert converter in ("onnxruntime-float16", "modelopt-autocast")
    s32, s16 = session(retinaface), session(fp16)
    assert [i.type for i in s16.get_inputs()] == ["tensor(float)"]
    assert [o.type for o in s16.get_outputs()] == ["tensor(float)"] * 3
    assert [o.name for o in s16.get_outputs()] == [o.name for o in s32.get_outputs()]
    # Inside the graph it really is fp16: most initializers were converted.
    import onnx

    types = [t.data_type for t in onnx.load_from_string(fp16).graph.initializer]
    assert types.count(onnx.TensorProto.FLOAT16) > len(types) // 2

    v = compare_with_onnxruntime(runner(fp16), retinaface, (3, 320, 320), (1, 2))
    print(f"retinaface fp16 vs fp32: error {v.error:.4g}, max abs diff {v.max_abs_diff:.4g}, {v.per_output}")
    assert 0 < v.error <= FP16_TOLERANCE
    check(v, FP16_TOLERANCE, refuse=True, what="fp16 RetinaFace")  # does not raise


def test_fp16_conversion_when_retinaface_sees_a_real_face_finds_the_same_box(retinaface):
    fp16, _ = convert_to_mixed_fp16(retinaface)
    adapter = RetinaFaceAdapter((512, 512), [], AdapterParams(confidence=0.8, iou=0.4))
    batch = np.zeros((1, 3, 512, 512), np.float32)
    fit = adapter.preprocess(photo_bgr("astronaut"), batch[0])
    ref = adapter.postprocess([o[0] for o in runner(retinaface)(batch)], fit)
    got = adapter.postprocess([o[0] for o in runner(fp16)(batch)], fit)
    assert len(ref) == len(got) == 1
    diff = np.abs(np.array(ref[0].box) - np.array(got[0].box)).max()
    print(f"astronaut face box fp16 vs fp32: max abs diff {diff:.3f} px, "
          f"score {got[0].score:.4f} vs {ref[0].score:.4f}")
    assert diff <= 1.0 and abs(ref[0].score - got[0].score) < 0.01


def test_fp16_conversion_when_model_is_a_tiny_cnn_stays_within_tolerance(tmp_path):
    model = tiny_conv_model(tmp_path / "tiny.onnx")
    fp16, _ = convert_to_mixed_fp16(model)
    s16 = session(fp16)
    assert [i.type for i in s16.get_inputs()] + [o.type for o in s16.get_outputs()] == ["tensor(float)"] * 3
    v = compare_with_onnxruntime(runner(fp16), model, (3, 32, 32), (1, 4))
    print(f"tiny cnn fp16 vs fp32: error {v.error:.4g}, max abs diff {v.max_abs_diff:.4g}")
    assert 0 < v.error <= FP16_TOLERANCE
    out = runner(fp16)(np.ones((2, 3, 32, 32), np.float32))
    assert [o.dtype for o in out] == [np.float32, np.float32]
