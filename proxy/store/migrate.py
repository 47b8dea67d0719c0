"""``channelgate migrate --config NEW --from OLD_STORAGE``: copy an embedded-default store
(SQLite catalog, package settings, user-made tokens and revocations, filesystem blobs) into
the backends NEW configures: ``database.url`` (PostgreSQL) and ``storage.backend`` (S3 or
another path). DESIGN "Scale-out on existing engines"; README "Scaling out".

Idempotent: rows equal to the stored ones, tokens already present and blobs the target
already holds are skipped, so a rerun copies nothing. Blobs go through the Store protocol
(``temp`` -> ``commit`` verifies the sha256 before anything is published). Every failure is
listed at the end and makes the exit status non-zero.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..airgap.progress import Progress
from ..errors import ChannelgateError
from ..settings import Settings, load_settings_or_report
from .backends import ACCOUNTS_FILE, open_catalog
from .blobs import AREAS, CHUNK, Area, BlobStore, DigestMismatch
from .catalog import CATALOG_FILE, SqliteCatalog, Upload, upload_from_row
from .protocols import Catalog, Store, Tokens
from .s3 import S3Store, open_store
from .tokens import TokenStore

log = logging.getLogger(__name__)


@dataclass
class MigrateReport:
    rows: int = 0
    settings: int = 0
    tokens: int = 0
    revocations: int = 0
    blobs: int = 0
    bytes: int = 0
    skipped_blobs: int = 0
    origins: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"catalog rows {self.rows}, package settings {self.settings}, tokens {self.tokens}, "
                f"revocations {self.revocations}, blobs {self.blobs} ({self.bytes} bytes; "
                f"{self.skipped_blobs} already there), origins {self.origins}, failures {len(self.failures)}")


async def migrate_store(source: Path, settings: Settings, stream: TextIO) -> MigrateReport:
    """Copy everything under ``source`` into the backends of ``settings``."""
    report = MigrateReport()
    store = open_store(settings)
    try:
        async with open_catalog(settings, listen=False) as (catalog, tokens):
            await _copy_catalog(source, catalog, report, stream)
            await _copy_tokens(source, tokens, report, stream)
        await _copy_blobs(BlobStore(source), store, report, stream)
    finally:
        if isinstance(store, S3Store):
            await store.close()
        store.release()
    return report


async def _copy_catalog(source: Path, target: Catalog, report: MigrateReport, stream: TextIO) -> None:
    if not (source / CATALOG_FILE).exists():
        print(f"no catalog at {source / CATALOG_FILE}: nothing to copy", file=stream)
        return
    old = SqliteCatalog.at(source)
    try:
        packages, locked = old.packages.all(), old.packages.all_locked()
        db = sqlite3.connect(f"file:{source / CATALOG_FILE}?mode=ro", uri=True)
        try:
            rows = [upload_from_row(r) for r in db.execute("SELECT * FROM uploads ORDER BY uploaded_at, path")]
        finally:
            db.close()
    finally:
        old.close()
    # settings first: a private package stays private from its rows' first moment
    report.settings = await target.packages.apply(packages, locked)
    report.rows = await target.add_many(_unique(rows))
    print(f"catalog: {report.rows} of {len(rows)} rows copied, {report.settings} package settings", file=stream)


def _unique(rows: list[Upload]) -> list[Upload]:
    return list({(u.channel, u.ecosystem, u.path): u for u in rows}.values())


async def _copy_tokens(source: Path, target: Tokens, report: MigrateReport, stream: TextIO) -> None:
    if not (source / ACCOUNTS_FILE).exists():
        return
    old = TokenStore(source / ACCOUNTS_FILE)
    try:
        made, revoked = old.all(), old.revoked_policy_tokens()
    finally:
        old.close()
    for token in made:
        if target.find(token.sha256) == token:
            continue
        try:
            await target.add(token, replace=True)
            report.tokens += 1
        except ChannelgateError as exc:
            report.failures.append(f"token {token.user}/{token.name}: {exc.message}")
    already = target.revoked_policy_tokens()
    for digest, name in revoked.items():
        if digest not in already:
            await target.revoke_policy_token(digest, name)
            report.revocations += 1
    print(f"tokens: {report.tokens} user-made and {report.revocations} revocations copied", file=stream)


async def _copy_blobs(source: BlobStore, target: Store, report: MigrateReport, stream: TextIO) -> None:
    blobs = [(area, path) for area in AREAS for path in sorted((source.root / area / "sha256").glob("*/*"))
             if path.is_file()]
    total = sum(path.stat().st_size for _, path in blobs)
    with Progress("blobs", total, stream=stream) as progress:
        for area, path in blobs:
            size = path.stat().st_size
            try:
                copied = await _copy_blob(source, target, area, path.name)
            except (OSError, ChannelgateError, DigestMismatch) as exc:
                report.failures.append(f"{area}/{path.name}: {exc}")
                progress.note(f"failed: {area}/{path.name}: {exc}")
                copied = False
            else:
                if copied:
                    report.blobs, report.bytes = report.blobs + 1, report.bytes + size
                else:
                    report.skipped_blobs += 1
            progress.advance(size, items=1)
    for path in sorted((source.root / "cache" / "origin").glob("*")):
        upstream = source.origin(path.name)
        if upstream and target.origin(path.name) != upstream:
            target.set_origin(path.name, upstream)
            report.origins += 1


async def _copy_blob(source: BlobStore, target: Store, kind: Area, sha256: str) -> bool:
    """Put one blob through the target's verified write; False when it holds it already."""
    path = source.blob_path(kind, sha256)  # validates the name as a digest
    if await target.stat(kind, sha256) == path.stat().st_size:
        return False
    async with target.temp(kind) as tmp:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                tmp.write(chunk)
        blob = await tmp.commit({"sha256": sha256})
    if isinstance(target, S3Store):  # the bucket holds it: no need for this machine's copy
        blob.path.unlink(missing_ok=True)
    return True


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    source = Path(args.source).resolve() if args.source else settings.storage_path.resolve()
    if not settings.database_url and settings.storage_backend == "filesystem" and (
            source == settings.storage_path.resolve()):
        print("nothing to migrate: the policy names neither database.url nor another store than the source",
              file=sys.stderr)
        return 2
    try:
        report = asyncio.run(migrate_store(source, settings, sys.stderr))
    except ChannelgateError as exc:
        print(f"migrate failed: {exc.message}", file=sys.stderr)
        return 1
    print(report.summary())
    for failure in report.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    migrate = sub.add_parser("migrate", help="copy an embedded-default store (SQLite, files) into the "
                             "configured PostgreSQL and S3 (rerun: copies only what is missing)")
    migrate.add_argument("--config", required=True, help="the policy naming the new backends")
    migrate.add_argument("--from", dest="source", metavar="STORAGE_PATH",
                         help="the old store's storage.path (default: the policy's storage.path)")
    migrate.set_defaults(func=cmd_migrate)


__all__ = ["MigrateReport", "add_parser", "migrate_store"]
