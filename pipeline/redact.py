"""Credentials in stream URIs never reach logs, metric labels or output files."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# user:password@ in the authority part of any scheme://. The password runs to the *last* '@' before the
# path, as FFmpeg reads it: an unencoded '@' in a password ("p@ss") must not leave "ss@" showing.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):[^/\s]*@")
# token=..., access_token=..., api_key=..., X-Amz-Signature=... style query parameters
_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&#\s]*?(?:password|passwd|pwd|pass|token|auth|key|secret|signature)[^=&#\s]*=)[^&#\s]*")


def redact_uri(uri: str) -> str:
    """Return `uri` with any password (and secret query values) replaced by ***.

    rtsp://admin:hunter2@cam/stream -> rtsp://admin:***@cam/stream
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme and parts.password is not None:
        host = parts.netloc.rpartition("@")[2]  # as written: case and [IPv6] brackets kept
        netloc = f"{parts.username}:***@{host}"
        uri = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    else:
        uri = _USERINFO.sub(r"\g<scheme>\g<user>:***@", uri)
    return _SECRET_QUERY.sub(r"\1***", uri)


def redact_text(text: str) -> str:
    """Redact every URI-looking credential inside free text (log lines, error messages)."""
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
