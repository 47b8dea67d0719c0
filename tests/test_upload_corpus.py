"""A malformed-upload corpus, generated here, for every ecosystem and both upload paths
(issue 8; DESIGN "Hostile input and faults").

Each file goes to a real ``channelgate serve`` process: PyPI wheels and sdists and R
packages through the form POST ``/api/repo/<channel>`` (anaconda-client's API takes conda
files only: its stage step refuses other basenames), conda packages through the form POST
and through anaconda-client's stage + storage POST under ``/api``. Each must be refused with
a 4xx whose message names the problem, leave the store, the temp area and every index as
they were, and keep the server's resident memory bounded (VmHWM from /proc, the peak).
"""
from __future__ import annotations

import bz2
import json
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard

from fixtures import conda_pkgs as cfx
from fixtures import hostile as h
from fixtures.wheels import make_wheel, twine_fields
from harness import Channelgate, Policy, http, stored_blobs

MiB = 1024 * 1024
BOMB_MIB = 512  # each bomb expands to this much; the server must refuse it long before
RSS_BOUND = 160 * MiB  # peak RSS over the whole corpus may exceed the warmed-up RSS by this much


@dataclass
class Gate:
    server: Channelgate
    writer: str
    reader: str
    baseline_rss: int

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = http("GET", f"{self.server.url}/t/{self.reader}/internal{path}")
        return status, body


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def post_form(gate: Gate, filename: str, data: bytes, fields: dict[str, str]) -> requests.Response:
    return requests.post(
        f"{gate.server.url}/api/repo/internal", data=fields,
        files={"content": (filename, data, "application/octet-stream")},
        headers={"Authorization": f"token {gate.writer}"}, timeout=120,
    )


def post_anaconda(gate: Gate, subdir: str, filename: str, data: bytes) -> tuple[int, str]:
    """anaconda-client's upload: stage (where to send it), then the S3-style storage POST."""
    name, version, _build = filename.removesuffix(".conda").removesuffix(".tar.bz2").rsplit("-", 2)
    auth = {"Authorization": f"token {gate.writer}"}
    staged = requests.post(f"{gate.server.url}/api/stage/internal/{name}/{version}/{subdir}/{filename}",
                           json={}, headers=auth, timeout=60)
    if staged.status_code != 200:
        return staged.status_code, staged.text
    stage = staged.json()
    posted = requests.post(stage["post_url"], data=stage["form_data"],
                           files={"file": (filename, data, "application/octet-stream")}, timeout=120)
    message = re.search(r"<Message>(.*)</Message>", posted.text, re.S)
    return posted.status_code, message.group(1) if message else posted.text


INDEXES = ("/simple/", "/noarch/repodata.json", "/linux-64/repodata.json", "/src/contrib/PACKAGES",
           "/bin/windows/contrib/4.3/PACKAGES", "/bin/macosx/big-sur-arm64/contrib/4.3/PACKAGES")


def snapshot(gate: Gate) -> dict[str, Any]:
    state: dict[str, Any] = {"uploads": stored_blobs(gate.server.storage, "uploads")}
    for path in INDEXES:
        state[path] = gate.get(path)
    state["tmp"] = sorted(p.name for p in (gate.server.storage / "tmp").rglob("uploads-*"))
    return state


# --------------------------------------------------------------------------- generated files

ZSTD = zstandard.ZstdCompressor(level=3)
CONDA_META = b'{"conda_pkg_format_version": 2}'
PYPI = {":action": "file_upload", "protocol_version": "1", "metadata_version": "2.1"}


def pypi_fields(name: str, version: str, filetype: str) -> dict[str, str]:
    return {**PYPI, "name": name, "version": version, "filetype": filetype}


def wheel(members: list[h.Member], *, name: str = "evil", version: str = "1.0",
          symlinks: tuple[tuple[str, str], ...] = ()) -> bytes:
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode()
    files = [(f"{name}/__init__.py", b""), (f"{info}/METADATA", meta),
             (f"{info}/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"), *members]
    return h.zip_bytes(files, symlinks=symlinks)


