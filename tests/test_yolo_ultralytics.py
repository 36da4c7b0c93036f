"""perceptd's YOLO decoding against Ultralytics' own, on models Ultralytics builds and exports itself (random
weights made to fire, tests/ultralytics_ref.py) and real frames: scikit-image photos and carphone frames.

Two comparisons per model:
  decoder      the same raw outputs (perceptd's engine on perceptd's input) through Ultralytics' predictor
               postprocess: NMS, letterbox undone, keypoints, masks. They must agree detection for detection.
  end to end   Ultralytics' whole predictor on the frame (its letterbox resizes with INTER_LINEAR; perceptd
               with INTER_AREA when shrinking, so the inputs differ slightly): agreement is reported, and
               must be high.
The figures are printed (pytest -s) for the record.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.onnxmeta import read_metadata
from tests.yolo_reference import Agreement, export_models, frames, need_ultralytics, reference, run_perceptd


@pytest.fixture(scope="session")
def yolo_models(tmp_path_factory):
    need_ultralytics()
    return export_models(tmp_path_factory.mktemp("yolo-exports"))


@pytest.fixture(scope="session")
def yolo_frames(carphone):
    return frames(carphone)


def compare(model, yolo_models, yolo_frames, tmp_path) -> tuple[Agreement, Agreement, list]:
    cases = run_perceptd(model, yolo_models[model], yolo_frames)
    refs = reference(cases, tmp_path)
    decoder, end_to_end = Agreement(), Agreement()
    for case, ref in zip(cases, refs):
        hw = case.frame.shape[:2]
        decoder.add(case.detections, ref["decoder"], hw)
        end_to_end.add(case.detections, ref["end_to_end"], hw)
    print(f"\n{model} ({len(cases)} frames) decoder: {decoder.summary()}\n{model} end to end: {end_to_end.summary()}")
    return decoder, end_to_end, cases


def assert_decoder_agrees(decoder: Agreement) -> None:
    assert decoder.theirs > 0, "the reference found nothing: the test model does not fire"
    assert decoder.ours == decoder.theirs == decoder.matched, decoder.summary()
    assert min(decoder.box_ious) > 0.999 and max(decoder.score_diffs) < 1e-4, decoder.summary()


def assert_end_to_end_close(end_to_end: Agreement) -> None:
    assert end_to_end.recall >= 0.75 and np.mean(end_to_end.box_ious) >= 0.9, end_to_end.summary()


def test_onnx_metadata_when_ultralytics_export_then_read_as_onnx_does(yolo_models):
    import onnx

    for path in yolo_models.values():
        assert read_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_yolo_v8_detect_when_ultralytics_export_then_matches_its_decoder(yolo_models, yolo_frames, tmp_path):
    decoder, end_to_end, cases = compare("detect", yolo_models, yolo_frames, tmp_path)
    assert_decoder_agrees(decoder)
    assert_end_to_end_close(end_to_end)
    labels = {d.label for c in cases for d in c.detections}
    assert "person" in labels and not any(label.isdigit() for label in labels)  # COCO names from the metadata


def test_yolo_end2end_when_yolo26_export_then_matches_its_decoder(yolo_models, yolo_frames, tmp_path):
    decoder, end_to_end, cases = compare("e2e", yolo_models, yolo_frames, tmp_path)
    assert_decoder_agrees(decoder)
    assert_end_to_end_close(end_to_end)
