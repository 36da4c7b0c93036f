"""Errors a user can fix. The CLI prints them as one line and exits 2; anything else is a bug (exit 1)."""


class UserError(Exception):
    """Bad input: config, source, model or output path. The message says what and how to fix it."""


class ConfigError(UserError):
    """The YAML file or a command-line override does not validate."""


class SourceError(UserError):
    """A source cannot be opened or is not a video."""


class ModelError(UserError):
    """A model is missing, unreadable or not what its family expects."""


class SourceUnsupported(SourceError):
    """A source this installation can never open (e.g. GStreamer without GStreamer): not retried."""
