"""The Store and Catalog contracts (proxy/store/protocols.py), run over every backend.

Each backend is a fixture parameter: the S3 backend runs against moto's S3 server (a real
HTTP S3 protocol, started once per session by conftest's ``s3_endpoint``); the PostgreSQL
catalog against a throwaway cluster (conftest's ``pg_cluster``), a fresh database per test.
Changes made by another instance are awaited (``Catalog.wait_for``), never slept on.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.errors import Conflict, InvalidInput, NotFound
from proxy.store.blobs import BlobStore, DigestMismatch
from proxy.settings import Settings
from proxy.store.backends import open_catalog
from proxy.store.catalog import Upload
from proxy.store.protocols import Catalog, Store
from proxy.store.scratch import ScratchSpace

STORES = ("filesystem", "s3")
CATALOGS = ("sqlite", "postgresql")
MakeCatalog = Callable[[], Awaitable[Catalog]]
SEEN_WITHIN = 1.0  # seconds: DESIGN, "an upload through one is in every replica's indexes within 1 s"


def _make_store(request: pytest.FixtureRequest, root: Path) -> Store:
    if request.param == "s3":
        from proxy.store.s3 import S3Store

        return S3Store(root, request.getfixturevalue("s3_settings"))
    return BlobStore(root)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend = _make_store(request, tmp_path / "store")
    backend.open()
    yield backend
    close = getattr(backend, "close", None)
    if close is not None:
        await close()


@pytest.fixture(params=CATALOGS)
async def make_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeCatalog]:
    """Opens instances of one backend over one database (as --workers siblings or replicas do)."""
    async with contextlib.AsyncExitStack() as stack:
        settings = Settings(storage_path=tmp_path / "store")
        if request.param == "postgresql":
            settings = Settings(storage_path=tmp_path / "store", database_url=request.getfixturevalue("pg_url"))
        settings.storage_path.mkdir()

        async def make() -> Catalog:
            catalog, _ = await stack.enter_async_context(open_catalog(settings))
            return catalog

        yield make


def _upload(path: str = "a-1.0.tar.gz", name: str = "a", **kw: object) -> Upload:
    fields: dict[str, object] = dict(channel="c", ecosystem="pypi", path=path, name=name, version="1.0",
                                     filename=path, sha256="0" * 64, md5="0" * 32, size=3)
    fields.update(kw)
    return Upload(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Store
async def test_a_committed_blob_is_found_by_its_sha256(store: Store) -> None:
    data = b"package bytes"
    sha = hashlib.sha256(data).hexdigest()
    assert store.find("uploads", sha) is None
    async with store.temp("uploads") as tmp:
        tmp.write(data)
        blob = await tmp.commit({"sha256": sha})
    assert blob.sha256 == sha and blob.size == len(data)
    found = store.find("uploads", sha)
    assert found is not None and found.read_bytes() == data
    assert store.find("cache", sha) is None  # areas are apart


async def test_a_blob_that_fails_verification_is_never_published(store: Store) -> None:
    data = b"tampered"
    async with store.temp("cache") as tmp:
        tmp.write(data)
        with pytest.raises(DigestMismatch):
            await tmp.commit({"sha256": "f" * 64})
    assert store.find("cache", hashlib.sha256(data).hexdigest()) is None
    assert list(store.scratch_dir.glob("*.part")) == []  # no partial file left behind


async def test_put_bytes_refs_and_origin(store: Store) -> None:
    blob = await store.put_bytes("cache", b"metadata")
    assert store.find_ref("md5:abc") is None
    store.set_ref("md5:abc", blob.sha256)
    ref = store.find_ref("md5:abc")
    assert ref is not None and ref.read_bytes() == b"metadata"
    assert store.origin(blob.sha256) is None
    store.set_origin(blob.sha256, "pypi-org")
    assert store.origin(blob.sha256) == "pypi-org"


async def _read(store: Store, sha: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.stream("uploads", sha, start, end, chunk_size=7)])


async def test_a_blob_streams_whole_and_by_byte_range(store: Store) -> None:
    data = bytes(range(256)) * 40
    blob = await store.put_bytes("uploads", data)
    assert await store.stat("uploads", blob.sha256) == len(data)
    assert await store.stat("cache", blob.sha256) is None
    assert await _read(store, blob.sha256) == data
    assert await _read(store, blob.sha256, 100, 1000) == data[100:1000]
    assert await _read(store, blob.sha256, 10000) == data[10000:]
    assert await _read(store, blob.sha256, 5, 5) == b""
    with pytest.raises(NotFound):
        await _read(store, hashlib.sha256(b"never stored").hexdigest())


async def test_blobs_lists_what_is_published_and_remove_takes_it_with_its_provenance(store: Store) -> None:
    """``channelgate cache`` lists and prunes through these, on every backend."""
    cached = [await store.put_bytes("cache", f"artifact {n}".encode()) for n in range(3)]
    upload = await store.put_bytes("uploads", b"an upload")
    for blob in cached:
        store.set_origin(blob.sha256, "pypi")
    listed = {b.sha256: b for b in store.blobs("cache")}
    assert set(listed) == {b.sha256 for b in cached}
    assert all(listed[b.sha256].size == b.size and listed[b.sha256].mtime > 0 for b in cached)
    assert [b.sha256 for b in store.blobs("uploads")] == [upload.sha256]
    store.remove("cache", cached[0].sha256)
    assert {b.sha256 for b in store.blobs("cache")} == {b.sha256 for b in cached[1:]}
    assert await store.stat("cache", cached[0].sha256) is None and store.find("cache", cached[0].sha256) is None
    assert store.origin(cached[0].sha256) is None and store.origin(cached[1].sha256) == "pypi"
    assert await store.stat("uploads", upload.sha256) == upload.size


async def test_adopt_publishes_a_verified_file_once_and_aliases_are_set_by_digest(store: Store) -> None:
    """What ``channelgate import`` publishes through, on every backend."""
    data = b"an imported artifact"
    sha = hashlib.sha256(data).hexdigest()
    staged = store.scratch_dir / "staged"
    staged.write_bytes(data)
    assert await store.adopt("cache", staged, sha) is True
    assert await store.stat("cache", sha) == len(data) and not staged.exists()
    staged.write_bytes(data)
    assert await store.adopt("cache", staged, sha) is False and staged.exists()  # held already: left alone
    digest = hashlib.sha256(b"md5:abc").hexdigest()
    assert store.set_alias(digest, sha) is True and store.set_alias(digest, sha) is False
    assert dict(store.refs()) == {digest: sha} and await store.ref("md5:abc") == sha


def test_a_malformed_digest_is_invalid_input(store: Store) -> None:
    with pytest.raises(InvalidInput):
        store.find("uploads", "../../etc/passwd")


def test_open_sweeps_only_the_scratch_dirs_of_processes_that_are_gone(store: Store) -> None:
    (store.scratch_dir / "half-written.part").write_bytes(b"x")
    dead = store.scratch_dir.parent / "r-gonehost-1-deadbeef"  # a crashed run's: its lock is free
    dead.mkdir()
    (dead / ".owner").write_bytes(b"{}")
    (dead / "cache-1.part").write_bytes(b"x")
    sibling = ScratchSpace(store.scratch_dir.parent)  # a live one (its lock held)
    sibling_dir = sibling.path
    (sibling_dir / "cache-2.part").write_bytes(b"x")
    store.open(clean=False)
    assert dead.exists()  # a --workers child sweeps nothing
    store.open(clean=True)
    assert not dead.exists()
    assert (sibling_dir / "cache-2.part").exists() and (store.scratch_dir / "half-written.part").exists()
    sibling.release()
    assert not sibling_dir.exists()
    assert store.area_dir("meta").is_dir()


def test_a_secret_is_made_once_and_kept(store: Store) -> None:
    made: list[bytes] = []

    def make() -> bytes:
        made.append(b"secret-%d" % len(made))
        return made[-1]

    first = store.secret("a-secret.key", make)
    assert first == b"secret-0" and store.secret("a-secret.key", make) == first and len(made) == 1
    assert store.secret("other.key", make) == b"secret-1"  # another name, another secret
    with pytest.raises(ValueError):
        store.secret("../escape", make)


async def test_a_secret_is_the_same_for_every_replica(store: Store, tmp_path: Path) -> None:
    """Replicas share the backend, not a disk: a sibling on another storage.path (S3) or on
    the shared volume (filesystem) reads the secret the first one made (the UI's session key:
    a cookie one replica signed must open on every other)."""
    sibling: Store = BlobStore(store.root)  # type: ignore[attr-defined]
    if type(store).__name__ == "S3Store":
        from proxy.store.s3 import S3Store

        sibling = S3Store(tmp_path / "another-replica", store.settings)  # type: ignore[attr-defined]
        sibling.open()
    first = store.secret("session.key", lambda: b"made-by-the-first")
    assert sibling.secret("session.key", lambda: b"made-by-the-sibling") == first == b"made-by-the-first"
    close = getattr(sibling, "close", None)
    if close is not None:
        await close()


async def test_an_imported_bundles_manifest_is_kept_once_and_seen_by_every_replica(store: Store, tmp_path: Path) -> None:
    """``channelgate import`` keeps each bundle's manifest through the Store: a sibling on
    another storage.path (S3) or on the shared volume (filesystem) lists it, and keeping it
    again (a second import, through any replica) answers False."""
    sibling: Store = BlobStore(store.root)  # type: ignore[attr-defined]
    if type(store).__name__ == "S3Store":
        from proxy.store.s3 import S3Store

        sibling = S3Store(tmp_path / "another-replica", store.settings)  # type: ignore[attr-defined]
        sibling.open()
    body = b'{"format": "channelgate-bundle"}\n'
    sha = hashlib.sha256(body).hexdigest()
    assert [p.read_bytes() for p in sibling.imported()] == []
    manifest = store.scratch_dir / "manifest.json"
    manifest.write_bytes(body)
    assert await store.keep_imported(sha, manifest) is True
    again = sibling.scratch_dir / "manifest.json"
    again.write_bytes(body)
    assert await sibling.keep_imported(sha, again) is False
    assert [p.read_bytes() for p in sibling.imported()] == [body]
    with pytest.raises(InvalidInput):
        await store.keep_imported("../../etc", again)
    close = getattr(sibling, "close", None)
    if close is not None:
        await close()


def test_probe_passes_on_a_writable_store_and_leaves_nothing(store: Store) -> None:
    before = set(store.scratch_dir.iterdir())
    store.probe()
    assert set(store.scratch_dir.iterdir()) == before


# --------------------------------------------------------------------------- Catalog
async def test_catalog_add_get_names_and_generation(make_catalog: MakeCatalog) -> None:
    catalog = await make_catalog()
    before = catalog.generation("c", "pypi")
    fields = {"requires_python": ">=3.9", "nested": {"k": [1, "two"]}}
    await catalog.add(_upload(index_fields=fields))
    assert catalog.generation("c", "pypi") != before
    stored = catalog.get("c", "pypi", "a-1.0.tar.gz")
    assert stored == _upload(index_fields=fields, uploaded_at=catalog.list("c", "pypi")[0].uploaded_at)
    assert stored is not None and stored.index_fields == fields
    assert catalog.names("c", "pypi") == frozenset({"a"})
    assert catalog.names("c", "conda") == frozenset() and catalog.names("other", "pypi") == frozenset()
    assert catalog.snapshot("c", "pypi").by_name["a"][0].path == "a-1.0.tar.gz"


async def test_catalog_reports_its_changes_and_takes_other_replicas(make_catalog: MakeCatalog) -> None:
    """``watch`` hears every change this process commits (coordination.py publishes them);
    ``changed`` is another replica's change arriving: the pair's generation moves, and it is
    not reported again (no echo between replicas)."""
    catalog = await make_catalog()
    seen: list[tuple[str, str]] = []
    catalog.watch(lambda channel, ecosystem: seen.append((channel, ecosystem)))
    await catalog.add(_upload())
    await catalog.set_labels("c", "pypi", "a-1.0.tar.gz", ["main", "beta"])
    await catalog.remove("c", "pypi", ["a-1.0.tar.gz"])
    assert seen == [("c", "pypi")] * 3
    conda, pypi = catalog.generation("c", "conda"), catalog.generation("c", "pypi")
    catalog.changed("c", "conda")
    assert catalog.generation("c", "conda") != conda and catalog.generation("c", "pypi") == pypi
    catalog.changed(None, None)  # anything may have changed (Redis came back)
    assert catalog.generation("c", "pypi") != pypi
    assert seen == [("c", "pypi")] * 3


async def test_catalog_refuses_a_taken_path_unless_replacing(make_catalog: MakeCatalog) -> None:
    catalog = await make_catalog()
    await catalog.add(_upload(md5="1" * 32))
    with pytest.raises(Conflict):
        await catalog.add(_upload(md5="2" * 32))
    got = catalog.get("c", "pypi", "a-1.0.tar.gz")
    assert got is not None and got.md5 == "1" * 32
    await catalog.add(_upload(md5="3" * 32), replace=True)
    got = catalog.get("c", "pypi", "a-1.0.tar.gz")
    assert got is not None and got.md5 == "3" * 32


async def test_catalog_labels_remove_and_add_many(make_catalog: MakeCatalog) -> None:
    catalog = await make_catalog()
    await catalog.add(_upload())
    await catalog.set_labels("c", "pypi", "a-1.0.tar.gz", ["main", "dev", "dev"])
    got = catalog.get("c", "pypi", "a-1.0.tar.gz")
    assert got is not None and got.labels == ("dev", "main")
    assert await catalog.remove("c", "pypi", ["a-1.0.tar.gz", "missing"]) == 1
    assert catalog.list("c", "pypi") == ()
    rows = [_upload(f"b-{i}.tar.gz", "b", uploaded_at=float(i + 1)) for i in range(3)]
    assert await catalog.add_many(rows) == 3
    assert await catalog.add_many(rows) == 0  # unchanged rows are left alone
    assert [u.path for u in catalog.list("c", "pypi")] == [r.path for r in rows]


async def test_catalog_sees_what_another_instance_committed(make_catalog: MakeCatalog) -> None:
    """--workers siblings (and replicas) share the backend: a change made by one is seen by
    every other, and its generation moves so derived indexes are rebuilt."""
    first, second = await make_catalog(), await make_catalog()
    seen = second.generation("c", "pypi")
    assert second.list("c", "pypi") == ()
    await first.add(_upload())
    await second.wait_for(lambda: second.generation("c", "pypi") != seen, SEEN_WITHIN)
    assert [u.path for u in second.list("c", "pypi")] == ["a-1.0.tar.gz"]


async def test_catalog_public_view_hides_private_packages_but_keeps_their_names(make_catalog: MakeCatalog) -> None:
    """A private package is left out of the channel's public view, in this instance and in
    another one; its name stays in ``names``, so the merge rule still hides upstream versions."""
    from proxy.store.catalog import public_view
    from proxy.store.packages import PackageInfo

    first, second = await make_catalog(), await make_catalog()
    await first.add(_upload())
    await first.add(_upload("b-1.0.tar.gz", "b"))
    before = first.generation("c", "pypi")
    await first.packages.put(PackageInfo("c", "pypi", "a", private=True, summary="hidden"))
    assert first.generation("c", "pypi") != before  # the public view's indexes are rebuilt
    await second.wait_for(lambda: second.packages.has_private("c") and second.generation("c", "pypi") != before,
                          SEEN_WITHIN)
    for catalog in (first, second):
        view = public_view("c")
        assert [u.name for u in catalog.list(view, "pypi")] == ["b"]
        assert catalog.get(view, "pypi", "a-1.0.tar.gz") is None
        assert catalog.names(view, "pypi") == frozenset({"a", "b"})
        assert [u.name for u in catalog.list("c", "pypi")] == ["a", "b"]  # the channel itself is whole
        assert catalog.packages.has_private("c") and not catalog.packages.has_private("other")
    await first.packages.set_locked("c", "stable", True)
    await second.wait_for(lambda: second.packages.locked_labels("c") == {"stable"}, SEEN_WITHIN)
    await first.packages.put(PackageInfo("c", "pypi", "a", private=False))
    await second.wait_for(lambda: not second.packages.has_private("c"), SEEN_WITHIN)
    assert [u.name for u in second.list(public_view("c"), "pypi")] == ["a", "b"]


async def test_catalog_lists_by_upload_time_then_path_bytes(make_catalog: MakeCatalog) -> None:
    """Both backends list a pair in one order (indexes are built from it): upload time, then the
    path's bytes (upper case before lower, whatever the database's locale)."""
    catalog = await make_catalog()
    rows = [_upload(path, path[0], uploaded_at=at) for path, at in
            (("b-1.tar.gz", 5.0), ("a-1.tar.gz", 5.0), ("B-1.tar.gz", 5.0), ("z-1.tar.gz", 1.0))]
    await catalog.add_many(rows)
    assert [u.path for u in catalog.list("c", "pypi")] == ["z-1.tar.gz", "B-1.tar.gz", "a-1.tar.gz", "b-1.tar.gz"]
