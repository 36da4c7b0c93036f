"""Errors a user can fix. Callers (perceptd's CLI) print them as one line; anything else is a bug.

engines/ stands on its own: the daemon's own errors (pipeline.errors) build on these, never the reverse.
"""


class UserError(Exception):
    """Bad input: a config value, a source, a model or a path. The message says what and how to fix it."""


class ModelError(UserError):
    """A model is missing, unreadable or not what its family expects."""
