"""Privacy masking on the astronaut photo: the face is gone beyond recognition (the detector itself no
longer finds it), everything else is untouched, and the events log still reports the face."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engines.adapters import AdapterParams
from engines.adapters.retinaface import RetinaFaceAdapter
from engines.base import EngineOptions, create_engine
from engines.zoo import materialise
from pipeline.frame import Detection
from pipeline.sinks.privacy import mask_regions
from tests.conftest import count_video_frames, make_clip, photo_bgr, read_jsonl, run_perceptd


@pytest.fixture(scope="module")
def faces(cache_dir):
    engine = create_engine("onnxruntime", materialise("retinaface", cache_dir), EngineOptions(max_batch=1))
    adapter = RetinaFaceAdapter((512, 512), [], AdapterParams(confidence=0.5, iou=0.4))

    def detect(image):
        batch = np.zeros((1, 3, 512, 512), np.float32)
        fit = adapter.preprocess(image, batch[0])
        return adapter.postprocess([o[0] for o in engine.infer(batch)], fit)

    yield detect
    engine.close()


def detail(region: np.ndarray) -> float:
    """Variance of the Laplacian: how much edge detail (eyes, mouth, nose) a region holds."""
    return float(cv2.Laplacian(cv2.cvtColor(region, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("mode", ["blur", "pixelate", "fill"])
def test_mask_when_the_face_is_masked_it_is_unrecognisable_and_the_rest_is_unchanged(faces, mode):
    original = photo_bgr("astronaut")
    dets = faces(original)
    assert len(dets) == 1
    image = original.copy()
    assert mask_regions(image, tuple(dets), frozenset({"face"}), mode, padding=0.15) == 1
    x1, y1, x2, y2 = dets[0].box
    px, py = (x2 - x1) * 0.15, (y2 - y1) * 0.15
    bx1, by1, bx2, by2 = int(x1 - px), int(y1 - py), int(np.ceil(x2 + px)), int(np.ceil(y2 + py))
    face_before = original[int(y1):int(y2), int(x1):int(x2)]
    face_after = image[int(y1):int(y2), int(x1):int(x2)]
    # Beyond recognition: what is left holds almost no information, the pixels changed a lot, and
    # RetinaFace finds no face there.
    if mode == "blur":
        assert detail(face_after) < 0.05 * detail(face_before), (detail(face_before), detail(face_after))
    elif mode == "pixelate":  # a handful of flat tiles
        assert len(np.unique(face_after.reshape(-1, 3), axis=0)) <= 7 * 7, "more colours than tiles"
    else:
        assert not face_after.any()
    assert np.abs(face_after.astype(int) - face_before.astype(int)).mean() > 15
    assert faces(image) == []
    # Everything outside the padded box is byte-identical.
    outside = np.ones(original.shape[:2], bool)
    outside[by1:by2, bx1:bx2] = False
    assert np.array_equal(image[outside], original[outside])


def test_mask_when_labels_do_not_match_changes_nothing():
    image = photo_bgr("coffee")
    before = image.copy()
    det = Detection("cup", 0.9, (10.0, 10.0, 200.0, 200.0), 0)
    assert mask_regions(image, (det,), frozenset({"face"}), "blur", 0.1) == 0
    assert np.array_equal(image, before)


def test_run_when_privacy_masks_faces_the_video_hides_them_and_events_keep_them(tmp_path, cache_dir, faces):
    astronaut = photo_bgr("astronaut")
    clip = make_clip(tmp_path / "astro.avi", astronaut, 10)
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources: [{{name: astro, uri: '{clip}'}}]\n"
                   f"sinks: {{output_dir: '{out}', privacy: {{labels: [face]}},"
                   " overlay: {boxes: false, labels: false, banner: false}}\nmetrics: {enabled: false}\n")
    run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir, check=True)
    records = read_jsonl(out / "astro.jsonl")
    assert len(records) == 10 and all(r["detections"][0]["label"] == "face" for r in records)
    assert count_video_frames(out / "astro.mp4") == 10
    cap = cv2.VideoCapture(str(out / "astro.mp4"))
    ok, frame = cap.read()
    cap.release()
    assert ok
    x1, y1, x2, y2 = (int(v) for v in records[0]["detections"][0]["box"])
    assert detail(frame[y1:y2, x1:x2]) < 0.1 * detail(astronaut[y1:y2, x1:x2])
    assert faces(frame) == []  # the written video shows no face the detector can find
    # Away from the face the frame is the photo (within the codec's loss).
    m = np.float32([[1, 0, -5], [0, 1, 0]])  # make_clip shifted frame 0 by -5 px
    shifted = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REFLECT)
    assert np.abs(frame[300:500, 20:480].astype(int) - shifted[300:500, 20:480].astype(int)).mean() < 6
