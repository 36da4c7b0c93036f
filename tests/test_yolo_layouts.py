"""YOLO layouts and Ultralytics metadata without Ultralytics: tiny ONNX models with known outputs (see
test_adapters.const_model) and metadata written as Ultralytics writes it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engines.adapters import AdapterParams
from engines.adapters.yolo import YoloAdapter
from engines.adapters.yolo_layout import detect_layout, parse_metadata, v5_rows
from engines.errors import ModelError
from engines.onnxmeta import read_metadata
from engines.zoo import resolve_model
from engines.adapters import read_labels
from tests.test_adapters import boxes, const_model, run, source

COCO3 = "{0: 'person', 1: 'bicycle', 2: 'car'}"


def with_metadata(path, **props):
    model = onnx.load(str(path))
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return path


def e2e_rows(rows, n=300):
    """rows: (x1, y1, x2, y2, score, class) in input pixels -> [n, 6], the rest zero-scored."""
    out = np.zeros((n, 6), dtype=np.float32)
    if rows:
        out[:len(rows)] = rows
    return out


def test_yolo_e2e_when_rows_of_six_then_boxes_taken_as_xyxy_without_nms(tmp_path):
    rows = [(100, 180, 300, 380, 0.9, 2), (110, 190, 310, 390, 0.8, 2), (400, 400, 500, 500, 0.1, 0)]
    adapter = YoloAdapter((640, 640), ["person", "bicycle", "car"], AdapterParams(confidence=0.25))
    (dets,) = run(tmp_path, adapter, e2e_rows(rows), [source()])
    assert adapter._layout == "e2e"
    # Overlapping boxes of one class both stay: an end-to-end model has already removed its duplicates.
    assert [(d.label, round(d.score, 3)) for d in dets] == [("car", 0.9), ("car", 0.8)]
    np.testing.assert_allclose(boxes(dets)[0], [50, 50, 150, 150], atol=1e-4)


def test_yolo_e2e_when_metadata_says_end2end_then_no_guessing(tmp_path):
    path = with_metadata(const_model(tmp_path / "m.onnx", (640, 640), e2e_rows([(0, 80, 64, 144, 0.9, 1)], 100)),
                         names=COCO3, end2end="True", task="detect", imgsz="[640, 640]")
    meta = read_metadata(path)
    adapter = YoloAdapter((640, 640), [], AdapterParams(), metadata=meta)
    assert adapter.labels == ["person", "bicycle", "car"]
    adapter.check_outputs([(1, 100, 6)])
    assert adapter._layout == "e2e"
    with pytest.raises(ValueError, match=r"end-to-end.*\[N, 6\].*\[100, 7\]"):
        YoloAdapter((640, 640), [], AdapterParams(), metadata=meta).check_outputs([(1, 100, 7)])


def test_detect_layout_when_rows_of_six_then_e2e_unless_v5_anchor_count():
    assert detect_layout((300, 6)) == "e2e"
    assert detect_layout((300, 6), nc=80) == "e2e"
    assert detect_layout((v5_rows((640, 640)), 6), input_hw=(640, 640)) == "v5"  # one-class YOLOv5
    assert detect_layout((300, 6), nc=1, end2end=False) == "v5"  # metadata: not end-to-end
    assert detect_layout((116, 2100), nc=80, extra=32) == "v8"  # segmentation: classes, then 32 coefficients
    assert detect_layout((300, 38), extra=32) == "e2e"
    assert v5_rows((640, 640)) == 25200


@pytest.mark.parametrize("shape", [(3, 8400), (8400, 5), (5, 4), (6, 6)])
def test_detect_layout_when_nothing_fits_then_error_names_the_shape(shape):
    with pytest.raises(ValueError, match=rf"output \[{shape[0]}, {shape[1]}\] per frame fits no YOLO layout"):
        detect_layout(shape, nc=80)


def test_parse_metadata_when_ultralytics_fields_then_read_and_bad_ones_ignored():
    meta = parse_metadata({"names": COCO3, "imgsz": "[384, 640]", "task": "pose", "end2end": "False",
                           "kpt_shape": "[17, 3]", "args": "{'nms': True, 'batch': 1}"})
    assert meta.names == ("person", "bicycle", "car") and meta.imgsz == (384, 640)
    assert meta.task == "pose" and meta.kpt_shape == (17, 3)
    assert meta.end2end is True  # export(nms=True): NMS inside the graph
    assert parse_metadata({"names": "not python (", "imgsz": "640"}) == parse_metadata({}).__class__(imgsz=(640, 640))


def test_resolve_model_when_ultralytics_metadata_then_labels_size_family_from_it(tmp_path, cache_dir):
    path = with_metadata(const_model(tmp_path / "m.onnx", (320, 320), e2e_rows([], 300)), names=COCO3,
                         imgsz="[320, 320]", task="segment")
    model = resolve_model(str(path), "auto", None, None, cache_dir, read_labels)
    assert (model.family, model.labels, model.input_size) == ("yolo", ("person", "bicycle", "car"), (320, 320))
    assert dict(model.metadata)["task"] == "segment"
    labels = tmp_path / "mine.txt"
    labels.write_text("a\nb\nc\n")
    mine = resolve_model(str(path), "auto", labels, (640, 640), cache_dir, read_labels)
    assert mine.labels == ("a", "b", "c") and mine.input_size == (640, 640)  # the config wins
    obb = with_metadata(const_model(tmp_path / "obb.onnx", (320, 320), e2e_rows([], 300)), task="obb")
    with pytest.raises(ModelError, match="Ultralytics 'obb' model; perceptd runs detect, pose, segment"):
        resolve_model(str(obb), "auto", None, None, cache_dir, read_labels)
