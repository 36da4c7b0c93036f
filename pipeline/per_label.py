"""Settings that take a number or a mapping of labels (as Frigate's per-object filters): model.confidence,
min_area and max_area. The YAML types here; what they become for the adapters is in pipeline/spec.py."""

from __future__ import annotations

import math
from typing import Annotated, Optional, Union

from pydantic import BeforeValidator


def _per_label(top: float, what: str, optional: bool):
    """A validator for a number in [0, top], or a mapping of label -> such a number ('default' for the
    labels not named). Checked before pydantic's union, whose own errors would name its members instead of
    the key."""

    def number(x, where: str) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x <= top:
            raise ValueError(f"{where} must be a number {what}")
        return float(x)

    def check(v):
        if v is None and optional:
            return None  # confidence: the family's default
        if isinstance(v, dict):
            if not v:
                raise ValueError("give a number, or a mapping of labels to numbers (e.g. {person: 0.6, default: 0.4})")
            return {str(k): number(x, f"{k!r}") for k, x in v.items()}
        return number(v, "the value")

    return BeforeValidator(check)


Confidence = Annotated[Optional[Union[float, dict[str, float]]], _per_label(1.0, "between 0 and 1", True)]
Area = Annotated[Union[float, dict[str, float]], _per_label(math.inf, "0 or more", False)]
