"""conda's side of an upload: validate the package, publish it, record it, and start the
rebuild of the channel's merged indexes. ``POST /api/repo/<channel>`` (handlers.py) and
anaconda-client's stage/post/commit (proxy/api/) both come through ``store_conda_upload``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from ...context import Services
from ...errors import BadRequest, Locked
from ...store.blobs import TempBlob
from ...store.catalog import Upload
from ...store.packages import PackageInfo
from ...uploads import publish
from .index import DEFAULT_LABEL, LABEL_RE, CondaIndexes, normalize
from .package import CondaPackage, inspect_package


def parse_labels(values: Iterable[str]) -> tuple[str, ...]:
    """Upload labels (``label=`` fields, repeated or comma-separated); default ``main``."""
    labels: list[str] = []
    for value in values:
        for label in value.split(","):
            label = label.strip()
            if not label:
                continue
            if not LABEL_RE.match(label) or len(label) > 100:
                raise BadRequest(f"invalid label {label[:100]!r}: letters, digits, '.', '_' and '-' only")
            if label not in labels:
                labels.append(label)
    return tuple(labels) or (DEFAULT_LABEL,)


async def store_conda_upload(
    services: Services,
    channel: str,
    uploader: str,
    blob: TempBlob,
    filename: str,
    digests: dict[str, str],
    labels: tuple[str, ...],
    *,
    replace: bool = False,
    check: Callable[[CondaPackage], None] | None = None,
) -> tuple[CondaPackage, Upload]:
    """Validate an uploaded conda package, publish it and record it in the catalog.

    The one path every conda upload takes (``POST /api/repo/<channel>`` and
    anaconda-client's stage/post/commit). Raises BadRequest for an invalid package and
    Conflict when the file exists (unless ``replace``); ``check`` may refuse the package
    before anything is published. On any error the caller discards the temp blob, so
    nothing is stored.
    """
    pkg = await services.checks.run(
        inspect_package, blob.path, filename, sha256=digests["sha256"], md5=digests["md5"], size=blob.size,
        limits=services.settings.limits,
    )
    subdir, stem = pkg.subdir, pkg.filename.lower().removesuffix(".conda").removesuffix(".tar.bz2")

    def same_release(upload: Upload) -> bool:
        # case-insensitive name-version-build per subdir, whatever the extension
        up_subdir, _, up_file = upload.path.partition("/")
        return up_subdir == subdir and up_file.lower().removesuffix(".conda").removesuffix(".tar.bz2") == stem

    if check is not None:
        check(pkg)
    locked = services.catalog.packages.locked_labels(channel).intersection(labels)
    if locked:
        raise Locked(f"label {sorted(locked)[0]!r} of {channel} is locked (anaconda label --unlock)")
    upload = await publish(
        services,
        blob,
        channel=channel,
        ecosystem="conda",
        path=f"{pkg.subdir}/{pkg.filename}",
        name=normalize(pkg.name),
        version=pkg.version,
        filename=pkg.filename,
        index_fields=pkg.record,
        uploader=uploader,
        labels=labels,
        replace=replace,
        same_release=same_release,
    )
    uploads_changed(services, channel, pkg.subdir)
    await _describe_package(services, channel, pkg)
    return pkg, upload


async def _describe_package(services: Services, channel: str, pkg: CondaPackage) -> None:
    """Fill the package's empty summary, description, home and license from the file's
    info/about.json, as anaconda-client does from its side for ``anaconda upload`` (so a curl
    or web UI upload describes the package as well); settings made through the API stay."""
    if not pkg.about:
        return
    name = normalize(pkg.name)
    info = services.catalog.packages.get(channel, "conda", name) or PackageInfo(channel, "conda", name)
    fresh = {key: value for key, value in pkg.about.items() if not getattr(info, key)}
    if fresh:
        await services.catalog.packages.put(info.with_metadata(fresh))


def uploads_changed(services: Services, channel: str, *subdirs: str) -> None:
    """Start rebuilding the channel's merged indexes now (after any catalog change), so an
    upload is in them by the time a client asks (and requests wait less)."""
    indexes = getattr(services.ecosystems.get("conda"), "indexes", None)
    if isinstance(indexes, CondaIndexes):
        indexes.changed(channel, subdirs)


def upload_summary(pkg: CondaPackage, upload: Upload) -> dict[str, object]:
    return {
        "ok": True,
        "name": pkg.name,
        "version": pkg.version,
        "build": pkg.build,
        "subdir": pkg.subdir,
        "filename": pkg.filename,
        "basename": upload.path,
        "labels": list(upload.labels),
        "sha256": upload.sha256,
        "md5": upload.md5,
        "size": upload.size,
    }
