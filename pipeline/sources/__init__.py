"""Source kinds, chosen from the config's `kind` (or guessed from the URI)."""

from __future__ import annotations

from pipeline.settings import SourceSettings
from pipeline.sources.base import StreamInfo, VideoSource
from pipeline.sources.camera import CameraSource
from pipeline.sources.csi import GStreamerSource
from pipeline.sources.file import FileSource
from pipeline.sources.network import NetworkSource


def make_source(settings: SourceSettings) -> VideoSource:
    kind = settings.resolved_kind
    if kind == "file":
        source = FileSource(settings.uri, settings.name)
    elif kind == "camera":
        return CameraSource(settings.uri, settings.name)
    elif kind == "network":
        source = NetworkSource(settings.uri, settings.name, settings.open_timeout_s, settings.stall_timeout_s)
    else:
        return GStreamerSource(settings.uri, settings.name)
    source.decoder = settings.decoder  # files and RTSP: through GStreamer where it can (see sources/gst.py)
    return source


__all__ = ["StreamInfo", "VideoSource", "make_source"]
