"""Errors a user can fix. The CLI prints them as one line and exits 2; anything else is a bug (exit 1).

UserError and ModelError are the inference library's (engines/ stands on its own); the daemon's own
kinds build on them."""

from engines.errors import ModelError, UserError

__all__ = ["ConfigError", "ModelError", "SourceError", "SourceUnsupported", "UserError"]


class ConfigError(UserError):
    """The YAML file or a command-line override does not validate."""


class SourceError(UserError):
    """A source cannot be opened or is not a video."""


class SourceUnsupported(SourceError):
    """A source this installation can never open (e.g. GStreamer without GStreamer): not retried."""
