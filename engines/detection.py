"""What an adapter's postprocessing returns for one image: detections in source-image pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detection:
    """One prediction in source-image pixels. A classifier's classes carry the whole image as box."""

    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    class_id: int = -1
    landmarks: tuple[tuple[float, float], ...] = ()
    keypoints: tuple[tuple[float, float, float], ...] = ()  # pose: x, y, score (1.0 when the model has none)
    polygon: tuple[tuple[float, float], ...] = ()  # segmentation: the mask's outer contour

    def to_json(self) -> dict:
        out = {"label": self.label, "score": round(self.score, 4), "box": [round(v, 1) for v in self.box]}
        if self.landmarks:
            out["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        if self.keypoints:
            out["keypoints"] = [[round(x, 1), round(y, 1), round(s, 3)] for x, y, s in self.keypoints]
        if self.polygon:
            out["polygon"] = [[round(x, 1), round(y, 1)] for x, y in self.polygon]
        return out
