"""`${VAR}` in config values: secrets kept out of the YAML, taken from the environment or systemd credentials.

`${NAME}` is the environment variable NAME or, when the environment has none, the systemd credential NAME
(`LoadCredential=NAME:/path` makes it the file `$CREDENTIALS_DIRECTORY/NAME`; one trailing newline is
dropped). `${NAME:-default}` falls back to `default` when NAME is unset or empty. `$${` writes a literal `${`;
a `$` anywhere else is an ordinary character, so passwords with `$` in them need no escaping. Any other
`${` is an error, so a typo never reaches a camera as part of a password.

What a reference expands to is remembered (redact.remember): every log line and error message shows `***`
in its place, whichever code formatted it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.redact import remember

# `$${` (a literal), a well-formed reference, or any other `${` (malformed). A default may not hold `${`:
# nesting is not supported, and silently half-expanding it would be worse than refusing it.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:(?!\$\{)[^}])*))?\}|\$\{")

Loc = tuple  # a key path in the config, as yamlpos uses: ("sources", 0, "uri")


class ExpandError(ValueError):
    """A reference that cannot be expanded; `loc` is where it was written (set by expand_tree)."""

    def __init__(self, message: str, loc: Loc = ()):
        super().__init__(message)
        self.loc = loc


def _credential(name: str, env: Mapping[str, str]) -> Optional[str]:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExpandError(f"cannot read credential {path} ({exc.__class__.__name__}); check LoadCredential=") from None
    # `echo pw > file` leaves a newline that is not part of the password.
    return text[:-1] if text.endswith("\n") else text


def lookup(name: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """NAME from the environment, else from a systemd credential; None when neither has it."""
    env = os.environ if env is None else env
    return env[name] if name in env else _credential(name, env)


def expand(value: str, env: Optional[Mapping[str, str]] = None) -> str:
    """`value` with every reference replaced (see the module docstring); ExpandError names what is wrong."""

    def one(m: re.Match) -> str:
        token, name, default = m.group(0), m.group(1), m.group(2)
        if token == "$${":
            return "${"
        if name is None:
            raise ExpandError("malformed ${...}: write ${NAME} or ${NAME:-default} (NAME: letters, digits and _), "
                              "or $${ for a literal ${")
        found = lookup(name, env)
        if found is None or (found == "" and default is not None):
            if default is None:
                raise ExpandError(f"environment variable {name} is not set (nor a credential {name}): set it "
                                  f"(systemd: EnvironmentFile=, or LoadCredential={name}:/path), "
                                  f"or write ${{{name}:-default}}")
            return default  # written in the YAML: not a secret
        remember(found)
        return found

    return _TOKEN.sub(one, value)


def expand_tree(data: Any, env: Optional[Mapping[str, str]] = None) -> tuple[Any, dict[Loc, str]]:
    """Every string value in a parsed YAML tree expanded (keys stay as written). Returns the new tree and,
    for each value that held a `${`, its location and the string as written, for error messages."""
    written: dict[Loc, str] = {}

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, loc + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            try:
                out = expand(node, env)
            except ExpandError as exc:
                raise ExpandError(str(exc), loc) from None
            written[loc] = node
            return out
        return node

    return walk(data, ()), written


def as_written(loc: Loc, value: Any, message: str, data: Any, written: dict[Loc, str]) -> tuple[Any, str]:
    """An error about `loc` (the bad value and the message) with what was expanded at, under or above `loc`
    (a source given as one string is checked as its `uri`) put back in its `${...}` form: the user sees
    what they wrote, never what it stood for."""
    loc = tuple(loc)
    related = {w: raw for w, raw in written.items() if w[:len(loc)] == loc or loc[:len(w)] == w}
    if not related:
        return value, message
    restored = _at(_restore(data, related), loc)
    for where, raw in related.items():
        expanded = _at(data, where)
        # Whole values only, and not tiny ones: "1" replaced inside "at least 1" would garble the message.
        if isinstance(expanded, str) and len(expanded) >= 4:
            message = message.replace(expanded, raw)
            if restored is None and isinstance(value, str):
                value = value.replace(expanded, raw)
    return (value if restored is None else restored), message


def _restore(data: Any, written: dict[Loc, str]) -> Any:
    def walk(node: Any, loc: Loc) -> Any:
        if loc in written:
            return written[loc]
        if isinstance(node, dict):
            return {k: walk(v, loc + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, loc + (i,)) for i, v in enumerate(node)]
        return node
    return walk(data, ())


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data
