"""Data the benchmarks generate for themselves: nothing is downloaded.

- ``pypi_project``: a PEP 503 tree of one project with many real wheels and sdists
  (``tests/fixtures/wheels.py``), the page every peer serves.
- ``big_artifact``: a large random file published on a PEP 503 project page with its
  ``#sha256=`` (written directly: hashing while writing, never holding the file in memory).
- ``conda_repodata``: an upstream ``<subdir>/repodata.json`` (+ ``.zst``, as conda-forge
  serves it) of N records in conda-forge's record shape, streamed to disk.
- ``conda_packages``: real ``.conda`` packages to upload (``tests/fixtures/conda_pkgs.py``).
"""
from __future__ import annotations

import hashlib
import html
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zstandard

from tests.fixtures import conda_pkgs
from tests.fixtures.wheels import make_sdist, make_wheel, write_simple_index

MiB = 1024 * 1024


# --------------------------------------------------------------------------- PyPI
def pypi_project(root: Path, project: str, versions: int) -> list[str]:
    """``root/simple/<project>/index.html`` and ``root/files/``: a wheel and an sdist per
    version (PyPI's usual pair). Returns the file names."""
    dists = root.parent / f"{root.name}-dists"
    paths = []
    for i in range(versions):
        version = f"{1 + i // 10}.{i % 10}.0"
        paths.append(make_wheel(dists, project, version, requires_dist=["requests>=2", "attrs"], requires_python=">=3.8"))
        paths.append(make_sdist(dists, project, version, requires_python=">=3.8"))
    projects = write_simple_index(root, paths, fmt="html")
    return [name for files in projects.values() for name in files]


@dataclass(frozen=True)
class Artifact:
    project: str
    filename: str
    size: int
    sha256: str
    url_path: str  # path of the file on the upstream, e.g. /files/<filename>


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    chunk = 4 * MiB
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            fh.write(data)
            left -= len(data)
    return digest.hexdigest()


