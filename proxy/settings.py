"""Policy file: YAML -> validated, frozen objects.

Strict by design: unknown keys, dangling references, malformed hashes, unknown scopes,
duplicate names and bad dates are errors, and every problem is reported at once with its
key path and line (``ConfigError.problems``). Nothing here touches the network or disk
beyond reading the policy and its tokens file.
"""
from __future__ import annotations

import base64
import re
import ssl
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .account_settings import AccountPolicy, read_accounts, read_users
from .checked_yaml import Checker, parse_yaml
from .errors import ConfigError
from .filters import UpstreamFilter, build_filter
from .storage_settings import S3Settings, read_database, read_storage
from .token_settings import SCOPES as SCOPES
from .token_settings import TokenEntry as TokenEntry
from .token_settings import index_tokens, read_all_tokens

ECOSYSTEMS = ("conda", "pypi", "cran")
ROLES = ("read", "write", "admin")
RESERVED_CHANNEL_NAMES = frozenset({"api", "t", "static", "metrics", "ui"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str
    type: str  # "conda" | "pypi" | "cran"
    url: str  # no trailing slash
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0  # seconds: the headers, and the deadline's fixed part (DESIGN, "Hostile input")
    min_rate: int = 16 * 1024  # bytes/s a body must average: deadline = timeout + size / min_rate
    filter: "UpstreamFilter | None" = None  # mirror rules (filters.py); None: everything

    def __repr__(self) -> str:  # never print credentials
        return f"UpstreamSettings(name={self.name!r}, type={self.type!r}, url={self.url!r})"


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    name: str
    public: bool = False
    upstreams: tuple[str, ...] = ()
    upstream_allow: frozenset[str] = frozenset()  # raw names; each ecosystem normalises its own way
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()


MiB = 1024 * 1024


def _limit(default: int | float, key: str, unit: int = 1, meaning: str = "") -> Any:
    """A ``server.limits`` entry: policy ``key`` (a positive number, times ``unit``)."""
    return field(default=default * unit, metadata={"key": key, "unit": unit, "meaning": meaning})


@dataclass(frozen=True, slots=True)
class Limits:
    """``server.limits``: what one request may cost (DESIGN "Hostile input and faults").

    Each field names its policy key; the policy value is multiplied by ``unit`` (so
    ``archive_unpacked_mb: 8192`` is ``archive_unpacked_bytes == 8 GiB``). Every value must be
    a positive number. To add a limit, add a field here and a row to README's policy
    reference; ``_read_limits`` validates it.
    """

    archive_members: int = _limit(100_000, "archive_members", meaning="members in one uploaded archive")
    archive_unpacked_bytes: int = _limit(
        8192, "archive_unpacked_mb", MiB, "total decompressed bytes of one uploaded archive"
    )
    archive_ratio: int = _limit(
        50, "archive_ratio", meaning="decompressed/compressed size (checked past 64 MiB decompressed)"
    )
    index_unpacked_bytes: int = _limit(
        2048, "index_unpacked_mb", MiB, "decompressed size of one upstream index (repodata, PACKAGES.gz, archive.rds)"
    )
    index_fetch_bytes: int = _limit(
        1024, "index_fetch_mb", MiB, "bytes of one upstream index document as fetched (before any decompression)"
    )
    artifact_fetch_bytes: int = _limit(
        16384, "artifact_fetch_mb", MiB, "bytes of one upstream package file whose index declares no size"
    )
    form_fields: int = _limit(1000, "form_fields", meaning="fields in one multipart upload form")
    form_text_bytes: int = _limit(8, "form_text_mb", MiB, "total size of a form's non-file fields")
    validation_workers: int = _limit(2, "validation_workers", meaning="threads checking uploads (own pool)")
    # connections (server.py): slowloris, idle sockets and descriptor exhaustion
    header_timeout: int = _limit(10, "header_timeout", meaning="seconds to send a complete request head")
    keepalive_timeout: int = _limit(15, "keepalive_timeout", meaning="seconds an idle keep-alive connection stays open")
    max_connections: int = _limit(1000, "max_connections", meaning="open client connections; more get 503")
    # request bodies (server.py): an upload trickled byte by byte, or stalled, after a complete head
    body_idle_timeout: int = _limit(
        30, "body_idle_timeout", meaning="seconds a request body may send nothing while the server waits for it"
    )
    body_deadline: int = _limit(3600, "body_deadline", meaning="seconds from a complete request head to its whole body")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:8080"
    public_url: str | None = None
    metrics_listen: str | None = None  # HOST:PORT serving /metrics alone (then not on `listen`)
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key the listener is HTTPS
    tls_key: Path | None = None
    storage_path: Path = Path("var")
    storage_backend: str = "filesystem"  # "filesystem" | "s3" (storage_settings.py)
    s3: S3Settings | None = None
    database_url: str | None = field(default=None, repr=False)  # PostgreSQL (may hold a password); None: SQLite
    metadata_ttl: int = 600
    negative_ttl: int = 60
    cache_backend: str = "memory"  # "memory" | "redis"
    redis_url: str | None = None
    download_lease: int = 15  # seconds a replica's claim on a cold download outlives its last heartbeat
    max_upload_bytes: int = 2 * 1024**3
    limits: Limits = field(default_factory=Limits)
    session_key: str | None = None  # Fernet key of the web UI's session cookie (else made once in the store)
    offline: bool = False
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    users: frozenset[str] = frozenset()
    passwords: Mapping[str, str] = field(default_factory=dict, repr=False)  # user -> "scrypt$..."
    accounts: AccountPolicy = AccountPolicy()
    channels: Mapping[str, ChannelPolicy] = field(default_factory=dict)
    tokens: tuple[TokenEntry, ...] = ()
    tokens_by_hash: Mapping[str, TokenEntry] = field(default_factory=dict)
    memberships: Mapping[str, frozenset[str]] = field(default_factory=dict)  # user -> groups
    source: Path | None = None


def _positive_int(ck: Checker, value: Any, path: tuple[Any, ...], default: int) -> int:
    number = ck.typed(value, path, int, default)
    if number < 0:
        ck.bad(path, "must not be negative")
        return default
    return int(number)


def _read_limits(ck: Checker, value: Any, path: tuple[Any, ...]) -> Limits:
    """``server.limits``: every key optional, each a positive number of its field's type."""
    specs = {f.metadata["key"]: f for f in fields(Limits)}
    raw = ck.mapping(value, path, set(specs))
    chosen: dict[str, Any] = {}
    for key, spec in specs.items():
        if raw.get(key) is None:
            continue
        kind: type = type(spec.default)
        number = ck.typed(raw[key], path + (key,), (int, float) if kind is float else int, None)
        if number is None:
            continue
        if number <= 0:
            ck.bad(path + (key,), "must be a positive number")
            continue
        chosen[spec.name] = kind(number * spec.metadata["unit"])
    return Limits(**chosen)


def _is_fernet_key(value: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(value.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError):
        return False


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[ADDR]:PORT``) -> (host, port); ValueError says what is wrong.

    Both parts are required: a port alone would bind every interface, which must be asked
    for as ``0.0.0.0:PORT``; a port outside 1-65535 must not be wrapped or replaced.
    """
    host, sep, port = listen.rpartition(":")
    if not sep and listen.isdigit():
        raise ValueError(f"a port alone; write 127.0.0.1:{listen} (this machine) or 0.0.0.0:{listen} (every interface)")
    if not sep or not port:
        raise ValueError("needs HOST:PORT, e.g. 127.0.0.1:8080")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port must be a number from 1 to 65535, not {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:8080")
    if not host:
        raise ValueError(f"no host; write 127.0.0.1:{port} (this machine) or 0.0.0.0:{port} (every interface)")
    return host, int(port)


def load_settings(path: str | Path) -> Settings:
    """Read and validate a policy file (and its tokens_file). Raises ConfigError with every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_settings(text, source=path)


def load_settings_or_report(path: str | Path) -> Settings | None:
    """For commands: the policy, or None after printing every problem to stderr."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def parse_settings(text: str, *, source: Path | None = None) -> Settings:
    """Validate a policy document: one reader per top-level section, every problem at once."""
    label = str(source) if source else "<policy>"
    data, doc = parse_yaml(text, label)
    ck = Checker(doc, label)
    top = ck.mapping(data, (), set(TOP_LEVEL_KEYS))
    base_dir = source.parent if source else Path.cwd()
    server = _read_server(ck, top.get("server"), base_dir)
    storage = read_storage(ck, top.get("storage"), base_dir)
    cache = _read_cache(ck, top.get("cache"))
    database = read_database(ck, top.get("database"))
    offline = ck.typed(top.get("offline"), ("offline",), bool, False)
    upstreams = _read_upstreams(ck, top.get("upstreams"))
    users, passwords = read_users(ck, top.get("users"))
    accounts = read_accounts(ck, top.get("accounts"))
    users, groups = _read_groups(ck, users, top.get("groups"))
    channels = _read_channels(ck, top.get("channels"), upstreams, groups, users)
    tokens = read_all_tokens(ck, top, base_dir, users)
    by_hash = index_tokens(ck, tokens)
    if ck.problems:
        raise ConfigError(ck.problems)
    memberships: dict[str, set[str]] = {}
    for gname, members in groups.items():
        for user in members:
            memberships.setdefault(user, set()).add(gname)
    return Settings(
        **server,
        **cache,
        **storage,
        **database,
        offline=offline,
        upstreams=upstreams,
        groups=groups,
        users=frozenset(users),
        passwords=passwords,
        accounts=accounts,
        channels=channels,
        tokens=tuple(tokens),
        tokens_by_hash=by_hash,
        memberships={u: frozenset(g) for u, g in memberships.items()},
        source=source,
    )


TOP_LEVEL_KEYS = ("server", "storage", "database", "cache", "offline", "upstreams", "groups", "users", "channels", "tokens",
                  "tokens_file", "accounts")


def _read_server(ck: Checker, value: Any, base_dir: Path) -> dict[str, Any]:
    """``server``: listen, public_url, max_upload_mb, limits, session_key and the operations
    keys (Settings fields)."""
    server = ck.mapping(
        value, ("server",),
        {"listen", "public_url", "max_upload_mb", "limits", "session_key", "metrics_listen", "tls_cert", "tls_key"},
    )
    metrics_listen, tls_cert, tls_key = _read_server_ops(ck, server, base_dir)
    listen = ck.typed(server.get("listen"), ("server", "listen"), str, "127.0.0.1:8080")
    try:
        parse_listen(listen)
    except ValueError as exc:
        ck.bad(("server", "listen"), f"{listen!r}: {exc}")
    public_url = ck.typed(server.get("public_url"), ("server", "public_url"), str, None)
    if public_url is not None and not re.match(r"^https?://[^/]+", public_url):
        ck.bad(("server", "public_url"), "must be an http(s) URL")
    max_upload_mb = _positive_int(ck, server.get("max_upload_mb"), ("server", "max_upload_mb"), 2048)
    limits = _read_limits(ck, server.get("limits"), ("server", "limits"))
    session_key = ck.typed(server.get("session_key"), ("server", "session_key"), str, None)
    if session_key is not None and not _is_fernet_key(session_key):
        ck.bad(("server", "session_key"), "must be a Fernet key (32 url-safe base64 bytes), e.g. from "
               "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'")
    return {
        "listen": listen,
        "public_url": public_url.rstrip("/") if public_url else None,
        "metrics_listen": metrics_listen,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "max_upload_bytes": max_upload_mb * 1024 * 1024,
        "limits": limits,
        "session_key": session_key,
    }


def _read_cache(ck: Checker, value: Any) -> dict[str, Any]:
    """``cache``: metadata_ttl, negative_ttl, backend (memory | redis), redis_url, download_lease."""
    cache = ck.mapping(value, ("cache",), {"metadata_ttl", "negative_ttl", "backend", "redis_url", "download_lease"})
    metadata_ttl = _positive_int(ck, cache.get("metadata_ttl"), ("cache", "metadata_ttl"), 600)
    negative_ttl = _positive_int(ck, cache.get("negative_ttl"), ("cache", "negative_ttl"), 60)
    backend = ck.typed(cache.get("backend"), ("cache", "backend"), str, "memory")
    if backend not in ("memory", "redis"):
        ck.bad(("cache", "backend"), f"must be 'memory' or 'redis', got {backend!r}")
    redis_url = ck.typed(cache.get("redis_url"), ("cache", "redis_url"), str, None)
    if backend == "redis" and not redis_url:
        ck.bad(("cache", "redis_url"), "is required when cache.backend is 'redis'")
    download_lease = _positive_int(ck, cache.get("download_lease"), ("cache", "download_lease"), 15)
    if download_lease < 1:
        ck.bad(("cache", "download_lease"), "must be at least 1 (seconds)")
    return {"metadata_ttl": metadata_ttl, "negative_ttl": negative_ttl, "cache_backend": backend,
            "redis_url": redis_url, "download_lease": download_lease}


def _read_upstreams(ck: Checker, value: Any) -> dict[str, UpstreamSettings]:
    """``upstreams``: name -> {type, url, username, password, timeout, filter}."""
    upstreams: dict[str, UpstreamSettings] = {}
    raw_up = value or {}
    if not isinstance(raw_up, dict):
        ck.bad(("upstreams",), "must be a mapping of upstream name to {type, url}")
        raw_up = {}
    for name, spec in raw_up.items():
        p = ("upstreams", name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            ck.bad(p, "upstream names use letters, digits, '.', '_' and '-'")
            continue
        spec = ck.mapping(spec, p, {"type", "url", "username", "password", "timeout", "min_rate", "filter"})
        kind = ck.typed(spec.get("type"), p + ("type",), str, "")
        if kind not in ECOSYSTEMS:
            ck.bad(p + ("type",), f"must be one of {', '.join(ECOSYSTEMS)}")
        url = ck.typed(spec.get("url"), p + ("url",), str, "")
        if not re.match(r"^https?://[^/]+", url):
            ck.bad(p + ("url",), "must be an http(s) URL")
        timeout = ck.typed(spec.get("timeout"), p + ("timeout",), (int, float), 30.0)
        if isinstance(timeout, bool) or not 0 < timeout <= 3600:
            ck.bad(p + ("timeout",), "must be a number of seconds between 0 and 3600")
            timeout = 30.0
        min_rate = ck.typed(spec.get("min_rate"), p + ("min_rate",), int, 16 * 1024)
        if isinstance(min_rate, bool) or min_rate < 1:
            ck.bad(p + ("min_rate",), "must be a positive number of bytes per second")
            min_rate = 16 * 1024
        flt, flt_problems = build_filter(kind, spec.get("filter"))
        for sub, message in flt_problems:
            ck.bad(p + ("filter",) + sub, message)
        upstreams[name] = UpstreamSettings(
            name=name,
            type=kind,
            url=url.rstrip("/"),
            username=ck.typed(spec.get("username"), p + ("username",), str, None),
            password=ck.typed(spec.get("password"), p + ("password",), str, None),
            timeout=float(timeout),
            filter=flt,
            min_rate=min_rate,
        )
    return upstreams


def _read_groups(ck: Checker, named: set[str], groups_value: Any) -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """``groups``: each group's members; every user named under ``users`` or in a group."""
    users = set(named)
    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = groups_value or {}
    if not isinstance(raw_groups, dict):
        ck.bad(("groups",), "must be a mapping of group name to a list of users")
        raw_groups = {}
    for gname, members in raw_groups.items():
        names = ck.name_list(members, ("groups", gname))
        groups[str(gname)] = tuple(names)
        users.update(names)
    return users, groups


def _read_channels(
    ck: Checker, value: Any, upstreams: Mapping[str, UpstreamSettings], groups: Mapping[str, Any], users: set[str]
) -> dict[str, ChannelPolicy]:
    """``channels``: name -> {public, upstreams, upstream_allow, read, write, admin}."""
    channels: dict[str, ChannelPolicy] = {}
    raw_channels = value or {}
    if not isinstance(raw_channels, dict):
        ck.bad(("channels",), "must be a mapping of channel name to its policy")
        raw_channels = {}
    for cname, spec in raw_channels.items():
        p = ("channels", cname)
        if not isinstance(cname, str) or not _NAME_RE.match(cname) or cname in RESERVED_CHANNEL_NAMES:
            ck.bad(p, "channel names use letters, digits, '.', '_' and '-' and may not be api, t, static, metrics or ui")
            continue
        spec = ck.mapping(spec, p, {"public", "upstreams", "upstream_allow", "read", "write", "admin"})
        ups = ck.name_list(spec.get("upstreams"), p + ("upstreams",))
        for i, up in enumerate(ups):
            if up not in upstreams:
                ck.bad(p + ("upstreams", i), f"names upstream {up!r}, which is not defined under upstreams")
        if len(set(ups)) != len(ups):
            ck.bad(p + ("upstreams",), "lists an upstream twice")
        channels[cname] = ChannelPolicy(
            name=cname,
            public=ck.typed(spec.get("public"), p + ("public",), bool, False),
            upstreams=tuple(ups),
            upstream_allow=frozenset(ck.name_list(spec.get("upstream_allow"), p + ("upstream_allow",))),
            **{role: _read_role(ck, spec.get(role), p + (role,), groups, users) for role in ROLES},
        )
    return channels


def _read_role(ck: Checker, value: Any, path: tuple[Any, ...], groups: Mapping[str, Any], users: set[str]) -> tuple[str, ...]:
    """One role of a channel: a list of ``group:NAME`` / ``user:NAME``, each defined."""
    principals = ck.name_list(value, path)
    for i, principal in enumerate(principals):
        kind, _, ref = principal.partition(":")
        if kind == "group" and ref:
            if ref not in groups:
                ck.bad(path + (i,), f"names group {ref!r}, which is not defined under groups")
        elif kind == "user" and ref:
            if ref not in users:
                ck.bad(path + (i,), f"names user {ref!r}, who is in no group and not under users")
        else:
            ck.bad(path + (i,), f"must be 'group:NAME' or 'user:NAME', got {principal!r}")
    return tuple(principals)


def _read_server_ops(ck: Checker, server: dict[str, Any], base_dir: Path) -> tuple[str | None, Path | None, Path | None]:
    """server.metrics_listen, server.tls_cert and server.tls_key (DESIGN, "Operations").
    The certificate and key are loaded here, so check-config and reload find a bad pair."""
    metrics_listen = ck.typed(server.get("metrics_listen"), ("server", "metrics_listen"), str, None)
    if metrics_listen is not None:
        try:
            parse_listen(metrics_listen)
        except ValueError as exc:
            ck.bad(("server", "metrics_listen"), f"{metrics_listen!r}: {exc}")
    paths: dict[str, Path | None] = {}
    for key in ("tls_cert", "tls_key"):
        value = ck.typed(server.get(key), ("server", key), str, None)
        paths[key] = None if value is None else base_dir / value
    cert, key_path = paths["tls_cert"], paths["tls_key"]
    if (cert is None) != (key_path is None):
        ck.bad(("server", "tls_cert" if cert is None else "tls_key"), "tls_cert and tls_key must be given together")
        return metrics_listen, None, None
    if cert is not None and key_path is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key_path)
        except (OSError, ssl.SSLError) as exc:
            ck.bad(("server", "tls_cert"), f"cannot load the certificate {cert} with the key {key_path}: {exc}")
    return metrics_listen, cert, key_path
