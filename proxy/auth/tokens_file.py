"""``token create --append FILE``: add a token entry to a tokens file or a policy, structurally.

Text appended to a YAML file lands wherever the file happens to end: after ``tokens: []``
it made a second ``tokens`` key, after a policy's last section it became part of that
section. Here the file is read with ruamel.yaml's round-trip loader (comments, order and
styles kept), the entry goes into its ``tokens`` list, and the result replaces the file
atomically only once it reads back with the entry in it. Anything else is refused with one
line that says why; the file is then left exactly as it was.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from ..errors import ConfigError


def append_token_entry(path: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the ``tokens`` list of ``path`` (created if missing); ConfigError if
    the file cannot take it."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    rt = YAML()  # round-trip: keeps comments, key order and flow/block styles
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.width = 4096  # never re-wrap the lines already there
    rt.preserve_quotes = True
    try:
        doc = rt.load(text)
    except YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML ({_first_line(exc)}): fix it, then append again"]) from None
    header = ""
    if doc is None:  # empty, or comments only: keep them, start the list after them
        header = text.rstrip("\n") + "\n" if text.strip() else ""
        doc = CommentedMap()
    tokens = _tokens_list(path, doc)
    names = {item.get("name") for item in tokens if isinstance(item, dict)}
    if entry["name"] in names:
        raise ConfigError([f"{path} already has a token named {entry['name']!r}: choose another --name"])
    if not tokens:
        tokens.fa.set_block_style()  # `tokens: []` becomes a block list
    tokens.append(CommentedMap(entry))
    out = io.StringIO()
    rt.dump(doc, out)
    new_text = header + out.getvalue()
    _check_round_trip(path, new_text, entry)
    _replace(path, new_text)


def _tokens_list(path: Path, doc: Any) -> CommentedSeq:
    if isinstance(doc, CommentedSeq):  # a tokens file may be a bare list of entries
        return doc
    if not isinstance(doc, CommentedMap):
        raise ConfigError([f"{path} holds a {type(doc).__name__}, not a policy or a tokens file (`tokens: [...]`)"])
    tokens = doc.get("tokens")
    if tokens is None:
        doc["tokens"] = tokens = CommentedSeq()
    if not isinstance(tokens, CommentedSeq):
        raise ConfigError([f"{path}: `tokens` is a {type(tokens).__name__}, not a list of entries"])
    return tokens


def _check_round_trip(path: Path, new_text: str, entry: dict[str, Any]) -> None:
    """What will be written reads back (with the plain loader the server uses) with the entry."""
    try:
        data = yaml.safe_load(new_text)
    except yaml.YAMLError:  # pragma: no cover - ruamel wrote what it read
        raise ConfigError([f"{path}: the edited file would not be valid YAML; nothing written"]) from None
    entries = data if isinstance(data, list) else data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not any(
        isinstance(e, dict) and e.get("sha256") == entry["sha256"] for e in entries
    ):  # pragma: no cover - a guard against a library surprise
        raise ConfigError([f"{path}: the edited file would not hold the entry; nothing written"])


def _replace(path: Path, text: str) -> None:
    """Write beside ``path`` and rename over it: a crash leaves the old file or the new one."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else str(problem)
