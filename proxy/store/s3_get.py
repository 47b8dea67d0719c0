"""GetObject on the serving path: a warm artifact streamed from the bucket (issue 15: the S3
row; DESIGN "Scale-out on existing engines").

The S3 store's ``stream`` asks botocore only for a presigned GetObject URL (SigV4 query
authentication, computed locally, no request to the service), then reads the object with
this module's own aiohttp session, which hands over the body as the socket delivers it:
large reads (READ_BUFSIZE) and no per-chunk work from botocore's response machinery
(its StreamingBody re-slices every read and reads ahead only 64 KiB). A Range goes to the
service as the GET's ``Range`` header (RFC 9110 §14.2), so only the span asked is read.

No hashing here: a blob is verified before it is published (``TempBlob.finish``, then the
one PUT or CompleteMultipartUpload that makes it visible), and its key is its sha256.
``BlobStreamResponse`` checks the byte count and cuts the answer on a short body.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator

import aiohttp

from ..errors import NotFound, StorageError

log = logging.getLogger(__name__)

READ_BUFSIZE = 1024 * 1024  # aiohttp reads ahead up to twice this per download before pausing
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)  # botocore's defaults
URL_EXPIRES = 900  # seconds: the clock skew SigV4 tolerates; the URL is used at once


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``, less
    ``NO_PROXY``), as botocore's client would use it; the session itself trusts no
    environment (``trust_env`` would also send ~/.netrc credentials, which S3 refuses beside
    a presigned URL's)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme)


class ObjectReader:
    """One aiohttp session per event loop for GetObject over presigned URLs (made on first
    use, closed by ``close``). ``cafile``: botocore's ``ca_bundle`` setting, if any."""

    def __init__(self, cafile: str | None = None) -> None:
        self.cafile = cafile
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            tls: ssl.SSLContext | bool = True
            if self.cafile:  # a private CA (MinIO, Ceph), as botocore's client is told
                tls = ssl.create_default_context(cafile=self.cafile)
            self._session = aiohttp.ClientSession(
                # limit=0: one connection per download in flight (botocore's pool of 10 queued the
                # 11th download behind the others until one ended)
                connector=aiohttp.TCPConnector(limit=0, ssl=tls), timeout=TIMEOUT, read_bufsize=READ_BUFSIZE,
                auto_decompress=False, trust_env=False, skip_auto_headers=("Accept-Encoding",))
            self._loop = loop
        return self._session

    async def stream(self, url: str, start: int, end: int | None, what: str) -> AsyncGenerator[bytes, None]:
        """The bytes ``[start, end)`` of the object at the presigned ``url`` (to its end when
        ``end`` is None); NotFound when there is no such object, nothing when ``start`` is at
        or past its end (416), StorageError when the service fails or the body breaks off."""
        headers = {}
        if start or end is not None:  # RFC 9110 byte ranges: the last position is inclusive
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            async with self._open().get(url, headers=headers, proxy=env_proxy(url)) as resp:
                if resp.status == 404:
                    raise NotFound(f"no {what}")
                if resp.status == 416:  # start at or past the end: nothing to send
                    return
                if resp.status not in (200, 206) or (headers and resp.status == 200 and start):
                    detail = (await resp.content.read(2048)).decode(errors="replace")
                    log.error("GetObject of %s answered %d: %s", what, resp.status, detail)
                    raise StorageError("the object store failed")
                while chunk := await resp.content.readany():
                    yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            log.error("GetObject of %s failed: %r", what, exc)
            raise StorageError("the object store failed") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = self._loop = None


__all__ = ["READ_BUFSIZE", "URL_EXPIRES", "ObjectReader"]
