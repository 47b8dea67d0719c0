"""Opening the configured database: the catalog (with package settings) and the token store.
``database.url`` set: PostgreSQL (pg.py); absent: SQLite files in ``storage.path``."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .catalog import CATALOG_FILE, SqliteCatalog
from .protocols import Catalog, Tokens
from .tokens import TokenStore

if TYPE_CHECKING:
    from ..settings import Settings

ACCOUNTS_FILE = "accounts.sqlite3"


def create_sqlite_files(storage_root: Path) -> None:
    """Create the SQLite catalog and token store (and switch them to WAL) once, before
    --workers processes open them at the same time."""
    SqliteCatalog.at(storage_root).close()
    TokenStore(storage_root / ACCOUNTS_FILE).close()


@contextlib.asynccontextmanager
async def open_catalog(settings: "Settings", *, listen: bool = True) -> AsyncIterator[tuple[Catalog, Tokens]]:
    """(catalog, tokens) of the configured backend, closed on exit. ``listen=False`` for a
    command that writes and exits (no notifications needed)."""
    if settings.database_url:
        try:
            from .pg import PgBackend
            from .pg_catalog import PgCatalog
            from .pg_tokens import PgTokenStore
        except ImportError as exc:
            raise ConfigError(["database.url needs the postgres extra (pip install 'channelgate[postgres]')"]) from exc

        db = await PgBackend.open(settings.database_url, listen=listen)
        try:
            pg_catalog: Catalog = await PgCatalog.open(db)
            pg_tokens: Tokens = await PgTokenStore.open(db)
            yield pg_catalog, pg_tokens
        finally:
            await db.close()
        return
    settings.storage_path.mkdir(parents=True, exist_ok=True)
    catalog: Catalog = SqliteCatalog.at(settings.storage_path)
    try:
        tokens: Tokens = TokenStore(settings.storage_path / ACCOUNTS_FILE)
        try:
            yield catalog, tokens
        finally:
            tokens.close()
    finally:
        catalog.close()


@contextlib.contextmanager
def catalog_reader(settings: "Settings") -> Iterator[Catalog | None]:
    """For a command outside the server (export, cache): the configured catalog, loaded, to read
    synchronously; None when an embedded store has none yet. Not for use inside a running loop."""
    if not settings.database_url:
        if not (settings.storage_path / CATALOG_FILE).exists():
            yield None
            return
        catalog = SqliteCatalog.at(settings.storage_path)
        try:
            yield catalog
        finally:
            catalog.close()
        return
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        opened, _ = runner.run(stack.enter_async_context(open_catalog(settings, listen=False)))
        try:
            yield opened
        finally:
            runner.run(stack.aclose())


__all__ = ["ACCOUNTS_FILE", "catalog_reader", "create_sqlite_files", "open_catalog"]
