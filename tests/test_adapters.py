"""YOLO and classifier adapters end to end: tiny ONNX models with known outputs, run by the real engine."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from engines.adapters import AdapterParams, letterbox, nms, read_labels
from engines.adapters.classifier import ClassifierAdapter
from engines.adapters.yolo import YoloAdapter, detect_layout
from engines.base import EngineOptions, create_engine

SRC_W, SRC_H = 320, 240  # into 640x640: scale 2, pad_y 80, pad_x 0


def const_model(path, input_hw, const):
    """A model whose per-frame output is `const` whatever the input: const + 0 * sum(input).

    The input still feeds the output so the runtime keeps the batch axis and cannot fold the graph away.
    """
    const = np.asarray(const, dtype=np.float32)
    h, w = input_hw
    inits = [
        numpy_helper.from_array(const[None], "const"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1] + [1] * const.ndim, dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["images", "axes"], ["total"], keepdims=1),
        helper.make_node("Reshape", ["total", "shape"], ["total_r"]),
        helper.make_node("Mul", ["total_r", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "const"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "const", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, h, w])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *const.shape])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what onnxruntime >= 1.16 accepts
    save(model, str(path))
    return path


def run(tmp_path, adapter, const, images):
    """Preprocess `images` into one batch, run the const model on it, postprocess each frame."""
    model = const_model(tmp_path / "m.onnx", adapter.input_hw, const)
    batch = np.empty((len(images), 3, *adapter.input_hw), dtype=np.float32)
    fits = [adapter.preprocess(img, batch[i]) for i, img in enumerate(images)]
    with create_engine("onnxruntime", model, EngineOptions(max_batch=len(images))) as engine:
        adapter.check_outputs([o.shape for o in engine.outputs])
        outputs = engine.infer(batch)
    return [adapter.postprocess([o[i] for o in outputs], fit) for i, fit in enumerate(fits)]


def source(color=(0, 0, 0)):
    img = np.empty((SRC_H, SRC_W, 3), dtype=np.uint8)
    img[:] = color
    return img


def labels_file(tmp_path, names):
    path = tmp_path / "labels.txt"
    path.write_text("# a comment\n\n" + "\n".join(names) + "\n", encoding="utf-8")
    return read_labels(path)


def xyxy_to_xywh(x1, y1, x2, y2):
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def v8_tensor(rows, nc):
    """rows: (x1, y1, x2, y2, class_id, score) in input pixels -> [4+nc, N]."""
    out = np.zeros((4 + nc, len(rows)), dtype=np.float32)
    for j, (x1, y1, x2, y2, c, s) in enumerate(rows):
        out[:4, j] = xyxy_to_xywh(x1, y1, x2, y2)
        out[4 + c, j] = s
    return out


def boxes(dets):
    return np.array([d.box for d in dets])


def test_read_labels_when_comments_and_blank_lines_then_skipped(tmp_path):
    assert labels_file(tmp_path, ["person", "car"]) == ["person", "car"]
    assert read_labels(None) == []


def test_nms_when_same_class_overlaps_then_lower_score_suppressed():
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    s = np.array([0.8, 0.9, 0.7], dtype=np.float32)
    assert nms(b, s, 0.45).tolist() == [1, 2]
    assert nms(b, s, 0.45, class_ids=np.array([0, 1, 0])).tolist() == [1, 0, 2]  # other class survives
    assert nms(b, s, 0.45, limit=1).tolist() == [1]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.45).size == 0


def test_letterbox_when_320x240_into_640_then_centered_and_maps_back():
    canvas, fit = letterbox(source((255, 0, 0)), (640, 640), 114, center=True)
    assert (fit.scale, fit.pad_x, fit.pad_y, fit.src_w, fit.src_h) == (2.0, 0.0, 80.0, SRC_W, SRC_H)
    assert (canvas[:80] == 114).all() and (canvas[560:] == 114).all()
    assert (canvas[80:560] == (255, 0, 0)).all()
    mapped = fit.boxes_to_source(np.array([[100, 180, 300, 380], [600, 50, 700, 130]]))
    np.testing.assert_allclose(mapped, [[50, 50, 150, 150], [300, 0, 320, 25]])  # second one clipped
    np.testing.assert_allclose(fit.points_to_source(np.array([[100.0, 80.0]])), [[50, 0]])


def test_yolo_preprocess_when_blue_image_then_rgb_scaled_with_grey_pad():
    adapter = YoloAdapter((640, 640), [], AdapterParams())
    out = np.empty((3, 640, 640), dtype=np.float32)
    fit = adapter.preprocess(source((255, 0, 0)), out)  # BGR blue
    assert fit.pad_y == 80
    assert (out[2, 80:560] == 1.0).all() and (out[:2, 80:560] == 0.0).all()
    np.testing.assert_allclose(out[:, :80], 114 / 255, rtol=1e-6)


@pytest.mark.parametrize("src_hw", [(720, 1280), (144, 176), (500, 200), (240, 320)])
@pytest.mark.parametrize("family", ["yolo", "retinaface"])
def test_preprocess_when_any_source_size_then_same_input_as_letterbox_canvas(family, src_hw):
    """The adapters write the input straight from the resized frame (no padded canvas); the values must be
    exactly those of letterboxing onto a canvas and converting it, padding included."""
    from engines.adapters.retinaface import MEAN_BGR, RetinaFaceAdapter
    from engines.adapters.yolo import PAD_VALUE

    rng = np.random.default_rng(sum(src_hw))
    image = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    hw = (384, 640)
    if family == "yolo":
        adapter = YoloAdapter(hw, [], AdapterParams())
        canvas, want_fit = letterbox(image, hw, PAD_VALUE, center=True, interpolation=cv2.INTER_LINEAR)
        want = canvas[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    else:
        adapter = RetinaFaceAdapter(hw, None, AdapterParams())
        canvas, want_fit = letterbox(image, hw, tuple(int(v) for v in MEAN_BGR), center=False)
        want = canvas.transpose(2, 0, 1).astype(np.float32) - MEAN_BGR[:, None, None]
    out = np.full((3, *hw), np.nan, dtype=np.float32)  # stale values must all be overwritten
    for _ in range(2):  # the second frame reuses the adapter's resize buffer
        fit = adapter.preprocess(image, out)
        assert fit == want_fit
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
        out[:] = np.nan


def test_yolo_preprocess_when_768x576_frame_then_ultralytics_bilinear_letterbox():
    """Ultralytics' LetterBox resizes bilinearly whatever the ratio (the pixels its models are trained on);
    written here as its recipe: resize, grey border, BGR -> RGB, / 255."""
    image = np.random.default_rng(7).integers(0, 256, (576, 768, 3), dtype=np.uint8)
    resized = cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.copyMakeBorder(resized, 80, 80, 0, 0, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    want = canvas[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255
    out = np.empty((3, 640, 640), dtype=np.float32)
    YoloAdapter((640, 640), [], AdapterParams()).preprocess(image, out)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_yolo_v8_when_boxes_overlap_then_classwise_nms_and_confidence(tmp_path):
    labels = labels_file(tmp_path, ["person", "car"])
    rows = [(100, 180, 300, 380, 0, 0.9),  # kept
            (110, 190, 310, 390, 0, 0.8),  # same class, IoU 0.82: suppressed
            (105, 185, 305, 385, 1, 0.7),  # other class on top of the first: kept
            (400, 400, 500, 500, 1, 0.3),  # below confidence
            (400, 400, 500, 500, 0, 0.6)]  # kept
    # [6, 5]: shape alone says v5 (6 > 5); 6 == 4 + nc with two labels says v8.
    adapter = YoloAdapter((640, 640), labels, AdapterParams(confidence=0.5, iou=0.45))
    (dets,) = run(tmp_path, adapter, v8_tensor(rows, 2), [source()])
    assert [(d.label, d.class_id) for d in dets] == [("person", 0), ("car", 1), ("person", 0)]
    np.testing.assert_allclose([d.score for d in dets], [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(boxes(dets), [[50, 50, 150, 150], [52.5, 52.5, 152.5, 152.5],
                                             [200, 160, 250, 210]], atol=1e-4)


def test_yolo_v8_when_labels_empty_then_shape_decides_and_ids_are_labels(tmp_path):
    rows = [(100, 180, 300, 380, 1, 0.9)] + [(0, 0, 1, 1, 0, 0.0)] * 7  # [6, 8]: fewer channels than boxes
    adapter = YoloAdapter((640, 640), [], AdapterParams())
    (dets,) = run(tmp_path, adapter, v8_tensor(rows, 2), [source()])
    assert [(d.label, d.class_id) for d in dets] == [("1", 1)]


def test_yolo_v8_when_batch_of_two_then_each_frame_mapped_with_its_own_fit(tmp_path):
    adapter = YoloAdapter((640, 640), ["person"], AdapterParams())
    big = np.zeros((480, 640, 3), dtype=np.uint8)  # scale 1, pad_y 80
    out = run(tmp_path, adapter, v8_tensor([(100, 180, 300, 380, 0, 0.9)], 1), [source(), big])
    np.testing.assert_allclose(boxes(out[0]), [[50, 50, 150, 150]], atol=1e-4)
    np.testing.assert_allclose(boxes(out[1]), [[100, 100, 300, 300]], atol=1e-4)


def test_yolo_v8_when_max_detections_and_classes_then_capped_and_filtered(tmp_path):
    rows = [(i * 100, 100, i * 100 + 50, 150, i % 2, 0.9 - i * 0.1) for i in range(6)]
    labels = ["person", "car"]
    capped = YoloAdapter((640, 640), labels, AdapterParams(max_detections=2))
    (dets,) = run(tmp_path, capped, v8_tensor(rows, 2), [source()])
    np.testing.assert_allclose([d.score for d in dets], [0.9, 0.8], rtol=1e-6)
    cars = YoloAdapter((640, 640), labels, AdapterParams(classes=("car",), max_detections=2))
    (dets,) = run(tmp_path, cars, v8_tensor(rows, 2), [source()])
    assert [d.label for d in dets] == ["car", "car"]  # unwanted classes take no slots
    np.testing.assert_allclose([d.score for d in dets], [0.8, 0.6], rtol=1e-6)


def test_yolo_v5_when_objectness_times_class_then_scored_and_nms(tmp_path):
    labels = labels_file(tmp_path, ["person", "car"])

    def row(x1, y1, x2, y2, obj, c0, c1):
        return xyxy_to_xywh(x1, y1, x2, y2) + [obj, c0, c1]

    pred = np.array([row(100, 180, 300, 380, 0.9, 0.9, 0.1),  # 0.81 person
                     row(110, 190, 310, 390, 0.85, 0.9, 0.1),  # 0.765 person, suppressed
                     row(105, 185, 305, 385, 0.8, 0.1, 0.9),  # 0.72 car, kept
                     row(400, 400, 500, 500, 0.9, 0.5, 0.2),  # 0.45: objectness passes, product does not
                     row(400, 400, 500, 500, 0.3, 1.0, 0.0)], dtype=np.float32)  # objectness too low
    # [5, 7]: shape alone says v8 (5 < 7); 7 == 5 + nc with two labels says v5.
    adapter = YoloAdapter((640, 640), labels, AdapterParams(confidence=0.5))
    (dets,) = run(tmp_path, adapter, pred, [source()])
    assert [(d.label, d.class_id) for d in dets] == [("person", 0), ("car", 1)]
    np.testing.assert_allclose([d.score for d in dets], [0.81, 0.72], rtol=1e-5)
    np.testing.assert_allclose(boxes(dets), [[50, 50, 150, 150], [52.5, 52.5, 152.5, 152.5]], atol=1e-4)


def test_yolo_layout_when_real_or_ambiguous_shapes_then_rule_holds():
    assert detect_layout((84, 8400)) == "v8" and detect_layout((84, 8400), 80) == "v8"
    assert detect_layout((25200, 85)) == "v5" and detect_layout((25200, 85), 80) == "v5"
    assert detect_layout((6, 7), 2) == "v8"  # both fit nc: falls back to the shape, channels < boxes
    assert detect_layout((84, 8400), 3) == "v8"  # labels fit neither: shape decides


def test_yolo_check_outputs_when_not_yolo_then_value_error():
    adapter = YoloAdapter((640, 640), [], AdapterParams())
    adapter.check_outputs([(None, 84, 8400), (None, 32, 160, 160)])  # segmentation export: fine
    for bad in ([], [(1, 84)], [(1, 3, 8400)], [(1, 8400, 5)], [(1, 1, 84, 8400)]):
        with pytest.raises(ValueError, match="YOLO"):
            adapter.check_outputs(bad)


def test_classifier_when_logits_then_softmax_top_k_with_labels(tmp_path):
    labels = labels_file(tmp_path, ["cat", "dog", "bird", "fish"])
    logits = np.array([1.0, 3.0, 0.5, -2.0], dtype=np.float32)
    expected = np.exp(logits) / np.exp(logits).sum()
    adapter = ClassifierAdapter((224, 224), labels, AdapterParams(top_k=2, confidence=0.05))
    (dets,) = run(tmp_path, adapter, logits.reshape(4, 1, 1), [source()])  # a 1x1 conv head
    assert [(d.label, d.class_id) for d in dets] == [("dog", 1), ("cat", 0)]
    np.testing.assert_allclose([d.score for d in dets], expected[[1, 0]], rtol=1e-5)
    assert all(d.box == (0.0, 0.0, SRC_W, SRC_H) for d in dets)


def test_classifier_when_probabilities_then_not_resoftmaxed(tmp_path):
    probs = np.array([0.1, 0.6, 0.3, 0.0], dtype=np.float32)
    adapter = ClassifierAdapter((224, 224), [], AdapterParams(top_k=5, confidence=0.05))
    (dets,) = run(tmp_path, adapter, probs, [source()])
    assert [d.label for d in dets] == ["1", "2", "0"]  # zero-probability class is under the confidence
    np.testing.assert_allclose([d.score for d in dets], [0.6, 0.3, 0.1], rtol=1e-6)


def test_classifier_preprocess_when_identity_norm_then_center_crop_and_rgb():
    adapter = ClassifierAdapter((224, 224), [], AdapterParams(), mean=(0, 0, 0), std=(1, 1, 1))
    out = np.empty((3, 224, 224), dtype=np.float32)
    fit = adapter.preprocess(source((0, 128, 255)), out)  # BGR
    np.testing.assert_allclose(out[:, 100, 100], [1.0, 128 / 255, 0.0], rtol=1e-6)
    # Shorter side 240 -> 256, crop 224: the crop covers the central 87.5% of the source height.
    region = fit.boxes_to_source(np.array([[0, 0, 224, 224]]))[0]
    np.testing.assert_allclose(region[[1, 3]], [15, 225], atol=0.5)
    np.testing.assert_allclose(region[2] - region[0], 210, atol=0.5)
    assert abs((region[0] + region[2]) / 2 - SRC_W / 2) <= 1.0  # crop offset is rounded, as torchvision's


def test_classifier_when_default_norm_then_imagenet_mean_std():
    adapter = ClassifierAdapter((224, 224), [], AdapterParams())
    out = np.empty((3, 224, 224), dtype=np.float32)
    adapter.preprocess(source((255, 255, 255)), out)
    np.testing.assert_allclose(out[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="classifier"):
        adapter.check_outputs([(1, 10, 7, 7)])
