"""Seed conda needs: a real solve per subdir with py-rattler, the field's solver (the one
pixi and rattler-build use), against the seed's own gateway, with the *target's* virtual
packages (a Linux box seeding osx-arm64 must not solve with its own ``__glibc``).
Every package file of each solution is fetched."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .seed import SeedRun, Want
from .seedfile import CondaNeeds

# What a typical target offers (conda's defaults for a machine of that kind): solutions
# must install on the oldest supported systems, so the versions are conservative.
VIRTUAL: dict[str, list[tuple[str, str]]] = {
    "linux": [("__unix", "0"), ("__linux", "5.10"), ("__glibc", "2.17")],
    "osx": [("__unix", "0"), ("__osx", "11.0")],
    "win": [("__win", "0")],
}


def virtual_packages(subdir: str) -> list[Any]:
    import rattler

    family = subdir.split("-", 1)[0]
    out = [rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version),
                                         rattler.BuildString("0"))
           for name, version in VIRTUAL.get(family, [])]
    arch = subdir.split("-", 1)[-1]
    archspec = {"64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(arch)
    if archspec and family != "noarch":
        out.append(rattler.GenericVirtualPackage(rattler.PackageName("__archspec"), rattler.Version("1"),
                                                   rattler.BuildString(archspec)))
    return out


async def resolve(run: SeedRun, needs: CondaNeeds) -> list[Want]:
    try:
        import rattler
    except ImportError:
        run.fail("conda", "solver", "py-rattler is not installed: pip install 'channelgate[airgap]'")
        return []
    wants: list[Want] = []
    with tempfile.TemporaryDirectory(prefix="channelgate-seed-") as tmp:
        gateway = rattler.Gateway(cache_dir=Path(tmp))
        for subdir in needs.subdirs:
            try:
                records = await rattler.solve(
                    [rattler.Channel(run.base)], list(needs.specs), gateway=gateway,
                    platforms=[rattler.Subdir(subdir), rattler.Subdir("noarch")],
                    virtual_packages=virtual_packages(subdir),
                )
            except Exception as exc:  # rattler's errors share no base class
                reason = " ".join(str(exc).replace(run.token, "***").split())
                run.fail("conda", f"{subdir}: {', '.join(needs.specs)}", f"cannot solve: {reason}")
                continue
            for record in records:
                sha = record.sha256.hex() if record.sha256 is not None else None
                md5 = record.md5.hex() if record.md5 is not None else None
                wants.append(Want("conda", f"{record.subdir}/{record.file_name}", sha256=sha, md5=md5,
                                  size=record.size))
    return wants