def sdist_files(name: str = "evil", version: str = "1.0") -> list[h.Member]:
    top = f"{name}-{version}"
    return [(f"{top}/PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode()),
            (f"{top}/setup.py", b"")]


R_DESC = "Package: abc\nVersion: 1.0\nTitle: t\nDescription: d.\nLicense: MIT\n"
R_WIN = R_DESC + "Built: R 4.3.1; x86_64-w64-mingw32; 2024-01-01 00:00:00 UTC; windows\n"
R_MAC = R_DESC + "Built: R 4.3.1; aarch64-apple-darwin20; 2024-01-01 00:00:00 UTC; unix\n"


def r_files(desc: str) -> list[h.Member]:
    return [("abc/DESCRIPTION", desc.encode()), ("abc/R/abc", b"")]


def conda_parts(name: str = "evil") -> tuple[cfx.PkgSpec, list[tuple[str, bytes, int]], list[tuple[str, bytes, int]]]:
    spec = cfx.PkgSpec(name, "1.0", "0")
    payload = cfx.payload_files(spec)
    return spec, cfx.info_files(spec, payload), payload


def conda_file(extra: tuple[tuple[str, bytes, int], ...] = (), links: tuple[tuple[str, str, bytes], ...] = (),
               fmt: str = "conda", name: str = "evil", metadata: bytes = CONDA_META) -> tuple[str, bytes]:
    """A conda package in memory: ``.conda`` (stored zip of zstd tars) or ``.tar.bz2``."""
    spec, info, payload = conda_parts(name)
    pkg_tar = cfx.make_tar([*payload, *extra], links=links)
    if fmt == "tar.bz2":
        return spec.filename("tar.bz2"), bz2.compress(cfx.make_tar([*info, *payload, *extra], links=links))
    return spec.filename("conda"), conda_zip(spec.stem, cfx.make_tar(info), ZSTD.compress(pkg_tar), metadata)


def conda_zip(stem: str, info_tar: bytes, pkg_zst: bytes, metadata: bytes = CONDA_META, *,
              metadata_bomb: int = 0) -> bytes:
    members = [(f"pkg-{stem}.tar.zst", pkg_zst), (f"info-{stem}.tar.zst", ZSTD.compress(info_tar))]
    if metadata_bomb:
        return h.zip_bomb(members, "metadata.json", metadata_bomb, stored=True)
    return h.zip_bytes([("metadata.json", metadata), *members], stored=True)


# --------------------------------------------------------------------------- the corpus

Case = tuple[str, Callable[[], tuple[str, bytes, dict[str, str]]], int, str]


def _pypi_cases() -> list[Case]:
    wheel_fields = pypi_fields("evil", "1.0", "bdist_wheel")
    sdist_fields = pypi_fields("evil", "1.0", "sdist")
    whl, tgz, szip = "evil-1.0-py3-none-any.whl", "evil-1.0.tar.gz", "evil-1.0.zip"
    top = "evil-1.0"
    return [
        ("wheel-dotdot", lambda: (whl, wheel([("../evil.pth", b"")]), wheel_fields), 400, "escapes its folder ('..')"),
        ("wheel-absolute", lambda: (whl, wheel([("/etc/evil", b"")]), wheel_fields), 400, "absolute path"),
        ("wheel-symlink-out", lambda: (whl, wheel([], symlinks=(("evil/cfg", "../../../etc/passwd"),)), wheel_fields),
         400, "links outside its folder"),
        ("wheel-zip-bomb", lambda: (whl, h.zip_bomb([(m, d) for m, d in _wheel_members()], "evil/zeros.bin", BOMB_MIB),
                                    wheel_fields), 400, "server.limits.archive_"),
        ("wheel-truncated", lambda: (whl, h.truncated(wheel([("evil/data.bin", bytes(range(256)) * 64)])), wheel_fields),
         400, "truncated"),
        ("wheel-wrong-metadata", lambda: (whl, _wheel_named("other"), wheel_fields), 400, "does not match"),
        ("sdist-dotdot", lambda: (tgz, h.gzip_tar([*sdist_files(), (f"{top}/../../evil", b"")]), sdist_fields),
         400, "escapes its folder ('..')"),
        ("sdist-absolute", lambda: (tgz, h.gzip_tar([*sdist_files(), ("/tmp/evil", b"")]), sdist_fields),
         400, "absolute path"),
        ("sdist-symlink-out", lambda: (tgz, h.gzip_tar(sdist_files(), [(f"{top}/link", "../../etc", tarfile.SYMTYPE)]),
                                       sdist_fields), 400, "links outside its folder"),
        ("sdist-hardlink-out", lambda: (tgz, h.gzip_tar(sdist_files(), [(f"{top}/hard", "etc/passwd", tarfile.LNKTYPE)]),
                                        sdist_fields), 400, "links outside its folder"),
        ("sdist-gzip-bomb", lambda: (tgz, h.gzip_bomb(sdist_files(), f"{top}/zeros", BOMB_MIB), sdist_fields),
         400, "server.limits.archive_"),
        ("sdist-zip-bomb", lambda: (szip, h.zip_bomb(sdist_files(), f"{top}/zeros", BOMB_MIB), sdist_fields),
         400, "server.limits.archive_"),
        ("sdist-truncated", lambda: (tgz, h.truncated(h.gzip_tar([*sdist_files(), (f"{top}/x", bytes(range(256)) * 256)])),
                                     sdist_fields), 400, "truncated"),
        ("pypi-confusable-name", lambda: ("acme_\u0261adget-1.0-py3-none-any.whl", wheel([]),
                                          pypi_fields("acme-\u0261adget", "1.0", "bdist_wheel")), 400, "only ASCII"),
        ("pypi-bidi-tag", lambda: ("evil-1.0-py3-none-an\u202ey.whl", wheel([]), wheel_fields), 400, "only ASCII"),
    ]


def _wheel_members() -> list[h.Member]:
    import io
    import zipfile
    with zipfile.ZipFile(io.BytesIO(wheel([]))) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _wheel_named(metadata_name: str) -> bytes:
    meta = f"Metadata-Version: 2.1\nName: {metadata_name}\nVersion: 1.0\n\n".encode()
    return h.zip_bytes([(m, meta if m.endswith("METADATA") else d) for m, d in _wheel_members()])


def _cran_cases() -> list[Case]:
    src = {"filetype": "cran_source_package"}
    binary = {"filetype": "cran_binary_package"}
    tgz, win, mac = "abc_1.0.tar.gz", "abc_1.0.zip", "abc_1.0.tgz"
    return [
        ("r-dotdot", lambda: (tgz, h.gzip_tar([*r_files(R_DESC), ("abc/../../evil", b"")]), src), 400,
         "escapes its folder ('..')"),
        ("r-absolute", lambda: (tgz, h.gzip_tar([*r_files(R_DESC), ("/etc/evil", b"")]), src), 400, "absolute path"),
        ("r-symlink-out", lambda: (tgz, h.gzip_tar(r_files(R_DESC), [("abc/l", "../../../etc", tarfile.SYMTYPE)]), src),
         400, "links outside its folder"),
        ("r-hardlink-out", lambda: (tgz, h.gzip_tar(r_files(R_DESC), [("abc/l", "etc/passwd", tarfile.LNKTYPE)]), src),
         400, "links outside its folder"),
        ("r-source-gzip-bomb", lambda: (tgz, h.gzip_bomb(r_files(R_DESC), "abc/zeros", BOMB_MIB), src), 400,
         "server.limits.archive_"),
        ("r-mac-gzip-bomb", lambda: (mac, h.gzip_bomb(r_files(R_MAC), "abc/zeros", BOMB_MIB), binary), 400,
         "server.limits.archive_"),
        ("r-windows-zip-bomb", lambda: (win, h.zip_bomb(r_files(R_WIN), "abc/zeros", BOMB_MIB), binary), 400,
         "server.limits.archive_"),
        ("r-windows-symlink-out", lambda: (win, h.zip_bytes(r_files(R_WIN), symlinks=(("abc/l", "../../x"),)), binary),
         400, "links outside its folder"),
        ("r-truncated", lambda: (tgz, h.truncated(h.gzip_tar([*r_files(R_DESC), ("abc/x", bytes(range(256)) * 256)])),
                                 src), 400, "truncated"),
        ("r-wrong-metadata", lambda: (tgz, h.gzip_tar(r_files(R_DESC.replace("1.0", "2.0"))), src), 400,
         "does not match DESCRIPTION"),
    ]


def _conda_cases() -> list[tuple[str, Callable[[], tuple[str, bytes]], int, str]]:
    spec, info, payload = conda_parts()
    bomb_files = [(n, d) for n, d, _ in payload]
    return [
        ("conda-dotdot", lambda: conda_file(extra=(("share/../../evil", b"", 0o644),)), 400, "escapes its folder ('..')"),
        ("conda-absolute", lambda: conda_file(extra=(("/etc/evil", b"", 0o644),)), 400, "absolute path"),
        ("conda-symlink-out", lambda: conda_file(links=(("lib/evil", "/etc/passwd", tarfile.SYMTYPE),)), 400,
         "links outside its folder"),
        ("conda-symlink-dotdot", lambda: conda_file(links=(("lib/evil", "../../x", tarfile.SYMTYPE),)), 400,
         "links outside its folder"),
        ("conda-hardlink-out", lambda: conda_file(links=(("lib/evil", "../x", tarfile.LNKTYPE),)), 400,
         "links outside its folder"),
        ("conda-tar-bz2-symlink-out", lambda: conda_file(links=(("lib/evil", "/etc", tarfile.SYMTYPE),), fmt="tar.bz2"),
         400, "links outside its folder"),
        ("conda-zstd-bomb", lambda: (spec.filename("conda"), conda_zip(
            spec.stem, cfx.make_tar(info), h.zstd_bomb(bomb_files, "share/zeros", BOMB_MIB))), 400,
         "server.limits.archive_"),
        ("conda-metadata-zip-bomb", lambda: (spec.filename("conda"), conda_zip(
            spec.stem, cfx.make_tar(info), ZSTD.compress(cfx.make_tar(payload)), metadata_bomb=BOMB_MIB)), 400,
         "server.limits.archive_"),
        ("conda-bz2-bomb", lambda: (spec.filename("tar.bz2"), h.bz2_bomb(
            [(n, d) for n, d, _ in [*info, *payload]], "share/zeros", BOMB_MIB)), 400, "server.limits.archive_"),
        ("conda-truncated", lambda: (spec.filename("conda"), h.truncated(conda_file()[1])), 400, "not a valid .conda"),
        ("conda-tar-bz2-truncated", lambda: (spec.filename("tar.bz2"), h.truncated(conda_file(fmt="tar.bz2")[1])), 400,
         "truncated"),
        ("conda-wrong-metadata", lambda: ("other-1.0-0.conda", conda_zip(
            "other-1.0-0", cfx.make_tar(info), ZSTD.compress(cfx.make_tar(payload)))), 400, "does not match"),
    ]


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    policy = Policy({
        "users": ["wanda", "rita"],
        "channels": {"internal": {"write": ["user:wanda"], "read": ["user:rita"]}},
    })
    writer = policy.add_token("wanda", ["all"])
    reader = policy.add_token("rita", ["all"])
    server = Channelgate(tmp_path_factory.mktemp("corpus"), policy).start()
    try:
        gate = Gate(server, writer, reader, 0)
        warm_up(gate, tmp_path_factory.mktemp("warm"))
        assert server.proc is not None
        gate.baseline_rss = proc_status(server.proc.pid, "VmRSS")
        yield gate
        peak = proc_status(server.proc.pid, "VmHWM")
        print(f"\nserver RSS: {gate.baseline_rss / MiB:.0f} MiB after warm-up, peak {peak / MiB:.0f} MiB over the corpus")
    finally:
        server.stop()


def warm_up(gate: Gate, work: Path) -> None:
    """One good upload per ecosystem and every index: the baseline is a working server."""
    good = make_wheel(work, "acme_internal", "1.0")
    assert post_form(gate, good.name, good.read_bytes(), twine_fields(good)).status_code == 200
    name, data = conda_file(name="acme-cli")
    resp = post_form(gate, name, data, {})
    assert resp.status_code == 201, resp.text
    resp = post_form(gate, "abc_1.0.tar.gz", h.gzip_tar(r_files(R_DESC)), {"filetype": "cran_source_package"})
    assert resp.status_code == 201, resp.text
    snapshot(gate)


def check_refused(gate: Gate, before: dict[str, Any], status: int, message: str, expect: tuple[int, str]) -> None:
    assert status == expect[0], message
    assert expect[1] in message, message
    assert snapshot(gate) == before  # nothing stored, no temp file left, every index unchanged
    assert gate.server.proc is not None
    peak = proc_status(gate.server.proc.pid, "VmHWM")
    assert peak - gate.baseline_rss < RSS_BOUND, f"peak RSS {peak / MiB:.0f} MiB, baseline {gate.baseline_rss / MiB:.0f} MiB"


@pytest.mark.parametrize("case", [*_pypi_cases(), *_cran_cases()], ids=lambda c: c[0])
def test_form_upload_refused(gate: Gate, case: Case) -> None:
    _id, build, status, text = case
    filename, data, fields = build()
    before = snapshot(gate)
    resp = post_form(gate, filename, data, fields)
    check_refused(gate, before, resp.status_code, resp.json().get("error", resp.text), (status, text))


@pytest.mark.parametrize("path", ["form", "anaconda"])
@pytest.mark.parametrize("case", _conda_cases(), ids=lambda c: c[0])
def test_conda_upload_refused(gate: Gate, case: tuple[str, Callable[[], tuple[str, bytes]], int, str], path: str) -> None:
    _id, build, status, text = case
    filename, data = build()
    before = snapshot(gate)
    if path == "form":
        resp = post_form(gate, filename, data, {"filetype": "conda"})
        got, message = resp.status_code, resp.json().get("error", resp.text)
    else:
        got, message = post_anaconda(gate, "noarch", filename, data)
    check_refused(gate, before, got, message, (status, text))


# --------------------------------------------------------------------------- spellings of one release


@pytest.mark.parametrize("filename", ["Acme_Internal-1.0-py3-none-any.whl", "acme_internal-1.0.0-py3-none-any.whl",
                                      "acme.internal-1.0-py3-none-any.whl", "acme_internal-1.0-py2.py3-none-any.whl"])
def test_pypi_spelling_variants_of_a_release_are_duplicates(gate: Gate, tmp_path: Path, filename: str) -> None:
    """acme_internal-1.0-py3-none-any.whl is uploaded (warm_up); the same release file spelled
    otherwise (PEP 503 name, PEP 440 version, an overlapping PEP 427 tag) is a 409."""
    name, version = filename.split("-")[:2]
    good = make_wheel(tmp_path, "acme_internal", "1.0")
    before = snapshot(gate)
    resp = post_form(gate, filename, good.read_bytes(), {**twine_fields(good), "name": name, "version": version})
    check_refused(gate, before, resp.status_code, resp.json()["error"], (409, "same release file as acme_internal-1.0"))
    assert gate.get("/simple/acme-internal/")[1].count(b"</a>") == 1  # one file, the original


@pytest.mark.parametrize("path", ["form", "anaconda"])
@pytest.mark.parametrize("fmt", ["conda", "tar.bz2"])
def test_conda_spelling_variants_of_a_release_are_duplicates(gate: Gate, path: str, fmt: str) -> None:
    """acme-cli-1.0-0.conda is uploaded (warm_up): Acme-CLI-1.0-0, in either format, is the
    same name-version-build in the same subdir."""
    filename, data = conda_file(name="Acme-CLI", fmt=fmt)
    before = snapshot(gate)
    if path == "form":
        resp = post_form(gate, filename, data, {})
        status, message = resp.status_code, resp.json()["error"]
    else:
        status, message = post_anaconda(gate, "noarch", filename, data)
    check_refused(gate, before, status, message, (409, "same release file as noarch/acme-cli-1.0-0.conda"))


# --------------------------------------------------------------------------- malformed forms


def raw_post(gate: Gate, content_type: str, body: bytes) -> tuple[int, str]:
    status, _, answer = http("POST", f"{gate.server.url}/api/repo/internal", data=body,
                             headers={"Authorization": f"token {gate.writer}", "Content-Type": content_type})
    try:
        return status, json.loads(answer)["error"]
    except ValueError:
        return status, answer.decode("utf-8", "replace")


FILE_PART = b'--B\r\nContent-Disposition: form-data; name="content"; filename="evil-1.0.tar.gz"\r\n\r\n'


@pytest.mark.parametrize(("case", "content_type", "body", "expect"), [
    ("no boundary", "multipart/form-data", FILE_PART + b"x\r\n--B--\r\n", "boundary"),
    ("wrong boundary", "multipart/form-data; boundary=Z", FILE_PART + b"x\r\n--B--\r\n", "boundary"),
    ("boundary too long", "multipart/form-data; boundary=" + "b" * 100, b"--" + b"b" * 100 + b"\r\n", "boundary"),
    ("ends early", "multipart/form-data; boundary=B", FILE_PART + b"partial data", "ends early"),
    ("ends in a header", "multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-da', "malformed"),
    ("CR in a file name", "multipart/form-data; boundary=B",
     b'--B\r\nContent-Disposition: form-data; name="content"; filename="a\rb.tar.gz"\r\n\r\nx\r\n--B--\r\n', "malformed"),
    ("CR in an encoded file name", "multipart/form-data; boundary=B",
     b"--B\r\nContent-Disposition: form-data; name=\"content\"; filename*=utf-8''a%0Db.tar.gz\r\n\r\nx\r\n--B--\r\n",
     "control characters"),
    ("gzip-encoded field", "multipart/form-data; boundary=B",
     b'--B\r\nContent-Disposition: form-data; name="x"\r\nContent-Encoding: gzip\r\n\r\nx\r\n--B--\r\n', "unencoded"),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
def test_malformed_multipart_is_400(gate: Gate, case: str, content_type: str, body: bytes, expect: str) -> None:
    before = snapshot(gate)
    status, message = raw_post(gate, content_type, body)
    check_refused(gate, before, status, message, (400, expect))


def fields_form(count: int, size: int) -> tuple[str, Iterator[bytes]]:
    def parts() -> Iterator[bytes]:
        value = b"v" * size
        for i in range(count):
            yield f'--B\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + value + b"\r\n"
        yield FILE_PART + b"x\r\n--B--\r\n"
    return "multipart/form-data; boundary=B", parts()


@pytest.mark.parametrize(("count", "size", "status", "expect"), [
    (1500, 10, 400, "server.limits.form_fields"),
    (900, 1024 * 1024 - 100, 413, "server.limits.form_text_mb"),
])
def test_form_field_count_and_size_are_bounded(gate: Gate, count: int, size: int, status: int, expect: str) -> None:
    """issue 8 obs. 7: 1,500 fields, or hundreds of 1 MiB fields, are refused as they arrive."""
    content_type, parts = fields_form(count, size)
    before = snapshot(gate)
    resp = requests.post(f"{gate.server.url}/api/repo/internal", data=parts, timeout=120,
                         headers={"Authorization": f"token {gate.writer}", "Content-Type": content_type})
    check_refused(gate, before, resp.status_code, resp.json()["error"], (status, expect))


# --------------------------------------------------------------------------- downloads never wait for uploads


def test_downloads_do_not_wait_for_upload_checks(tmp_path: Path) -> None:
    """issue 8 obs. 6: while bomb uploads are being checked (limits raised so that each takes
    long), a package download completes before any of them is answered: checks run on their
    own pool, not on the default pool that file responses need."""
    policy = Policy({
        "server": {"limits": {"validation_workers": 1, "archive_unpacked_mb": 1_000_000, "archive_ratio": 1_000_000}},
        "users": ["wanda"], "channels": {"internal": {"write": ["user:wanda"], "read": ["user:wanda"]}},
    })
    token = policy.add_token("wanda", ["all"])
    server = Channelgate(tmp_path / "gate", policy).start()
    gate = Gate(server, token, token, 0)
    good = make_wheel(tmp_path, "acme_dl", "1.0")
    assert post_form(gate, good.name, good.read_bytes(), twine_fields(good)).status_code == 200
    bomb = h.gzip_bomb([("evil-1.0/setup.py", b"")], "evil-1.0/zeros", 512)  # no PKG-INFO: refused at the end
    answered: list[int] = []

    def upload() -> None:
        try:
            answered.append(post_form(gate, "evil-1.0.tar.gz", bomb, pypi_fields("evil", "1.0", "sdist")).status_code)
        except requests.RequestException:
            pass  # the server stopped first

    threads = [threading.Thread(target=upload) for _ in range(8)]  # more than the default pool's threads
    try:
        for thread in threads:
            thread.start()
        server.wait_log("upload check inspect_distribution started", timeout=60)
        status, body = gate.get("/simple/acme-dl/")
        assert status == 200
        link = re.search(rb'href="([^"#]+\.whl)', body)
        assert link is not None
        status, _, data = http("GET", f"{server.url}/t/{token}/internal/simple/acme-dl/{link.group(1).decode()}"
                               if not link.group(1).startswith(b"/") and b"://" not in link.group(1)
                               else link.group(1).decode())
        assert status == 200 and data == good.read_bytes()
        assert answered == [], "an upload check finished before the download: the download waited"
    finally:
        if server.proc is not None:  # not a graceful stop: it would wait for the queued checks
            server.proc.kill()
            server.proc.wait()
        server.stop()
        for thread in threads:
            thread.join(60)


def test_ignored_file_parts_are_bounded(gate: Gate) -> None:
    """twine's gpg_signature part is read and dropped: bounded like a text field."""
    body = (b'--B\r\nContent-Disposition: form-data; name="gpg_signature"; filename="x.asc"\r\n\r\n'
            + b"s" * (2 * MiB) + b"\r\n" + FILE_PART + b"x\r\n--B--\r\n")
    before = snapshot(gate)
    status, message = raw_post(gate, "multipart/form-data; boundary=B", body)
    check_refused(gate, before, status, message, (413, "'gpg_signature' is larger than"))
