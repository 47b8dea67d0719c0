"""YAML with a line for every key path, and the checks every policy reader uses: each
problem is recorded with its key path and line, so ``ConfigError`` lists them all at once."""
from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


class LinedDoc:
    """Plain data converted from a composed YAML node tree, with the line of every key path."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lines: dict[tuple[Any, ...], int] = {}
        self.problems: list[str] = []
        self._scalars = ScalarConstructor()

    def convert(self, node: yaml.Node, path: tuple[Any, ...]) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.convert(key_node, path + ("<key>",))
                if key in out:
                    self.problems.append(
                        f"{self.label}: {format_path(path + (key,))}: duplicate key (line {key_node.start_mark.line + 1})"
                    )
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return self._scalars.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError):
            # e.g. a timestamp like 2020-13-01: keep the text; the typed check reports it
            return str(node.value)


class ScalarConstructor(yaml.SafeLoader):
    def __init__(self) -> None:  # a constructor without a stream, for scalar nodes only
        yaml.constructor.SafeConstructor.__init__(self)


def format_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_yaml(text: str, label: str) -> tuple[Any, LinedDoc]:
    doc = LinedDoc(label)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"{label}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if node is None:
        return {}, doc
    return doc.convert(node, ()), doc


class Checker:
    def __init__(self, doc: LinedDoc, label: str) -> None:
        self.doc = doc
        self.label = label
        self.problems = doc.problems

    def bad(self, path: tuple[Any, ...], message: str) -> None:
        line = self._line(path)
        where = f" (line {line})" if line else ""
        self.problems.append(f"{self.label}: {format_path(path)}: {message}{where}")

    def _line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.doc.lines:
                return self.doc.lines[path]
            path = path[:-1]
        return self.doc.lines.get(())

    def mapping(self, value: Any, path: tuple[Any, ...], allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(path, f"must be a mapping, not {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.bad(path + (key,), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def typed(self, value: Any, path: tuple[Any, ...], kind: type | tuple[type, ...], default: Any) -> Any:
        if value is None:
            return default
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.bad(path, "must be a number")
            return default
        if not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.bad(path, f"must be {name}, not {type(value).__name__}")
            return default
        return value

    def name_list(self, value: Any, path: tuple[Any, ...]) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(path, "must be a list")
            return []
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                self.bad(path + (i,), "must be a non-empty string")
            else:
                out.append(item)
        return out
