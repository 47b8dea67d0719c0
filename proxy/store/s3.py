"""S3-compatible Store backend (DESIGN "Scale-out on existing engines"; issue 13 part 1).

Blobs, aliases and provenance live in one bucket, shared by every replica::

    <prefix>uploads/sha256/ab/<hex>    hosted uploads
    <prefix>cache/sha256/ab/<hex>      cached upstream artifacts
    <prefix>cache/refs/<key digest>    alias -> sha256
    <prefix>cache/origin/<sha256>      the upstream a cached artifact came from
    <prefix>airgap/imported/<sha256>.json  manifests of imported bundles (shared: prune keeps their files)

Writes go to a local temp file first (``storage.path``/tmp) while the digests are computed,
are verified against what the source declared, and only then uploaded: a single PUT, or a
multipart upload (CreateMultipartUpload, UploadPart..., CompleteMultipartUpload) above
``multipart_threshold``. Both make the object visible only when it is whole (S3's PUT and
CompleteMultipartUpload are atomic), so a crash mid-upload leaves nothing servable; a failed
multipart upload is aborted. Reads stream with HTTP ranges (GetObject ``Range``).

Reads on the request path never block the loop: ``stat``, ``ref`` and ``presigned_url`` use
aiobotocore's client; ``stream`` reads a presigned GetObject URL (with ``Range``) with its
own aiohttp session (s3_get.py: large reads, no botocore work per chunk); ``local`` answers only
this replica's own copies (the blobs it wrote), served by sendfile; a replica that never
saw a blob streams it straight from the bucket (blob_response.py) and keeps no copy.
``storage.s3.redirect`` answers downloads with a presigned GetObject URL instead.

``find``/``find_ref`` (the commands': export, cache admin) download a missing blob to this
replica's copies with botocore's synchronous client, which aiobotocore depends on; so do
``set_ref``/``set_origin``, which the request path calls off the loop.

aiobotocore is the client: it runs on aiohttp (already the server's HTTP stack), and speaks
every S3-compatible service (MinIO, Ceph, R2, moto).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, NotFound, StorageError
from ..storage_settings import S3Settings
from .s3_get import URL_EXPIRES, ObjectReader
from .blobs import CHUNK, IMPORTED, SECRET_NAME, Area, BlobStore, Listed, TempBlob, atomic_write

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

READY_TIMEOUT = 2.5  # seconds for HeadBucket; health.py gives each check 3
PART_SIZE = 8 * 1024 * 1024  # S3 parts are >= 5 MiB except the last (AWS "Multipart upload limits")


def _missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _precondition_failed(exc: Exception) -> bool:
    """A conditional write lost: the key exists (412), or another write of it is under way (409)."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _load_models(session: Any) -> None:
    """Load botocore's S3 service model and endpoint rules into the session's cache, so that
    ``create_client`` (a coroutine that reads them synchronously) barely blocks the loop."""
    loader = session.get_component("data_loader")
    for kind in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("s3", kind)


