"""open_services(): everything the server holds is built once, immutable, and closed in
reverse order on an AsyncExitStack, also when one close fails (issue 9, "Wiring")."""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from proxy.app import open_services
from proxy.artifacts import Artifacts
from proxy.settings import Settings, parse_settings


def _settings(tmp_path: Path) -> Settings:
    return parse_settings(f"storage: {{path: {tmp_path / 'storage'}}}\nchannels: {{c: {{public: true}}}}\n")


async def test_every_service_is_closed_on_exit(tmp_path: Path) -> None:
    async with open_services(_settings(tmp_path)) as services:
        conda = services.ecosystems["conda"]
        executor = conda.indexes.executor  # type: ignore[attr-defined]
        assert executor.submit(lambda: 1).result() == 1
        session = services.upstream.session
        assert not session.closed
    assert session.closed
    with pytest.raises(RuntimeError):  # conda's build threads are shut down
        executor.submit(lambda: 1)
    with pytest.raises(sqlite3.ProgrammingError):  # the catalog is closed
        services.catalog.list("c", "conda")


async def test_services_cannot_be_changed_after_construction(tmp_path: Path) -> None:
    async with open_services(_settings(tmp_path)) as services:
        with pytest.raises(dataclasses.FrozenInstanceError):
            services.store = services.store  # type: ignore[misc]
        with pytest.raises(TypeError):
            services.ecosystems["other"] = services.ecosystems["pypi"]  # type: ignore[index]
        assert set(services.ecosystems) == {"pypi", "conda", "cran"}


async def test_a_failing_close_still_closes_what_was_opened_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Artifacts) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(Artifacts, "close", broken)
    with pytest.raises(OSError, match="disk gone"):
        async with open_services(_settings(tmp_path)) as services:
            session = services.upstream.session
    assert session.closed  # opened before the artifacts, closed after their close failed
    with pytest.raises(sqlite3.ProgrammingError):
        services.catalog.list("c", "conda")
