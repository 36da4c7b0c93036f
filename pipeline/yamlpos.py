"""Safe YAML loading that remembers the line of every key, so config errors can point at it."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.errors import ConfigError

Loc = tuple  # path of keys/indices, e.g. ("sources", 0, "uri")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records (path -> line) while composing; never constructs arbitrary objects."""


def load_yaml_with_lines(path: Path) -> tuple[object, dict[Loc, int]]:
    """Parse `path` safely. Returns the data and a map from key path to 1-based line number."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; give the path of an existing YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.__class__.__name__}: {exc})") from None
    return parse_yaml_with_lines(text, str(path))


def parse_yaml_with_lines(text: str, name: str) -> tuple[object, dict[Loc, int]]:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[Loc, int] = {}
        _walk(node, (), lines)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{name}{line}: invalid YAML: {problem}; fix the syntax at that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    except _DuplicateKey as dup:
        raise ConfigError(f"{name}:{dup.line}: {dup.key}: duplicate key (first at line {dup.first}); YAML keeps "
                          "only the last one, so merge them into one") from None
    finally:
        loader.dispose()
    return data, lines


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            sub = loc + (key,)
            line = key_node.start_mark.line + 1
            if key != "<<" and key in seen:  # PyYAML would silently keep the last (e.g. a second `model:`)
                dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in sub).lstrip(".")
                raise _DuplicateKey(dotted, line, seen[key])
            seen[key] = line
            lines[sub] = key_node.start_mark.line + 1
            _walk(value_node, sub, lines)
            lines[sub] = key_node.start_mark.line + 1  # the key's own line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), lines)


def line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of its nearest ancestor that is in the file."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