class S3Store(BlobStore):
    """The S3 backend of the Store protocol (protocols.py); local files only under ``root``."""

    def __init__(self, root: Path, settings: S3Settings, *, part_size: int = PART_SIZE) -> None:
        super().__init__(root)
        self.settings = settings
        self.part_size = part_size
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._sync_client: Any = None
        self._client_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._reader = ObjectReader()  # GetObject on the serving path (``stream``)

    # -- clients
    def _client_args(self) -> dict[str, Any]:
        s = self.settings
        args: dict[str, Any] = {"region_name": s.region, "endpoint_url": s.endpoint_url}
        if s.access_key_id is not None:
            args.update(aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key)
        return args

    async def _aio(self) -> Any:
        """The aiobotocore client of the running loop (made once, on first use: concurrent
        first requests share one)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is loop:
            return self._client
        if self._client_lock is None or self._client_lock[0] is not loop:
            self._client_lock = (loop, asyncio.Lock())
        async with self._client_lock[1]:
            if self._client is None or self._client_loop is not loop:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                session = get_session()
                self._reader.cafile = session.get_config_variable("ca_bundle")
                await asyncio.to_thread(_load_models, session)  # ~0.5 s of JSON, not on the loop
                self._stack = contextlib.AsyncExitStack()
                # SigV4 everywhere, presigned URLs too (botocore presigns SigV2 for some regions otherwise)
                config = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                                   signature_version="s3v4")
                self._client = await self._stack.enter_async_context(
                    session.create_client("s3", config=config, **self._client_args()))
                self._client_loop = loop
        return self._client

    def _sync(self) -> Any:
        if self._sync_client is None:
            import botocore.session
            from botocore.config import Config

            config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3})
            self._sync_client = botocore.session.get_session().create_client("s3", config=config,
                                                                              **self._client_args())
        return self._sync_client

    async def close(self) -> None:
        await self._reader.close()
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = self._client_loop = None

    # -- keys
    def key(self, area: Area, sha256: str) -> str:
        self.blob_path(area, sha256)  # validates the digest (InvalidInput)
        return f"{self.settings.prefix}{area}/sha256/{sha256[:2]}/{sha256}"

    def _ref_key(self, key: str) -> str:
        return f"{self.settings.prefix}cache/refs/{hashlib.sha256(key.encode()).hexdigest()}"

    def _origin_key(self, sha256: str) -> str:
        return f"{self.settings.prefix}cache/origin/{sha256}"

    # -- writes
    async def publish(self, tmp: TempBlob) -> Path:
        """Upload a verified temp blob (multipart when large), then keep it as this replica's copy."""
        digests = await tmp.finish()
        key = self.key(tmp.area, digests["sha256"])
        try:
            if tmp.size > self.part_size:
                await self._multipart(tmp.path, key)
            else:
                data = await asyncio.to_thread(tmp.path.read_bytes)
                await (await self._aio()).put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        except Exception as exc:
            log.error("S3 upload of %s failed: %s", key, exc)
            raise StorageError("the object store refused the write") from exc
        final = self.blob_path(tmp.area, digests["sha256"])
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.path, final)
        return final

    async def _multipart(self, path: Path, key: str) -> None:
        client, bucket = await self._aio(), self.settings.bucket
        upload_id = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with open(path, "rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, self.part_size):
                    number = len(parts) + 1
                    part = await client.upload_part(Bucket=bucket, Key=key, PartNumber=number,
                                                    UploadId=upload_id, Body=chunk)
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    # -- reads
    async def stat(self, area: Area, sha256: str) -> int | None:
        try:
            head = await (await self._aio()).head_object(Bucket=self.settings.bucket, Key=self.key(area, sha256))
        except Exception as exc:
            if _missing(exc):
                return None
            raise StorageError("the object store failed") from exc
        return int(head["ContentLength"])

    async def stream(self, area: Area, sha256: str, start: int = 0, end: int | None = None,
                     chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            if await self.stat(area, sha256) is None:
                raise NotFound(f"no blob {sha256} in {area}")
            return
        # a presigned URL read by our own aiohttp session (s3_get.py), not botocore's GetObject
        client = await self._aio()
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": self.key(area, sha256)},
            ExpiresIn=URL_EXPIRES)
        async with contextlib.aclosing(self._reader.stream(url, start, end, f"blob {sha256} in {area}")) as chunks:
            async for chunk in chunks:
                yield chunk

    def find(self, area: Area, sha256: str) -> Path | None:
        """This replica's copy of a published blob, downloaded first if only the bucket has it."""
        local = self.blob_path(area, sha256)
        if local.is_file():
            return local
        response = self._get_object(self.key(area, sha256))
        if response is None:
            return None
        part = self.scratch_dir / f"get-{uuid.uuid4().hex}.part"
        try:
            with open(part, "wb") as fh:
                for chunk in response["Body"].iter_chunks(CHUNK):
                    fh.write(chunk)
            local.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, local)
        finally:
            part.unlink(missing_ok=True)
        return local

    async def presigned_url(self, area: Area, sha256: str) -> str | None:
        """With ``storage.s3.redirect``: a GetObject URL signed for ``redirect_expires`` seconds
        (SigV4 query authentication; computed locally, no request to the service)."""
        if not self.settings.redirect:
            return None
        client = await self._aio()
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": self.key(area, sha256)},
            ExpiresIn=self.settings.redirect_expires)
        return url

    async def _aget_object(self, key: str) -> Any:
        """The object's GET response (async client), or None when the bucket has no such key."""
        try:
            return await (await self._aio()).get_object(Bucket=self.settings.bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                return None
            raise StorageError("the object store failed") from exc

    async def ready(self) -> None:
        """HeadBucket within READY_TIMEOUT: the service answers, the bucket exists and these
        credentials may use it; else a StorageError naming the bucket and what is wrong."""
        from botocore.exceptions import ClientError

        where = f"bucket {self.settings.bucket!r} at {self.settings.endpoint_url or 'AWS S3'}"
        try:
            await asyncio.wait_for(self._head_bucket(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            raise StorageError(f"{where}: no answer within {READY_TIMEOUT:g}s") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            problem = {"404": "does not exist", "NoSuchBucket": "does not exist",
                       "403": "refuses these credentials", "AccessDenied": "refuses these credentials"}
            raise StorageError(f"{where}: {problem.get(code, f'error {code}')}") from None
        except Exception as exc:  # the service cannot be reached (connection refused, DNS, TLS)
            raise StorageError(f"{where}: unreachable ({type(exc).__name__})") from None

    async def _head_bucket(self) -> None:
        await (await self._aio()).head_bucket(Bucket=self.settings.bucket)

    # -- aliases and provenance: small objects in the bucket
    def _get_object(self, key: str) -> Any:
        """The object's GET response, or None when the bucket has no such key."""
        try:
            return self._sync().get_object(Bucket=self.settings.bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                return None
            raise StorageError("the object store failed") from exc

    def _get_text(self, key: str) -> str | None:
        response = self._get_object(key)
        if response is None:
            return None
        try:
            return bytes(response["Body"].read(4096)).decode().strip() or None
        except UnicodeDecodeError:
            return None

    def _put_text(self, key: str, text: str) -> None:
        self._sync().put_object(Bucket=self.settings.bucket, Key=key, Body=text.encode())

    def find_ref(self, key: str) -> Path | None:
        sha256 = self._local_ref(key) or self._get_text(self._ref_key(key))
        return self.find("cache", sha256) if sha256 else None

    async def ref(self, key: str) -> str | None:
        """The alias from this replica's copy, else from the bucket (then kept: an alias
        never changes, it names content)."""
        sha256 = self._local_ref(key)
        if sha256 is not None:
            return sha256
        response = await self._aget_object(self._ref_key(key))
        if response is None:
            return None
        async with response["Body"] as body:
            data = await body.read(4096)
        try:
            sha256 = bytes(data).decode().strip() or None
        except UnicodeDecodeError:
            return None
        if sha256 is not None:
            await asyncio.to_thread(atomic_write, self._ref_path(key), sha256.encode(), self.scratch_dir)
        return sha256

    def set_ref(self, key: str, sha256: str) -> None:
        self._put_text(self._ref_key(key), sha256)
        super().set_ref(key, sha256)  # this replica's copy

    def set_origin(self, sha256: str, upstream: str) -> None:
        self._put_text(self._origin_key(sha256), upstream)

    def origin(self, sha256: str) -> str | None:
        return self._get_text(self._origin_key(sha256))

    def secret(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The small secret ``name``, kept in the bucket (``<prefix>secrets/<name>``) so every
        replica reads the same one whatever its ``storage.path``: written once with a
        conditional PUT (``If-None-Match: *``), and a replica that loses that race reads the
        winner's."""
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(f"not a secret's name: {name!r}")
        key = f"{self.settings.prefix}secrets/{name}"
        try:
            return self._shared_secret(key, make)
        except StorageError as exc:
            # the bucket is down at start: serve with this replica's own secret (readiness says
            # 503 for the bucket meanwhile, so the balancer sends nobody here), shared once restarted
            log.warning("secret %s kept on this replica only: %s", name, exc.__cause__ or exc)
            return super().secret(name, make)

    def _shared_secret(self, key: str, make: Callable[[], bytes]) -> bytes:
        kept = self._get_object(key)
        if kept is None:
            try:
                self._sync().put_object(Bucket=self.settings.bucket, Key=key, Body=make(), IfNoneMatch="*")
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise StorageError("the object store failed") from exc
            kept = self._get_object(key)
            if kept is None:
                raise StorageError(f"the object store lost {key} just written")
        return bytes(kept["Body"].read(4096)).strip()

    # -- listing and removal (``channelgate cache``): the bucket's, not this replica's copies
    def blobs(self, area: Area) -> Iterator[Listed]:
        prefix = f"{self.settings.prefix}{area}/sha256/"
        try:
            pages = self._sync().get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    sha256 = str(obj["Key"])[len(prefix) + 3:]
                    if len(sha256) == 64:
                        yield Listed(sha256, int(obj["Size"]), obj["LastModified"].timestamp())
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError("the object store failed to list blobs") from exc

    async def adopt(self, area: Area, path: Path, sha256: str) -> bool:
        if await self.stat(area, sha256) is not None:
            return False
        key = self.key(area, sha256)
        try:
            if path.stat().st_size > self.part_size:
                await self._multipart(path, key)
            else:
                data = await asyncio.to_thread(path.read_bytes)
                await (await self._aio()).put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        except Exception as exc:
            log.error("S3 upload of %s failed: %s", key, exc)
            raise StorageError("the object store refused the write") from exc
        await super().adopt(area, path, sha256)  # this replica's copy
        return True

    def set_alias(self, digest: str, sha256: str) -> bool:
        key = f"{self.settings.prefix}cache/refs/{digest}"
        if self._get_text(key) == sha256:
            return False
        self._put_text(key, sha256)
        super().set_alias(digest, sha256)
        return True

    def refs(self) -> Iterator[tuple[str, str]]:
        prefix = f"{self.settings.prefix}cache/refs/"
        try:
            pages = self._sync().get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix)
            keys = (str(obj["Key"]) for page in pages for obj in page.get("Contents", ()))
            for key in keys:
                sha256 = self._get_text(key)
                if len(key) - len(prefix) == 64 and sha256 is not None and len(sha256) == 64:
                    yield key[len(prefix):], sha256
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError("the object store failed to list aliases") from exc

    async def keep_imported(self, sha256: str, manifest: Path) -> bool:
        """In the bucket, so a bundle imported through any replica is known to all (a second
        import is a no-op there, and no replica's prune removes what it brought)."""
        self.blob_path("cache", sha256)  # validates the digest
        key = f"{self.settings.prefix}{IMPORTED}/{sha256}.json"
        client = await self._aio()
        try:
            await client.head_object(Bucket=self.settings.bucket, Key=key)
            return False
        except Exception as exc:
            if not _missing(exc):
                raise StorageError("the object store failed") from exc
        try:
            if manifest.stat().st_size > self.part_size:
                await self._multipart(manifest, key)
            else:
                data = await asyncio.to_thread(manifest.read_bytes)
                await client.put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        except Exception as exc:
            raise StorageError("the object store refused the write") from exc
        return True

    def imported(self) -> Iterator[Path]:
        """The bucket's manifests, each fetched to scratch space in turn, then any this
        replica kept locally before they were shared (stores imported into by older versions)."""
        prefix = f"{self.settings.prefix}{IMPORTED}/"
        try:
            pages = self._sync().get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket, Prefix=prefix)
            keys = [str(obj["Key"]) for page in pages for obj in page.get("Contents", ())]
        except Exception as exc:
            raise StorageError("the object store failed to list imported bundles") from exc
        for key in keys:
            response = self._get_object(key)
            if response is None:
                continue
            part = self.scratch_dir / f"imported-{uuid.uuid4().hex}.json"
            try:
                with open(part, "wb") as fh:
                    for chunk in response["Body"].iter_chunks(CHUNK):
                        fh.write(chunk)
                yield part
            finally:
                part.unlink(missing_ok=True)
        yield from super().imported()

    def remove(self, area: Area, sha256: str) -> None:
        client, bucket = self._sync(), self.settings.bucket
        try:
            client.delete_object(Bucket=bucket, Key=self.key(area, sha256))
            if area == "cache":
                client.delete_object(Bucket=bucket, Key=self._origin_key(sha256))
        except Exception as exc:
            raise StorageError("the object store refused the removal") from exc
        super().remove(area, sha256)  # this replica's copy and stamp


def open_store(settings: "Settings", *, clean: bool = True) -> BlobStore:
    """The Store that ``storage.backend`` names, opened (``clean`` as in ``Store.open``)."""
    store: BlobStore
    if settings.storage_backend == "s3" and settings.s3 is not None:
        try:
            import aiobotocore  # noqa: F401
        except ImportError as exc:
            raise ConfigError(["storage.backend: s3 needs the s3 extra (pip install 'channelgate[s3]')"]) from exc
        store = S3Store(settings.storage_path, settings.s3)
    else:
        store = BlobStore(settings.storage_path)
    store.open(clean=clean)
    return store


__all__ = ["PART_SIZE", "S3Store", "open_store"]
