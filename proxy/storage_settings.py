"""The ``storage`` section of a policy (DESIGN "Scale-out on existing engines"): the local path
(temp files, the index cache and, with S3, this replica's copies of blobs) and the backend
that holds blobs: ``filesystem`` (default) or ``s3`` with its ``storage.s3`` mapping."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checked_yaml import Checker

BACKENDS = ("filesystem", "s3")
S3_KEYS = {"endpoint_url", "bucket", "prefix", "region", "access_key_id", "secret_access_key", "redirect",
           "redirect_expires"}
S3_TEXT_KEYS = S3_KEYS - {"redirect", "redirect_expires"}
# a presigned URL lives at most 7 days (SigV4 query authentication); a download needs a few seconds
MAX_REDIRECT_EXPIRES = 7 * 24 * 3600
MIN_REDIRECT_EXPIRES = 10
# S3 bucket naming rules (AWS "Bucket naming rules"): 3-63 lowercase letters, digits, '.', '-'
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None  # None: AWS itself
    prefix: str = ""  # every key starts with it ("" or ending in "/")
    region: str = "us-east-1"
    # None: the standard AWS variables and files (botocore's credential chain)
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    # downloads answer 307 to a presigned GetObject URL valid this many seconds (issue 13)
    redirect: bool = False
    redirect_expires: int = 300


def read_storage(ck: Checker, value: Any, base_dir: Path) -> dict[str, Any]:
    """``storage``: path (relative to the policy file's directory), backend, s3 (Settings fields)."""
    storage = ck.mapping(value, ("storage",), {"path", "backend", "s3"})
    storage_path = Path(ck.typed(storage.get("path"), ("storage", "path"), str, "var"))
    backend = ck.typed(storage.get("backend"), ("storage", "backend"), str, "filesystem")
    if backend not in BACKENDS:
        ck.bad(("storage", "backend"), f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    s3 = _read_s3(ck, storage.get("s3")) if storage.get("s3") is not None or backend == "s3" else None
    if backend != "s3" and storage.get("s3") is not None:
        ck.bad(("storage", "s3"), "is only read when storage.backend is 's3'")
    return {
        "storage_path": storage_path if storage_path.is_absolute() else base_dir / storage_path,
        "storage_backend": backend,
        "s3": s3,
    }


def read_database(ck: Checker, value: Any) -> dict[str, Any]:
    """``database``: ``url`` of a PostgreSQL database for the catalog, package settings and
    user-made tokens (DESIGN "Scale-out on existing engines"); absent: SQLite in storage.path."""
    database = ck.mapping(value, ("database",), {"url"})
    url = ck.typed(database.get("url"), ("database", "url"), str, None)
    if url is not None and not re.match(r"^postgres(ql)?://[^\s]*$", url):
        ck.bad(("database", "url"), "must be a postgresql:// URL, e.g. postgresql://channelgate@db/channelgate")
        url = None
    return {"database_url": url}


def _read_s3(ck: Checker, value: Any) -> S3Settings | None:
    path = ("storage", "s3")
    if value is None:
        ck.bad(path, "is required when storage.backend is 's3' (at least {bucket: NAME})")
        return None
    s3 = ck.mapping(value, path, S3_KEYS)
    if not isinstance(value, dict):
        return None
    text = {key: ck.typed(s3.get(key), path + (key,), str, None) for key in sorted(S3_TEXT_KEYS)}
    redirect, expires = _read_redirect(ck, s3)
    bucket = text["bucket"]
    if bucket is None:
        ck.bad(path + ("bucket",), "is required")
    elif not _BUCKET_RE.match(bucket):
        ck.bad(path + ("bucket",), f"{bucket!r} is not an S3 bucket name (3-63 of a-z 0-9 . -)")
    endpoint = text["endpoint_url"]
    if endpoint is not None and not re.match(r"^https?://[^/\s]+/?$", endpoint):
        ck.bad(path + ("endpoint_url",), "must be an http(s) URL of the service, e.g. http://minio:9000")
    prefix = text["prefix"] or ""
    if prefix.startswith("/") or ".." in prefix.split("/") or (prefix and not prefix.endswith("/")):
        ck.bad(path + ("prefix",), "must be empty or a relative key prefix ending in '/', e.g. 'channelgate/'")
    if (text["access_key_id"] is None) != (text["secret_access_key"] is None):
        ck.bad(path, "access_key_id and secret_access_key go together (or neither: the AWS variables/files)")
    if bucket is None:
        return None
    return S3Settings(bucket=bucket, endpoint_url=endpoint.rstrip("/") if endpoint else None, prefix=prefix,
                      region=text["region"] or "us-east-1", access_key_id=text["access_key_id"],
                      secret_access_key=text["secret_access_key"], redirect=redirect,
                      redirect_expires=expires)


def _read_redirect(ck: Checker, s3: dict[str, Any]) -> tuple[bool, int]:
    """``redirect`` (bool) and ``redirect_expires`` (seconds a presigned URL is valid)."""
    path = ("storage", "s3")
    redirect = ck.typed(s3.get("redirect"), path + ("redirect",), bool, False)
    expires = s3.get("redirect_expires", 300)
    if isinstance(expires, bool) or not isinstance(expires, int) \
            or not MIN_REDIRECT_EXPIRES <= expires <= MAX_REDIRECT_EXPIRES:
        ck.bad(path + ("redirect_expires",), f"must be whole seconds from {MIN_REDIRECT_EXPIRES} to "
               f"{MAX_REDIRECT_EXPIRES} (7 days, the longest a presigned URL lives), got {expires!r}")
        expires = 300
    elif not redirect and "redirect_expires" in s3:
        ck.bad(path + ("redirect_expires",), "is only read with redirect: true")
    return bool(redirect), int(expires)


__all__ = ["BACKENDS", "S3Settings", "read_database", "read_storage"]