def big_artifact(root: Path, project: str, size: int) -> Artifact:
    """A random ``size``-byte "wheel" behind ``root/simple/<project>/index.html`` (PEP 503:
    relative link with ``#sha256=``); the upstream index is the declared hash channelgate checks."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    filename = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
    sha = _random_file(files / filename, size)
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    (page / "index.html").write_text(
        "<!DOCTYPE html>\n<html><head><title>Links for {0}</title></head>\n<body>\n<h1>Links for {0}</h1>\n"
        '<a href="../../files/{1}#sha256={2}">{1}</a><br/>\n</body></html>\n'.format(html.escape(project), filename, sha)
    )
    index = root / "simple" / "index.html"
    links = index.read_text() if index.exists() else ""
    index.write_text(links + f'<a href="{project}/">{project}</a><br/>\n')
    return Artifact(project, filename, size, sha, f"/files/{filename}")


# --------------------------------------------------------------------------- conda
LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-or-later", "LGPL-2.1-or-later", "MPL-2.0",
            "BSD-2-Clause", "ISC", "Zlib", "PSF-2.0", "LicenseRef-Proprietary")
C_DEPS = ("libgcc-ng >=12", "libstdcxx-ng >=12", "libzlib >=1.2.13,<2.0.0a0", "openssl >=3.1.4,<4.0a0",
          "libcurl >=8.4.0,<9.0a0", "xz >=5.2.6,<6.0a0", "zstd >=1.5.5,<1.6.0a0", "bzip2 >=1.0.8,<2.0a0",
          "libffi >=3.4,<4.0a0", "ncurses >=6.4,<7.0a0", "libblas >=3.9.0,<4.0a0", "libcblas >=3.9.0,<4.0a0")
PYTHONS = (("3.9", "3.10", "39"), ("3.10", "3.11", "310"), ("3.11", "3.12", "311"), ("3.12", "3.13", "312"))
EXT_SPLIT = 0.4  # share of each package's (older) builds still in .tar.bz2, the rest .conda


def _name(rng: random.Random, i: int) -> str:
    stems = ("py", "lib", "r-", "perl-", "ros-humble-", "")
    return f"{rng.choice(stems)}{rng.choice('abcdefghijklmnopqrstuvwxyz')}{'abcdefghij'[i % 10]}pkg{i}"


def _records(records: int, subdir: str, seed: int) -> Any:
    """Yield ``(filename, record)`` in conda-forge's shape, about 445 bytes each as JSON."""
    rng = random.Random(seed)
    per_name = 23  # conda-forge linux-64: ~465k records over ~20k names
    names = [_name(rng, i) for i in range(max(1, records // per_name + 1))]
    ts = 1_600_000_000_000
    made = 0
    for n, name in enumerate(names):
        kind = rng.random()
        count = min(per_name, records - made)
        for k in range(count):
            version = f"{k // 6}.{k % 6}.{rng.randint(0, 9)}"
            build_number = rng.randint(0, 3)
            h = f"{rng.getrandbits(28):07x}"
            depends: list[str]
            noarch = None
            if kind < 0.12:  # noarch python packages (they do show up in arch subdirs' shape)
                build, noarch = f"pyhd8ed1ab_{build_number}", "python"
                depends = ["python >=3.8", *rng.sample(names[:n], min(n, rng.randint(1, 3)))]
            elif kind < 0.55:  # compiled python extensions, one build per python
                py, nxt, tag = PYTHONS[k % len(PYTHONS)]
                build = f"py{tag}h{h}_{build_number}"
                depends = ["libgcc-ng >=12", f"python >={py},<{nxt}.0a0", f"python_abi {py}.* *_cp{tag}",
                           *(f"{d} >=1.{rng.randint(0, 20)}" for d in rng.sample(names[:n], min(n, 2)))]
            else:  # C/C++ libraries
                build = f"h{h}_{build_number}"
                depends = list(rng.sample(C_DEPS, rng.randint(2, 4)))
            constrains = [f"{rng.choice(names)} >={rng.randint(1, 9)}"] if rng.random() < 0.2 else []
            record: dict[str, Any] = {
                "build": build,
                "build_number": build_number,
                "constrains": constrains,
                "depends": depends,
                "license": rng.choice(LICENSES),
                "md5": f"{rng.getrandbits(128):032x}",
                "name": name,
                "sha256": f"{rng.getrandbits(256):064x}",
                "size": rng.randint(4_000, 80_000_000),
                "subdir": subdir,
                "timestamp": ts,
                "version": version,
            }
            if noarch:
                record["noarch"] = noarch
            ts += rng.randint(1000, 400_000)
            ext = "tar.bz2" if k < count * EXT_SPLIT else "conda"
            yield f"{name}-{version}-{build}.{ext}", record
            made += 1
        if made >= records:
            return


@dataclass(frozen=True)
class Repodata:
    path: Path  # <subdir>/repodata.json
    records: int
    raw_size: int
    zst_size: int


def conda_repodata(channel: Path, subdir: str, records: int, *, seed: int = 1) -> Repodata:
    """Write ``channel/<subdir>/repodata.json`` and ``.json.zst`` (and an empty ``noarch``)."""
    out = channel / subdir
    out.mkdir(parents=True, exist_ok=True)
    parts = {"tar.bz2": out / "part-packages", "conda": out / "part-conda"}
    handles = {ext: open(p, "wb") for ext, p in parts.items()}  # noqa: SIM115
    first = dict.fromkeys(parts, True)
    count = 0
    try:
        for filename, record in _records(records, subdir, seed):
            ext = "conda" if filename.endswith(".conda") else "tar.bz2"
            fh = handles[ext]
            fh.write((b"" if first[ext] else b",") + orjson.dumps(filename) + b":" + orjson.dumps(record))
            first[ext] = False
            count += 1
    finally:
        for fh in handles.values():
            fh.close()
    path = out / "repodata.json"
    with open(path, "wb") as fh:
        fh.write(b'{"info":{"subdir":' + orjson.dumps(subdir) + b'},"packages":{')
        fh.write(parts["tar.bz2"].read_bytes())
        fh.write(b'},"packages.conda":{')
        fh.write(parts["conda"].read_bytes())
        fh.write(b'},"removed":[],"repodata_version":1}')
    for p in parts.values():
        p.unlink()
    zst = out / "repodata.json.zst"
    with open(path, "rb") as src, open(zst, "wb") as dst:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
    if subdir != "noarch" and not (channel / "noarch").exists():
        conda_repodata(channel, "noarch", 0, seed=seed + 1)
    return Repodata(path, count, path.stat().st_size, zst.stat().st_size)


def conda_packages(out: Path, names: list[str], subdir: str = "linux-64") -> list[Path]:
    """Real, valid ``.conda`` packages (tests/fixtures/conda_pkgs.py) to upload."""
    return [
        conda_pkgs.build_package(out, conda_pkgs.PkgSpec(name, "1.0", "h0_0", subdir=subdir, depends=("libgcc-ng >=12",)))
        for name in names
    ]
