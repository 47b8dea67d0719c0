"""The tokens of a policy: ``tokens`` and the entries of ``tokens_file``, each checked
(user defined, sha256 form, known scopes, a date for ``expires``), and indexed by digest."""
from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .checked_yaml import Checker, parse_yaml
from .errors import ConfigError



class Scope(enum.Enum):
    """The token scopes, defined here once (DESIGN, "Tokens and authentication");
    auth.policy.Action names the scope that grants each action from these."""

    CONDA_DOWNLOAD = "conda:download"
    PYPI_DOWNLOAD = "pypi:download"
    CRAN_DOWNLOAD = "cran:download"
    API_READ = "api:read"
    API_WRITE = "api:write"
    ALL = "all"  # every scope, within the user's roles


SCOPES = frozenset(scope.value for scope in Scope)
_SHA256_RE = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    user: str
    sha256: str  # bare lowercase hex
    scopes: frozenset[str]
    expires: dt.date | None = None


def read_all_tokens(ck: Checker, top: Mapping[str, Any], base_dir: Path, users: set[str]) -> list[TokenEntry]:
    """``tokens`` and the entries of ``tokens_file`` (relative to the policy file)."""
    tokens: list[TokenEntry] = []
    _read_tokens(ck, top.get("tokens"), ("tokens",), users, tokens)
    tokens_file = ck.typed(top.get("tokens_file"), ("tokens_file",), str, None)
    if not tokens_file:
        return tokens
    tf_path = Path(tokens_file)
    if not tf_path.is_absolute():
        tf_path = base_dir / tf_path
    if not tf_path.exists():
        # a missing file would silently drop every token in it (everyone 401 after a reload)
        ck.bad(("tokens_file",), f"{tf_path} does not exist (create it with `tokens: []`)")
        return tokens
    try:
        tf_text = tf_path.read_text(encoding="utf-8")
    except OSError as exc:
        ck.bad(("tokens_file",), f"cannot read {tf_path}: {exc.strerror}")
        return tokens
    try:
        tf_data, tf_doc = parse_yaml(tf_text, str(tf_path))
    except ConfigError as exc:
        ck.problems.extend(exc.problems)
        return tokens
    tf_ck = Checker(tf_doc, str(tf_path))
    if isinstance(tf_data, dict):
        tf_ck.mapping(tf_data, (), {"tokens"})
        tf_data = tf_data.get("tokens")
    _read_tokens(tf_ck, tf_data, ("tokens",), users, tokens)
    ck.problems.extend(p for p in tf_ck.problems if p not in ck.problems)
    return tokens


def index_tokens(ck: Checker, tokens: list[TokenEntry]) -> dict[str, TokenEntry]:
    """Tokens by digest; a name or a digest used twice is a problem."""
    by_hash: dict[str, TokenEntry] = {}
    seen_names: set[str] = set()
    for entry in tokens:
        if entry.name in seen_names:
            ck.bad(("tokens",), f"token name {entry.name!r} is used twice")
        seen_names.add(entry.name)
        if entry.sha256 in by_hash:
            ck.bad(("tokens",), f"token {entry.name!r} has the same sha256 as {by_hash[entry.sha256].name!r}")
        by_hash[entry.sha256] = entry
    return by_hash


def _read_tokens(ck: Checker, value: Any, path: tuple[Any, ...], users: set[str], out: list[TokenEntry]) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        ck.bad(path, "must be a list of token entries")
        return
    for i, raw in enumerate(value):
        p = path + (i,)
        spec = ck.mapping(raw, p, {"name", "user", "sha256", "scopes", "expires"})
        if not spec:
            continue
        name = ck.typed(spec.get("name"), p + ("name",), str, "")
        if not name:
            ck.bad(p + ("name",), "is required")
        user = ck.typed(spec.get("user"), p + ("user",), str, "")
        if not user:
            ck.bad(p + ("user",), "is required")
        elif user not in users:
            ck.bad(p + ("user",), f"names user {user!r}, who is in no group and not under users")
        digest = ck.typed(spec.get("sha256"), p + ("sha256",), str, "")
        if not _SHA256_RE.match(digest):
            ck.bad(p + ("sha256",), "must be 'sha256:' followed by 64 lowercase hex digits")
        scopes = ck.name_list(spec.get("scopes"), p + ("scopes",))
        if not scopes:
            ck.bad(p + ("scopes",), "needs at least one scope")
        for j, scope in enumerate(scopes):
            if scope not in SCOPES:
                ck.bad(p + ("scopes", j), f"unknown scope {scope!r} (known: {', '.join(sorted(SCOPES))})")
        expires = spec.get("expires")
        if expires is not None and not isinstance(expires, dt.date):
            if isinstance(expires, str):
                try:
                    expires = dt.date.fromisoformat(expires)
                except ValueError:
                    ck.bad(p + ("expires",), f"must be a date YYYY-MM-DD, got {expires!r}")
                    expires = None
            else:
                ck.bad(p + ("expires",), "must be a date YYYY-MM-DD")
                expires = None
        if isinstance(expires, dt.datetime):
            expires = expires.date()
        out.append(
            TokenEntry(
                name=name,
                user=user,
                sha256=digest.removeprefix("sha256:"),
                scopes=frozenset(scopes),
                expires=expires,
            )
        )
