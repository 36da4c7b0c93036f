"""One line per invalid config: the file and YAML line, the dotted key, what is wrong, the value as written
(a `${VAR}` stays `${VAR}`), and for an unknown key the nearest valid one."""

from __future__ import annotations

import difflib
import typing
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from pipeline.redact import redact_text
from pipeline.secrets import as_written
from pipeline.yamlpos import line_for


def describe(exc: ValidationError, root: type[BaseModel], path: str, lines: dict, data: dict,
             cli_keys: set[tuple], written: Optional[dict] = None) -> str:
    errors = exc.errors(include_url=False)
    # One bad item also fails its container ("sources: at least 1 item ... not 0"): report the item only.
    errors = [e for e in errors if not any(len(o["loc"]) > len(e["loc"]) and tuple(o["loc"][:len(e["loc"])])
                                           == tuple(e["loc"]) for o in errors)] or errors
    # "sources: Field required" is usually the echo of a misspelt "sourcs:": report the typo first.
    errors.sort(key=lambda e: e["type"] == "missing")
    first = errors[0]
    loc = tuple(first["loc"])
    key = dotted(loc)
    if any(loc[: len(k)] == k for k in cli_keys):
        where = "command line"
    else:
        line = line_for(lines, loc)
        where = f"{path}:{line}" if line else str(path)
    if first["type"] == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        msg = f"{where}: {key}: unknown key; {hint}"
    else:
        value, text = as_written(loc, first.get("input"), first["msg"], data, written or {})
        shown = "" if first["type"] == "missing" else f" (got {_short(value)})"
        msg = f"{where}: {key}: {text.removeprefix('Value error, ')}{shown}"
    if len(errors) > 1:
        msg += f" [+{len(errors) - 1} more error(s)]"
    return redact_text(msg)


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _short(value: Any) -> str:
    text = redact_text(repr(value))  # before cutting: a password cut in half is no longer recognisable
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(model: type[BaseModel], loc: tuple) -> Optional[type[BaseModel]]:
    """The pydantic model class that validates the mapping at `loc` (for key suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        ann = current.model_fields[part].annotation
        for arg in (ann, *typing.get_args(ann)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                ann = arg
                break
            inner = [a for a in typing.get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner:
                ann = inner[0]
                break
        current = ann
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None
