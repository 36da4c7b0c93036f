"""Config models for the recording: `sinks.video`, and the codec type the event clips share. Strict like every
section (settings.py): unknown keys rejected, errors carry the YAML line."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, model_validator

from pipeline.settings_tracking import Strict


def _segment_length(v: float) -> float:
    if 0 < v < 1:  # segment names carry the second they start: shorter segments would collide
        raise ValueError("use 0 (one file) or at least 1 second")
    return v


SegmentSeconds = Annotated[float, Field(ge=0, le=86400), AfterValidator(_segment_length)]


def _codec(v: str) -> str:
    if v == "auto" or v.lower() == "h264" or len(v) == 4:
        return v
    raise ValueError("use auto, h264, or a 4-character OpenCV FourCC (mp4v, MJPG, XVID)")


Codec = Annotated[str, AfterValidator(_codec)]
CODEC_HELP = ("auto: H.264 that browsers play (hardware where there is one, else software), else mp4v; h264: "
              "H.264 or refuse to start; or an OpenCV FourCC (mp4v, MJPG, XVID)")


class VideoSinkSettings(Strict):
    enabled: bool = True
    codec: Codec = Field("auto", description=CODEC_HELP)
    fourcc: Optional[str] = Field(None, min_length=4, max_length=4, description="The old name of codec (an "
                                  "OpenCV FourCC), still read: a config that says mp4v keeps mp4v")
    extension: Literal[".mp4", ".avi", ".mkv"] = ".mp4"
    segment_s: SegmentSeconds = Field(600.0, description="Start a new file every N seconds (each one finalised "
                                      "and playable); 0: one file per run")

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        # Configs written before `codec` existed keep meaning what they said; the daemon logs the new name.
        if isinstance(data, dict) and data.get("fourcc") is not None:
            if "codec" in data:
                raise ValueError("fourcc is the old name of codec: keep only codec")
            if isinstance(data["fourcc"], str) and len(data["fourcc"]) == 4:
                data = {**data, "codec": data["fourcc"]}
        return data
