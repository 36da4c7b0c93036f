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


def test_yolo_pose_when_ultralytics_export_then_keypoints_match_its_decoder(yolo_models, yolo_frames, tmp_path):
    decoder, end_to_end, cases = compare("pose", yolo_models, yolo_frames, tmp_path)
    assert_decoder_agrees(decoder)
    assert max(decoder.keypoint_px) < 0.01, decoder.summary()
    assert_end_to_end_close(end_to_end)
    assert all(len(d.keypoints) == 17 for c in cases for d in c.detections)


def test_perceptd_run_when_only_a_pose_model_then_labels_size_family_from_metadata(yolo_models, carphone,
                                                                                   cache_dir, tmp_path):
    """`perceptd run --model yolo11n-pose.onnx` and nothing else about the model: the JSONL has COCO labels
    and 17 keypoints per person in source pixels, and the video is written."""
    from tests.conftest import count_video_frames, read_jsonl, run_perceptd

    out = tmp_path / "out"
    proc = run_perceptd("run", "--model", str(yolo_models["pose"]), "--source", f"car={carphone}",
                        "--max-frames", "12", "--output", str(out), "--metrics-port", "0", cache_dir=cache_dir,
                        check=True)
    assert "family yolo" in proc.stderr or "pose" in proc.stderr
    records = read_jsonl(out / "car.jsonl")
    assert len(records) == 12
    dets = [d for r in records for d in r["detections"]]
    assert dets and {d["label"] for d in dets} == {"person"}
    for d in dets:
        assert len(d["keypoints"]) == 17 and "polygon" not in d
        assert all(0 <= x <= 176 and 0 <= y <= 144 and 0 <= s <= 1 for x, y, s in d["keypoints"])
    assert count_video_frames(out / "car.mp4") == 12
