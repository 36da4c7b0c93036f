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
        decoder.add(case.detections, ref["decoder"], hw, case.masks)
        end_to_end.add(case.detections, ref["end_to_end"], hw)
    print(f"\n{model} ({len(cases)} frames) decoder: {decoder.summary()}\n{model} end to end: {end_to_end.summary()}")
    return decoder, end_to_end, cases


def assert_decoder_agrees(decoder: Agreement, missing: float = 0.0) -> None:
    """Every detection matched (segmentation: up to `missing` of them may differ, see its test)."""
    assert decoder.theirs > 0, "the reference found nothing: the test model does not fire"
    assert decoder.matched >= (1 - missing) * max(decoder.ours, decoder.theirs), decoder.summary()
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


def test_yolo_segment_when_ultralytics_export_then_masks_match_its_decoder(yolo_models, yolo_frames, tmp_path):
    """Random weights give masks of scattered specks (dozens of parts each): the one-step warp at source
    resolution and Ultralytics' two resamplings (to the input, then to the source) disagree on specks a
    cell wide and at the box edges, so mask IoU is lower here than on real masks (tests/test_masks.py checks
    the geometry on a mask with a known edge). A detection whose mask is empty is dropped on both sides,
    which differs for the odd box whose only specks sit on its edge."""
    decoder, end_to_end, cases = compare("segment", yolo_models, yolo_frames, tmp_path)
    assert_decoder_agrees(decoder, missing=0.01)
    assert np.mean(decoder.mask_ious) > 0.75 and np.median(decoder.mask_ious) > 0.8, decoder.summary()
    assert_end_to_end_close(end_to_end)
    assert all(d.polygon for c in cases for d in c.detections)  # a one-pixel mask outlines as one point


def test_perceptd_run_when_segmentation_model_then_polygons_in_the_jsonl(yolo_models, carphone, cache_dir, tmp_path):
    from tests.conftest import read_jsonl, run_perceptd

    out = tmp_path / "out"
    run_perceptd("run", "--model", str(yolo_models["segment"]), "--source", f"car={carphone}", "--max-frames", "6",
                 "--output", str(out), "--metrics-port", "0", cache_dir=cache_dir, check=True)
    dets = [d for r in read_jsonl(out / "car.jsonl") for d in r["detections"]]
    assert dets and all(d["polygon"] and "keypoints" not in d for d in dets)
    for d in dets:  # the outline lies in its box
        x1, y1, x2, y2 = d["box"]
        assert all(x1 - 1 <= x <= x2 + 1 and y1 - 1 <= y <= y2 + 1 for x, y in d["polygon"])
