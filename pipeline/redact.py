"""Credentials in stream URIs never reach logs, metric labels or output files; nor does any value that came
from a `${VAR}` in the config (pipeline/secrets.py), wherever it ends up (a GStreamer `user-pw=` property, an
exception from a library)."""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit

# user:password@ in the authority part of any scheme://. The password runs to the *last* '@' before the
# path, as FFmpeg reads it: an unencoded '@' in a password ("p@ss") must not leave "ss@" showing.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):[^/\s]*@")
# token=..., access_token=..., api_key=..., X-Amz-Signature=... style query parameters
_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&#\s]*?(?:password|passwd|pwd|pass|token|auth|key|secret|signature)[^=&#\s]*=)[^&#\s]*")


# Values expanded from ${VAR}: process-wide on purpose, like the formatter on the root log handler, because
# every line this process writes must be scrubbed whoever formats it. Only ever grows (a reload's old secret
# must not appear either). Shorter values are left alone: masking "1" or "on" would garble every line.
MIN_MASKED = 4
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()


def remember(value: str) -> None:
    """Mask `value` as *** in everything redacted from now on."""
    global _secrets
    if len(value) >= MIN_MASKED and value not in _secrets:
        with _lock:  # longest first, so a secret containing another is masked whole
            _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def remembered() -> tuple[str, ...]:
    """What is masked now: handed to the worker process, whose log lines are scrubbed the same way."""
    return _secrets


def _mask(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def redact_uri(uri: str) -> str:
    """Return `uri` with any password (and secret query values) replaced by ***.

    rtsp://admin:hunter2@cam/stream -> rtsp://admin:***@cam/stream
    """
    uri = _mask(uri)  # first: a secret with '/' or '#' in it would mislead the URL parsing below
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
    text = _USERINFO.sub(r"\g<scheme>\g<user>:***@", _mask(text))
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactingFormatter(logging.Formatter):
    """Credentials in URIs never reach the log, whoever formatted the message."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
