"""Per-label settings (as Frigate's filters): confidence, min_area and max_area as a number or a mapping of
labels, from the YAML to what the adapters keep."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engines.adapters import AdapterParams
from engines.adapters.retinaface import RetinaFaceAdapter
from engines.adapters.yolo import YoloAdapter
from pipeline.errors import ConfigError
from pipeline.settings import load_settings
from pipeline.spec import adapter_params, warn_unknown_labels
from tests.test_adapters import run, source, v8_tensor

LABELS = ["person", "car"]
# In source pixels (320x240 into 640x640: scale 2): areas 100x100, 20x20, 100x100, 50x50.
ROWS = [(100, 180, 300, 380, 0, 0.9), (400, 200, 440, 240, 0, 0.5), (0, 80, 200, 280, 1, 0.45),
        (400, 400, 500, 500, 1, 0.7)]


def config(tmp_path, model: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"sources: [a.mp4]\nmodel:\n{model}")
    return path


def test_settings_when_per_label_mappings_then_adapter_params_carry_them(tmp_path):
    s = load_settings(config(tmp_path, "  confidence: {person: 0.6, default: 0.4}\n  min_area: {car: 0.01}\n"
                                       "  max_area: 5000\n"))
    p = adapter_params(s, "yolo")
    assert (p.confidence, p.label_confidence) == (0.4, (("person", 0.6),))
    assert (p.min_area, p.label_min_area, p.max_area, p.label_max_area) == (0.0, (("car", 0.01),), 5000.0, ())
    no_default = adapter_params(load_settings(config(tmp_path, "  confidence: {person: 0.6}\n")), "retinaface")
    assert no_default.confidence == 0.8  # labels not named: the family's default


@pytest.mark.parametrize("model, line, message", [
    ("  family: yolo\n  confidence: {person: 1.5}\n", 4, "model.confidence: 'person' must be a number between 0 and 1"),
    ("  min_area: -3\n", 3, "model.min_area: the value must be a number 0 or more"),
    ("  max_area: {}\n", 3, "model.max_area: give a number, or a mapping of labels"),
])
def test_settings_when_per_label_value_bad_then_error_names_line_and_key(tmp_path, model, line, message):
    path = config(tmp_path, model)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(exc.value).startswith(f"{path}:{line}: {message}"), str(exc.value)


def test_warn_unknown_labels_when_a_label_is_not_the_models_then_names_the_known(tmp_path, caplog):
    s = load_settings(config(tmp_path, "  confidence: {persn: 0.6, default: 0.3}\n  min_area: {car: 10}\n"))
    with caplog.at_level(logging.WARNING):
        lines = warn_unknown_labels(s, ("person", "car"))
    assert lines == ["model.confidence: no label 'persn' in the model; its labels: person, car"]
    assert lines[0] in caplog.text
    assert warn_unknown_labels(s, ()) == []  # labels unknown: nothing to check against


def test_yolo_when_per_label_confidence_then_each_class_its_own(tmp_path):
    params = AdapterParams(confidence=0.6, label_confidence=(("car", 0.4),))
    (dets,) = run(tmp_path, YoloAdapter((640, 640), LABELS, params), v8_tensor(ROWS, 2), [source()])
    assert [(d.label, round(d.score, 2)) for d in dets] == [("person", 0.9), ("car", 0.7), ("car", 0.45)]


def test_yolo_when_area_limits_per_label_then_filtered_in_source_pixels(tmp_path):
    params = AdapterParams(confidence=0.3, min_area=1000, label_max_area=(("car", 0.05),))  # 5% of 320x240
    (dets,) = run(tmp_path, YoloAdapter((640, 640), LABELS, params), v8_tensor(ROWS, 2), [source()])
    # person 20x20 = 400 < 1000 goes; car 100x100 = 10000 > 3840 goes; car 50x50 = 2500 stays.
    assert [(d.label, round(d.score, 2)) for d in dets] == [("person", 0.9), ("car", 0.7)]


def test_retinaface_when_min_area_above_the_face_then_no_face(cache_dir):
    from engines.base import EngineOptions, create_engine
    from engines.zoo import materialise
    from tests.conftest import photo_bgr

    found = []
    with create_engine("onnxruntime", materialise("retinaface", cache_dir), EngineOptions()) as eng:
        for min_area in (0, 120 * 120, 0.1):  # the face is about 95x120 (0.04 of the frame)
            adapter = RetinaFaceAdapter((512, 512), [], AdapterParams(confidence=0.8, min_area=min_area))
            batch = np.zeros((1, 3, 512, 512), np.float32)
            fit = adapter.preprocess(photo_bgr("astronaut"), batch[0])
            found.append(len(adapter.postprocess([o[0] for o in eng.infer(batch)], fit)))
    assert found == [1, 0, 0]
