"""Config models for tracking: the `tracking` section, and each source's `zones`, `lines` and `detect_fps`.
Strict like every section (settings.py): unknown keys rejected, errors carry the YAML line."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Point = tuple[float, float]


class Strict(BaseModel):
    """Every config section: unknown keys rejected, immutable, defaults validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_points(points: tuple[Point, ...]) -> tuple[Point, ...]:
    for x, y in points:
        if x < 0 or y < 0:
            raise ValueError(f"coordinates are fractions of the frame (0-1) or pixels (> 1), not negative: "
                             f"[{x:g}, {y:g}]")
    return points


class ZoneSettings(Strict):
    name: str = Field(min_length=1, max_length=64, description="Names the zone in events and metrics")
    polygon: tuple[Point, ...] = Field(description="Corners, as fractions of the frame (or pixels when > 1)")
    labels: tuple[str, ...] = Field((), description="Only these labels count in this zone (empty: all)")

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, v):
        if len(v) < 3:
            raise ValueError(f"a zone needs at least 3 points, got {len(v)}")
        return _check_points(v)


class LineSettings(Strict):
    name: str = Field(min_length=1, max_length=64, description="Names the line in events and metrics")
    points: tuple[Point, ...] = Field(description="Its two ends, as fractions of the frame (or pixels when > 1)")
    labels: tuple[str, ...] = Field((), description="Only these labels are counted crossing it (empty: all)")

    @field_validator("points")
    @classmethod
    def _points(cls, v):
        if len(v) != 2:
            raise ValueError(f"a line needs exactly 2 points, got {len(v)}")
        if v[0] == v[1]:
            raise ValueError("the two ends of a line must differ")
        return _check_points(v)


class SceneSettings(Strict):
    """The per-source part (mixed into SourceSettings)."""

    zones: tuple[ZoneSettings, ...] = Field((), description="Areas: tracks entering and leaving them are events")
    lines: tuple[LineSettings, ...] = Field((), description="Tripwires: tracks crossing them are events")
    detect_fps: Optional[float] = Field(None, gt=0, le=1000, description="Run inference at most this often for "
                                        "this source; frames between get the tracker's predicted boxes (null: "
                                        "every frame)")

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, v):
        _no_twice([z.name for z in v])
        return v

    @field_validator("lines")
    @classmethod
    def _unique_lines(cls, v, info: ValidationInfo):
        _no_twice([z.name for z in info.data.get("zones", ())] + [ln.name for ln in v])
        return v


def _no_twice(names: list[str]) -> None:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"zone and line names must be unique per source: {', '.join(twice)} is used twice")


class TrackingSettings(Strict):
    enabled: bool = Field(True, description="Give detections track ids (detectors only: classifiers have none)")
    high_score: float = Field(0.5, ge=0, le=1, description="Detections at or above this are matched first and "
                              "may start tracks")
    low_score: float = Field(0.1, ge=0, le=1, description="Below this, detections are ignored by the tracker")
    new_track_score: float = Field(0.6, ge=0, le=1, description="A new track needs at least this score")
    match_iou: float = Field(0.1, gt=0, le=1, description="Least overlap between a track's predicted box and a "
                             "detection to match them")
    min_hits: int = Field(2, ge=1, le=100, description="Consecutive matches that confirm a track (it gets an id)")
    lost_s: float = Field(1.0, gt=0, le=3600, description="A track unseen for this long ends")
    anchor: Literal["auto", "bottom", "center"] = Field(
        "auto", description="A track's position for zones and lines: auto = bottom centre for people and "
        "vehicles, centre otherwise")
    inertia: int = Field(3, ge=1, le=100, description="Frames a zone or line change must hold to count")
    trail: int = Field(30, ge=0, le=1000, description="Points of each track's trail in the overlay (0: none)")
    events_file: bool = Field(True, description="Write <name>.events.jsonl (new, end, enter, exit, cross)")

    @model_validator(mode="after")
    def _order(self):
        if not self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError("need low_score <= high_score <= new_track_score")
        return self
