"""Image classifiers (ImageNet style): resize the shorter side, center-crop, normalise; top-k classes.

Preprocessing follows torchvision's eval transform: Resize(int(crop / 0.875)) then CenterCrop(crop), RGB in
[0, 1], minus mean, over std. Models trained without normalisation take mean=(0, 0, 0), std=(1, 1, 1);
models trained on images resized straight to the input size (aspect not kept) take resize="stretch".
Each reported class is a Detection whose box is the whole source image.
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np

from engines.adapters.base import Adapter, AdapterParams, Letterbox
from engines.detection import Detection
from engines.saliency import CamWeights, class_activation, normalise_cam, summarise

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 of 256: the crop covers the central 87.5% of the resized image


def softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - np.max(x)  # shift so exp() cannot overflow on large logits
    e = np.exp(z)
    return e / e.sum()


def is_probability(x: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the model already ends in a softmax: every value in [0, 1] and the total is 1."""
    return bool(x.size) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and abs(float(x.sum()) - 1.0) <= tol


class ClassifierAdapter(Adapter):
    family = "classifier"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float = CROP_FRACTION
    resize: str = "crop"  # or "stretch"

    def __init__(self, input_hw, labels, params: AdapterParams, *, mean=None, std=None, crop_fraction=None,
                 resize=None):
        super().__init__(input_hw, labels, params)
        self._cam: CamWeights | None = None  # enable_saliency: the linear layer, and where the features are
        self._cam_output = 0
        self._cam_ids: np.ndarray | None = None
        if resize is not None:
            if resize not in ("crop", "stretch"):
                raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")
            self.resize = resize
        if mean is not None:
            self.mean = tuple(float(v) for v in mean)
        if std is not None:
            self.std = tuple(float(v) for v in std)
        if crop_fraction is not None:
            self.crop_fraction = float(crop_fraction)
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"classifier mean/std need 3 values each, std > 0; got {self.mean} / {self.std}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        # (pixel / 255 - mean) / std folded into one multiply and one subtract per RGB plane.
        std_arr = np.asarray(self.std, dtype=np.float64)
        self._mul = (1.0 / (255.0 * std_arr)).astype(np.float32)
        self._sub = (np.asarray(self.mean, dtype=np.float64) / std_arr).astype(np.float32)

    def check_outputs(self, output_shapes, output_names=()):
        """Batch axis first: [batch, nc] or [batch, nc, 1, 1] (a 1x1 conv head)."""
        if not output_shapes:
            raise ValueError("a classifier needs one output (class scores); the model has none")
        shape = tuple(output_shapes[0])
        trailing_ok = all(not isinstance(d, int) or d == 1 for d in shape[2:])
        if len(shape) not in (2, 4) or not trailing_ok:
            raise ValueError(f"a classifier's first output must be [batch, nc] or [batch, nc, 1, 1]; got {shape}")
        nc = shape[1]
        if isinstance(nc, int) and nc > 0 and self.labels and nc != len(self.labels):
            log.warning("labels list has %d classes but the classifier outputs %d; unknown ids are reported "
                        "as numbers", len(self.labels), nc)

    def _resized_size(self, h: int, w: int) -> tuple[int, int, float]:
        """(new_h, new_w, scale) so the resized image covers the crop inflated by 1/crop_fraction."""
        th, tw = self.input_hw
        rh, rw = int(th / self.crop_fraction), int(tw / self.crop_fraction)
        scale = max(rh / h, rw / w)  # the shorter side (relative to the crop's aspect) hits its target
        return max(rh, round(h * scale)), max(rw, round(w * scale)), scale

    def preprocess(self, image_bgr, out):
        h, w = image_bgr.shape[:2]
        th, tw = self.input_hw
        scale_xy = (None, None)
        if self.resize == "stretch":
            nh, nw, scale = th, tw, min(th / h, tw / w)
            scale_xy = (tw / w, th / h)  # each axis its own: the saliency map maps back with them
        else:
            nh, nw, scale = self._resized_size(h, w)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = image_bgr if (nh, nw) == (h, w) else cv2.resize(image_bgr, (nw, nh), interpolation=interp)
        y0, x0 = int(round((nh - th) / 2)), int(round((nw - tw) / 2))  # as torchvision's CenterCrop
        crop = resized[y0:y0 + th, x0:x0 + tw]
        # Per plane: contiguous reads, and the BGR->RGB swap is the order the planes are written in.
        for i, plane in enumerate(reversed(cv2.split(crop))):
            np.multiply(plane, self._mul[i], out=out[i], casting="unsafe")
            out[i] -= self._sub[i]
        # Negative pads: the crop starts inside the resized image. The resized size is rounded, so this
        # mapping is exact to within a source pixel, which is all a whole-image box needs.
        return Letterbox(scale, float(-x0), float(-y0), w, h, *scale_xy)

    def postprocess(self, outputs, fit: Letterbox):
        raw = np.asarray(outputs[0])
        if raw.ndim > 1 and any(d != 1 for d in raw.shape[1:]):
            raise ValueError(f"classifier output must be (nc,) or (nc, 1, 1) per frame, got {raw.shape}")
        scores = raw.reshape(-1)
        if not is_probability(scores):
            scores = softmax(scores)
        top_k = self.params.top_k if self.params.top_k > 0 else len(scores)
        box = (0.0, 0.0, float(fit.src_w), float(fit.src_h))
        found: list[Detection] = []
        # Walk classes by descending score: the classes filter applies before top-k, so a filtered run
        # still reports up to top_k of the wanted classes.
        confident = self.confident(scores, np.arange(len(scores)))
        for class_id in np.argsort(-scores, kind="stable"):
            score = float(scores[class_id])
            if score < self.min_confidence or len(found) >= top_k:
                break
            label = self.label(int(class_id))
            if confident[class_id] and self.wanted(label):
                found.append(Detection(label, score, box, int(class_id)))
        return found

    def enable_saliency(self, labels, output_names, model_path):
        """Class activation maps need the feature map as an output and the linear layer's weights in the
        model's metadata: what `perceptd export --saliency` writes (the built-in mobilenet_v2 has both)."""
        try:
            cam = CamWeights.from_model(model_path)
        except ValueError as exc:
            return str(exc)
        if cam is None:
            return (f"{model_path} carries no class activation weights; export it with `perceptd export "
                    "--saliency` (a network ending in global average pooling and a linear layer)")
        if cam.output not in output_names:
            return f"the model has no output {cam.output!r} (its outputs: {', '.join(output_names)})"
        if self.labels and len(self.labels) != len(cam.bias):
            return f"the saliency weights have {len(cam.bias)} classes but the labels {len(self.labels)}"
        self._cam_ids = self.saliency_ids(labels)
        self._cam, self._cam_output = cam, list(output_names).index(cam.output)
        return None

    def saliency(self, outputs, fit: Letterbox):
        if self._cam is None:
            return None
        logits = np.asarray(outputs[0]).reshape(-1)
        features = np.asarray(outputs[self._cam_output])
        if features.ndim != 3 or features.shape[0] != self._cam.weight.shape[1]:
            log.warning("no saliency map: the %s output is %s, not [%d, H, W] as the stored weights need",
                        self._cam.output, list(features.shape), self._cam.weight.shape[1])
            self._cam = None
            return None
        ids = self._cam_ids
        # The top class, or the top of the configured ones. Softmax keeps the order, so the logits decide.
        class_id = int(ids[np.argmax(logits[ids])]) if ids is not None else int(np.argmax(logits))
        cam = class_activation(features.astype(np.float32, copy=False), self._cam, class_id)
        sal = summarise(normalise_cam(cam), fit, self.input_hw)
        return dataclasses.replace(sal, label=self.label(class_id))
