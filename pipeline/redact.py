"""Credentials in stream URIs never reach logs, metric labels or output files."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# user:password@ or user@ in the authority part of any scheme://
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*)(?::[^@/\s]*)?@")
# token=..., password=... style query parameters
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|pass|token|auth|key|secret|signature)=)[^&#\s]*")


def redact_uri(uri: str) -> str:
    """Return `uri` with any password (and secret query values) replaced by ***.

    rtsp://admin:hunter2@cam/stream -> rtsp://admin:***@cam/stream
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme and parts.password is not None:
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username}:***@{host}"
        uri = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    else:
        uri = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m.group(0).count(":") > 1 else m.group(0), uri)
    return _SECRET_QUERY.sub(r"\1***", uri)


def redact_text(text: str) -> str:
    """Redact every URI-looking credential inside free text (log lines, error messages)."""
    text = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^:@/\s]*):[^@/\s]*@", r"\1\2:***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
