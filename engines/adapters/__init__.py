"""Model families, keyed by the `model.family` config value."""

from __future__ import annotations

import importlib

from engines.adapters.base import Adapter, AdapterParams, Letterbox, letterbox, nms, read_labels

_FAMILIES = {
    "retinaface": "engines.adapters.retinaface:RetinaFaceAdapter",
    "yolo": "engines.adapters.yolo:YoloAdapter",
    "classifier": "engines.adapters.classifier:ClassifierAdapter",
}

FAMILIES = tuple(_FAMILIES)


def adapter_class(family: str) -> type[Adapter]:
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module_name, _, attr = _FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module_name), attr)


__all__ = ["Adapter", "AdapterParams", "FAMILIES", "Letterbox", "adapter_class", "letterbox", "nms", "read_labels"]
