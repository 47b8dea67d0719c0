"""The shared archive checks (proxy/archives.py), in-process: link resolution, member names,
the budget's limits and the zip pre-checks. The end-to-end corpus is test_upload_corpus.py."""
from __future__ import annotations

import io
import zipfile

import pytest

from proxy.archives import RATIO_GRACE, Budget, check_link, name_problem, scan_zip
from proxy.errors import BadRequest
from proxy.settings import Limits


@pytest.mark.parametrize(("member", "target", "hard", "root", "inside"), [
    ("lib/libz.so", "libz.so.1", False, 0, True),
    ("lib/libz.so", "../bin/z", False, 0, True),
    ("lib/libz.so", "../../etc/passwd", False, 0, False),
    ("lib/libz.so", "/usr/lib/libz.so", False, 0, False),
    ("lib/libz.so", "C:/Windows", False, 0, False),
    ("lib/x", "lib/y", True, 0, True),
    ("lib/x", "../y", True, 0, False),
    ("pkg/R/x", "../DESCRIPTION", False, 1, True),
    ("pkg/R/x", "../../other/y", False, 1, False),
    ("pkg/x", "other/y", True, 1, False),
    ("pkg/x", "pkg/y", True, 1, True),
])
def test_links_may_not_leave_the_package(member: str, target: str, hard: bool, root: int, inside: bool) -> None:
    if inside:
        check_link("f", member, target, hard=hard, root=root)
    else:
        with pytest.raises(BadRequest, match="links outside its folder"):
            check_link("f", member, target, hard=hard, root=root)


@pytest.mark.parametrize(("name", "problem"), [
    ("a/b", None), ("./a", None), ("a/../b", "'..'"), ("/etc/x", "absolute"), ("\\x", "absolute"),
    ("c:/x", "absolute"), ("a\\..\\b", "'..'"), ("a\0b", "NUL"),
])
def test_member_names(name: str, problem: str | None) -> None:
    found = name_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_budget_names_the_limit_it_enforces() -> None:
    limits = Limits(archive_members=2, archive_unpacked_bytes=10 * RATIO_GRACE, archive_ratio=50)
    budget = Budget("x.whl", limits, compressed_size=1024)
    budget.charge(RATIO_GRACE)  # a small file may compress well: no ratio check below the grace
    with pytest.raises(BadRequest, match=r"server\.limits\.archive_ratio"):
        budget.charge(1)
    members = Budget("x.whl", limits, 1)
    members.member("a")
    members.member("b")
    with pytest.raises(BadRequest, match=r"server\.limits\.archive_members"):
        members.member("c")
    total = Budget("x.whl", Limits(archive_unpacked_bytes=100, archive_ratio=10**9), 1)
    with pytest.raises(BadRequest, match=r"server\.limits\.archive_unpacked_mb"):
        total.charge(101)


def zip_of(*members: tuple[str, bytes, int]) -> zipfile.ZipFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return zipfile.ZipFile(buf)


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_prechecks_refuse_before_reading() -> None:
    ok = zip_of(("a/x", b"1", zipfile.ZIP_DEFLATED), ("a/y", b"2", zipfile.ZIP_STORED))
    assert len(scan_zip(ok, Budget("ok.zip", Limits(), 100))) == 2
    with pytest.raises(BadRequest, match="unsupported compression method"):
        scan_zip(zip_of(("a/x", b"1", zipfile.ZIP_BZIP2)), Budget("b.zip", Limits(), 100))
    with pytest.raises(BadRequest, match="appears twice"):
        scan_zip(zip_of(("a/x", b"1", 0), ("a/x", b"2", 0)), Budget("d.zip", Limits(), 100))
    with pytest.raises(BadRequest, match=r"server\.limits\.archive_unpacked_mb"):
        scan_zip(zip_of(("a/x", bytes(1000), zipfile.ZIP_DEFLATED)), Budget("z.zip", Limits(archive_unpacked_bytes=999), 100))
