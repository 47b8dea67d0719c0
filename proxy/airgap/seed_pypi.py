"""Seed PyPI needs: a real resolution per python x platform, then the files that fit.

The resolver is uv (``uv pip compile --python-platform --python-version``), run as a
subprocess against the seed's own gateway: uv resolves for a target platform and Python
other than the one it runs on, which resolvelib would leave us to build by hand (markers,
``Requires-Python``, metadata fetching, backtracking), and it reads the channel exactly
as the sites' clients will. For each pinned release, the file a target installer would
pick is chosen by wheel tag priority (packaging.tags), the sdist where no wheel fits, and
its PEP 658 ``.metadata`` too (pip and uv read it first).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from packaging import tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from .seed import SeedRun, Want
from .seedfile import PypiNeeds

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
_MUSL = re.compile(r"^musllinux_(\d+)_(\d+)_(\w+)$")
_MAC = re.compile(r"^macosx_(\d+)_(\d+)_(\w+)$")
_WINDOWS = {"win_amd64": "x86_64-pc-windows-msvc", "win_arm64": "aarch64-pc-windows-msvc", "win32": "i686-pc-windows-msvc"}
_UV_GLIBC = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)  # uv's x86_64/aarch64-manylinux_2_N targets


def target(platform: str) -> tuple[str, dict[str, str], list[str]]:
    """(uv --python-platform, extra environment, wheel platform tags in priority order)
    for a wheel platform tag; ValueError for one we cannot target."""
    legacy = re.match(r"^(manylinux2014|manylinux2010|manylinux1)_(\w+)$", platform)
    m = _MANYLINUX.match(platform)
    if legacy or m:
        major, minor = _LEGACY[legacy.group(1)] if legacy else (int(m.group(1)), int(m.group(2)))  # type: ignore[union-attr]
        arch = legacy.group(2) if legacy else m.group(3)  # type: ignore[union-attr]
        fit = [n for n in _UV_GLIBC if n <= minor]
        uv = f"{'aarch64' if arch == 'aarch64' else 'x86_64'}-manylinux_2_{fit[-1]}" if fit else f"{arch}-manylinux2014"
        plats = [f"manylinux_{major}_{n}_{arch}" for n in range(minor, 4, -1)]
        plats += [f"{name}_{arch}" for name, (_, n) in _LEGACY.items() if n <= minor]
        return uv, {}, plats
    m = _MUSL.match(platform)
    if m:
        arch = m.group(3)
        return f"{arch}-unknown-linux-musl", {}, [f"musllinux_1_{n}_{arch}" for n in range(int(m.group(2)), -1, -1)]
    m = _MAC.match(platform)
    if m:
        arch = m.group(3)
        version = (int(m.group(1)), int(m.group(2)))
        uv = "aarch64-apple-darwin" if arch == "arm64" else "x86_64-apple-darwin"
        return uv, {"MACOSX_DEPLOYMENT_TARGET": f"{version[0]}.{version[1]}"}, list(tags.mac_platforms(version, arch))
    if platform in _WINDOWS:
        return _WINDOWS[platform], {}, [platform]
    raise ValueError(f"unknown platform {platform!r} (use wheel platform tags such as manylinux_2_17_x86_64, "
                     "macosx_11_0_arm64, win_amd64)")


def supported(python: str, platforms: list[str]) -> list[tags.Tag]:
    version = tuple(int(p) for p in python.split("."))
    return [*tags.cpython_tags(version, platforms=platforms), *tags.compatible_tags(version, platforms=platforms)]


async def compile_pins(run: SeedRun, needs: PypiNeeds, python: str, uv_platform: str, env_extra: dict[str, str]) -> list[tuple[str, str]]:
    """(name, version) pins uv resolves for one target; raises LookupError with uv's reason."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    with tempfile.TemporaryDirectory(prefix="channelgate-seed-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
        env.update(UV_NO_CONFIG="1", UV_CACHE_DIR=str(Path(tmp) / "cache"), UV_PYTHON_DOWNLOADS="never", **env_extra)
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(needs.requirements) + "\n")
        proc = await asyncio.create_subprocess_exec(
            uv, "pip", "compile", str(req), "--python-platform", uv_platform, "--python-version", python,
            "--index-url", f"{run.base}/simple/", "--no-header", "--no-annotate", "--quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await proc.communicate()
    if proc.returncode != 0:
        reason = err.decode(errors="replace").replace(run.token, "***").strip()
        raise LookupError(reason.splitlines()[-1] if reason else f"uv exited with {proc.returncode}")
    pins: list[tuple[str, str]] = []
    for line in out.decode().splitlines():
        name, sep, version = line.split(";")[0].strip().partition("==")
        if sep:
            pins.append((canonicalize_name(name), version.strip()))
    return pins


def choose(files: list[dict[str, object]], version: str, wanted: list[tags.Tag]) -> dict[str, object] | None:
    """The file an installer on the target would take: the wheel with the best tag, else an sdist."""
    rank = {tag: i for i, tag in enumerate(wanted)}
    best: tuple[int, dict[str, object]] | None = None
    sdist = None
    for f in files:
        filename = str(f.get("filename", ""))
        if f.get("yanked"):
            continue
        if filename.endswith(".whl"):
            try:
                _, ver, _, file_tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            if str(ver) != version:
                continue
            score = min((rank[t] for t in file_tags if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, f)
        elif filename.endswith((".tar.gz", ".zip")) and f"-{version}." in filename and sdist is None:
            sdist = f
    return best[1] if best else sdist


async def resolve(run: SeedRun, needs: PypiNeeds) -> list[Want]:
    wants: list[Want] = []
    pages: dict[str, list[dict[str, object]]] = {}
    for platform in needs.platforms:
        try:
            uv_platform, env_extra, plats = target(platform)
        except ValueError as exc:
            run.fail("pypi", platform, str(exc))
            continue
        for python in needs.python:
            try:
                pins = await compile_pins(run, needs, python, uv_platform, env_extra)
            except LookupError as exc:
                run.fail("pypi", f"python {python} on {platform}", f"cannot resolve: {exc}")
                continue
            wanted = supported(python, plats)
            for name, version in pins:
                if name not in pages:
                    try:
                        body = await run.get(f"simple/{name}/", accept=JSON_ACCEPT)
                    except LookupError as exc:
                        run.fail("pypi", f"{name}=={version}", str(exc))
                        continue
                    pages[name] = list(json.loads(body).get("files", []))
                chosen = choose(pages[name], version, wanted)
                if chosen is None:
                    run.fail("pypi", f"{name}=={version}", f"no file fits python {python} on {platform}")
                    continue
                wants.extend(_wants(name, chosen))
    return wants


def _wants(name: str, entry: dict[str, object]) -> list[Want]:
    filename = str(entry["filename"])
    hashes = entry.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    size = entry.get("size")
    out = [Want("pypi", f"simple/{name}/{filename}", sha256=sha256, size=size if isinstance(size, int) else None)]
    meta = entry.get("core-metadata") or entry.get("dist-info-metadata")
    if meta:
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        out.append(Want("pypi", f"simple/{name}/{filename}.metadata", sha256=sha))
    return out
