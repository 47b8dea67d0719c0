"""CRAN library: DCF, R version order, PACKAGES(.gz/.rds), upload validation.

R itself is the oracle wherever it is installed: read.dcf, package_version ordering,
tools::write_PACKAGES, readRDS, available.packages and install.packages.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from proxy.ecosystems.cran.dcf import DcfError, parse_dcf, render_dcf
from proxy.ecosystems.cran.index import (
    ArchivedFile,
    archive_list,
    packages_matrix,
    parse_archive_rds,
    compare_versions,
    is_binary_contrib_dir,
    parse_packages,
    render_archive_rds,
    render_index,
    render_packages_rds,
    split_latest,
    version_key,
)
from proxy.ecosystems.cran.package import (
    CranPackage,
    inspect_binary,
    inspect_source,
    inspect_upload,
    macos_subtype,
    parse_built,
)
from proxy.ecosystems.cran.paths import parse_cran_path
from proxy.ecosystems.cran.rds import R_VERSION, RValue, RVector, UnsupportedRds, read_rds, serialize, write_rds
from proxy.errors import BadRequest, NotFound, UpstreamError
from proxy.responses import http_status

from fixtures.cran_pkgs import (
    HAVE_R,
    BuiltPackage,
    build_macos_binary,
    build_source_package,
    build_windows_binary,
    make_absolute_member,
    make_dotdot_member,
    make_no_description,
    make_not_gzip,
    make_renamed,
    make_symlink_escape,
    make_truncated,
    make_two_top_folders,
    make_zip_dotdot,
    run_r,
    write_cran_repo,
)


needs_r = pytest.mark.skipif(not HAVE_R, reason="R (R and Rscript) is not installed")


def r_lines(code: str, cwd: Path | None = None) -> list[str]:
    return run_r(code, cwd=cwd).stdout.splitlines()


# ------------------------------------------------------------------ DCF

TRICKY_DCF = (
    "Package: x\r\n"
    "Version: 1.0\n"
    "Version: 2.0\n"
    "Description: first\n"
    "  second line\n"
    "\t third\n"
    " .\n"
    "  after dot\n"
    "B :x\n"
    "A:b:c\n"
    "Empty:\n"
    "OnlyCont:\n"
    "    cont  \n"
    "X-Trail: v   \n"
    "  \t \n"
    "\n"
    "Package: y\n"
    "Version: 2\n"
)


def test_parse_dcf_follows_read_dcf() -> None:
    recs = parse_dcf(TRICKY_DCF)
    assert recs == [
        {
            "Package": "x", "Version": "2.0", "Description": "first\nsecond line\nthird\n\nafter dot",
            "B ": "x", "A": "b:c", "Empty": "", "OnlyCont": "cont", "X-Trail": "v",
        },
        {"Package": "y", "Version": "2"},
    ]


@needs_r
def test_parse_dcf_agrees_with_r_read_dcf(tmp_path: Path) -> None:
    f = tmp_path / "t.dcf"
    f.write_bytes(TRICKY_DCF.encode())
    out = r_lines(
        'x <- read.dcf("t.dcf"); for (i in seq_len(nrow(x))) for (n in colnames(x)) '
        'if (!is.na(x[i, n])) cat(i, "\\t", n, "\\t", gsub("\\n", "|", x[i, n]), "\\n", sep = "")',
        cwd=tmp_path,
    )
    from_r = [tuple(line.split("\t")) for line in out]
    ours = [
        (str(i), k, v.replace("\n", "|"))
        for i, rec in enumerate(parse_dcf(TRICKY_DCF), start=1) for k, v in rec.items()
    ]
    assert sorted(ours) == sorted(from_r)


@pytest.mark.parametrize(("text", "reason"), [
    ("  cont first\nPackage: x\n", "continuation line"),
    ("Package: x\nbad line\n", "malformed"),
    ("Package: x\n: novalue\n", "malformed"),
])
def test_parse_dcf_rejects_what_read_dcf_rejects(text: str, reason: str) -> None:
    with pytest.raises(DcfError, match=reason):
        parse_dcf(text)


def test_render_dcf_round_trips() -> None:
    recs = [
        {"Package": "a", "Description": "line one\n\nline three", "Empty": ""},
        {"Package": "b", "Version": "1.0-2", "Skipped": None},
    ]
    text = render_dcf(recs)  # type: ignore[arg-type]
    assert parse_dcf(text) == [
        {"Package": "a", "Description": "line one\n\nline three", "Empty": ""},
        {"Package": "b", "Version": "1.0-2"},
    ]


# ------------------------------------------------------------------ versions

VERSIONS = ["1.0", "1.10", "1.9", "1.0-1", "0.99.9", "2.0.0", "1.0.0", "10.0", "1.0-10", "1.0.2"]


def test_version_order_is_r_package_version() -> None:
    assert version_key("1.0-3") == (1, 0, 3)
    assert compare_versions("1.10", "1.9") == 1
    assert compare_versions("1.0-1", "1.0.1") == 0
    assert compare_versions("1.0", "1.0.0") == -1
    with pytest.raises(BadRequest, match="invalid R package version"):
        version_key("1")
    with pytest.raises(BadRequest):
        version_key("1.0a")


@needs_r
def test_version_order_agrees_with_r() -> None:
    vec = ", ".join(f'"{v}"' for v in VERSIONS)
    out = r_lines(f"v <- c({vec}); cat(v[order(package_version(v))], sep = '\\n')")
    ours = sorted(VERSIONS, key=version_key)
    # ties ("1.0-1"/"1.0.1" style) do not occur in VERSIONS, so the orders must be equal
    assert ours == out


def test_split_latest_sends_older_versions_to_archive() -> None:
    entries = [
        {"Package": "abc", "Version": "1.9"}, {"Package": "abc", "Version": "1.10"},
        {"Package": "Zed", "Version": "0.1"}, {"Package": "abc", "Version": "1.2-3"},
        {"Package": "bad", "Version": "nonsense"}, {"Package": "bad", "Version": "0.1"},
    ]
    latest, older = split_latest(entries)
    assert [(e["Package"], e["Version"]) for e in latest] == [("abc", "1.10"), ("bad", "0.1"), ("Zed", "0.1")]
    assert [(e["Package"], e["Version"]) for e in older] == [
        ("abc", "1.2-3"), ("abc", "1.9"), ("bad", "nonsense"),
    ]


# ------------------------------------------------------------------ packages and repositories

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltPackage]:
    if not HAVE_R:
        pytest.skip("R (R and Rscript) is not installed")
    w = tmp_path_factory.mktemp("cranpkgs")
    return {
        "abc_2.0": build_source_package(w / "a", "abc", "2.0"),
        "abc_2.1": build_source_package(w / "b", "abc", "2.1", imports=["stats", "utils"],
                                        suggests=["testthat (>= 3.0.0)"]),
        "xyz_0.1-2": build_source_package(w / "c", "xyz", "0.1-2", depends=["R (>= 4.0)", "abc"],
                                          extra={"Priority": "optional", "OS_type": "unix"}),
        "win": build_windows_binary(w / "d", "abc", "2.1", compiled=True),
        "mac": build_macos_binary(w / "e", "abc", "2.1"),
        "mac_legacy": build_macos_binary(w / "f", "abc", "2.1", r_version="4.2.3",
                                         platform="x86_64-apple-darwin17.0", subtype=None),
    }


@pytest.fixture(scope="module")
def r_repo(tmp_path_factory: pytest.TempPathFactory, built: dict[str, BuiltPackage]) -> Path:
    """A repository indexed by R's own tools::write_PACKAGES."""
    return write_cran_repo(tmp_path_factory.mktemp("rrepo"), built.values())


def test_inspect_source_matches_r_write_packages(built: dict[str, BuiltPackage], r_repo: Path) -> None:
    r_entries = {e["Package"]: e for e in parse_packages((r_repo / "src/contrib/PACKAGES.gz").read_bytes())}
    for key in ("abc_2.1", "xyz_0.1-2"):
        b = built[key]
        pkg = inspect_source(b.path, b.filename)
        assert (pkg.name, pkg.version, pkg.kind) == (b.name, b.version, "source")
        assert pkg.path_in_repo == f"src/contrib/{b.filename}"
        assert pkg.fields == r_entries[b.name]          # the same PACKAGES entry R writes
        data = b.path.read_bytes()
        assert pkg.md5 == hashlib.md5(data).hexdigest() == pkg.fields["MD5sum"]
        assert pkg.sha256 == hashlib.sha256(data).hexdigest() and pkg.size == len(data)
    assert inspect_source(built["abc_2.1"].path, "abc_2.1.tar.gz").archive_path == \
        "src/contrib/Archive/abc/abc_2.1.tar.gz"


def test_inspect_binaries(built: dict[str, BuiltPackage], r_repo: Path) -> None:
    win = inspect_binary(built["win"].path, "abc_2.1.zip")
    assert win.kind == "binary" and win.path_in_repo == "bin/windows/contrib/4.3/abc_2.1.zip"
    assert win.fields["Built"].startswith("R 4.3.1; x86_64-w64-mingw32;")
    assert win.fields["NeedsCompilation"] == "yes"
    assert win.built is not None and win.built.os_type == "windows"
    mac = inspect_binary(built["mac"].path, "abc_2.1.tgz")
    assert mac.path_in_repo == f"{built['mac'].repo_dir}/abc_2.1.tgz" == \
        "bin/macosx/big-sur-arm64/contrib/4.3/abc_2.1.tgz"
    legacy = inspect_binary(built["mac_legacy"].path, "abc_2.1.tgz")
    assert legacy.path_in_repo == "bin/macosx/contrib/4.2/abc_2.1.tgz"
    # the fields R's write_PACKAGES extracts from the same file agree with ours
    r_mac = parse_packages((r_repo / built["mac"].repo_dir / "PACKAGES").read_bytes())[0]
    for k, v in r_mac.items():
        assert mac.fields[k] == v
    assert inspect_upload(built["win"].path, "abc_2.1.zip", "cran_binary_package") == win


@pytest.mark.parametrize(("r_minor", "platform", "subtype"), [
    ("3.6", "x86_64-apple-darwin15.6.0", "el-capitan"),
    ("3.2", "x86_64-apple-darwin13.4.0", "mavericks"),
    ("4.0", "x86_64-apple-darwin17.0", None),
    ("4.2", "x86_64-apple-darwin17.0", None),
    ("4.2", "aarch64-apple-darwin20", "big-sur-arm64"),
    ("4.4", "x86_64-apple-darwin20", "big-sur-x86_64"),
    ("4.4", "aarch64-apple-darwin20", "big-sur-arm64"),
    ("4.4", "", "big-sur-arm64"),
    ("4.6", "aarch64-apple-darwin23", "sonoma-arm64"),
    ("4.6", "x86_64-apple-darwin20", "big-sur-x86_64"),
])
def test_macos_subtype(r_minor: str, platform: str, subtype: str | None) -> None:
    assert macos_subtype(r_minor, platform) == subtype


def test_parse_built() -> None:
    b = parse_built("R 4.3.1; ; 2023-07-10 12:00:00 UTC; windows")
    assert (b.r_version, b.r_minor, b.platform, b.os_type) == ("4.3.1", "4.3", "", "windows")
    with pytest.raises(BadRequest, match="Built"):
        parse_built("R 4.3; x; y; windows")


# ------------------------------------------------------------------ malformed uploads

def _bad_cases(w: Path, built: dict[str, BuiltPackage]) -> list[tuple[str, Path, str, str]]:
    src = built["abc_2.1"]
    return [
        ("not gzip", make_not_gzip(w / "1"), "source", "not a gzip"),
        ("truncated", make_truncated(src.path, w / "2"), "source", "truncated"),
        ("no DESCRIPTION", make_no_description(w / "3"), "source", "has no abc/DESCRIPTION"),
        ("version mismatch", make_renamed(src.path, w / "4", "abc_2.2.tar.gz"), "source",
         "does not match DESCRIPTION"),
        ("name mismatch", make_renamed(src.path, w / "5", "abd_2.1.tar.gz"), "source",
         "does not match"),
        ("bad file name", make_renamed(src.path, w / "6", "abc-2.1.tar.gz"), "source",
         "not of the form"),
        ("dotdot", make_dotdot_member(w / "7"), "source", r"escapes its folder \('\.\.'\)"),
        ("absolute", make_absolute_member(w / "8"), "source", "absolute path"),
        ("symlink", make_symlink_escape(w / "9"), "source", "links outside its folder"),
        ("two folders", make_two_top_folders(w / "10"), "source", "more than one top folder"),
        ("zip dotdot", make_zip_dotdot(w / "11"), "binary", "escapes its folder"),
        ("truncated zip", make_truncated(built["win"].path, w / "12"), "binary", "truncated"),
        ("source as binary", make_renamed(src.path, w / "13", "abc_2.1.tgz"), "binary",
         "has no Built field"),
        ("binary as source", make_renamed(built["mac"].path, w / "14", "abc_2.1.tar.gz"), "source",
         "is an installed"),
        ("linux binary", build_macos_binary(w / "15", built="R 4.3.1; x86_64-pc-linux-gnu; 2024; unix").path,
         "binary", "not a macOS binary"),
        ("zip says unix", build_windows_binary(w / "16", built="R 4.3.1; ; 2024; unix").path, "binary",
         "not a Windows binary"),
        ("tgz as zip", make_renamed(built["mac"].path, w / "17", "abc_2.1.zip"), "binary",
         "not a zip"),
        ("bad Built", build_windows_binary(w / "18", built="R4; ; 2024; windows").path, "binary",
         "Built field .* does not start with 'R x.y.z'"),
    ]


def test_malformed_uploads_are_rejected_with_the_reason(
    built: dict[str, BuiltPackage], tmp_path: Path
) -> None:
    for label, path, kind, reason in _bad_cases(tmp_path, built):
        inspect = inspect_source if kind == "source" else inspect_binary
        with pytest.raises(BadRequest, match=reason) as info:
            inspect(path, path.name)
        assert http_status(info.value) == 400, label
    with pytest.raises(BadRequest, match="unknown filetype"):
        inspect_upload(built["abc_2.1"].path, "abc_2.1.tar.gz", "cran_package")
    with pytest.raises(BadRequest, match="invalid file name"):
        inspect_source(built["abc_2.1"].path, "../abc_2.1.tar.gz")


def test_truncated_source_is_rejected_at_any_length(built: dict[str, BuiltPackage], tmp_path: Path) -> None:
    data = built["abc_2.1"].path.read_bytes()
    p = tmp_path / "abc_2.1.tar.gz"
    for cut in (10, len(data) // 3, len(data) - 9, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(BadRequest, match="truncated|not a gzip"):
            inspect_source(p, p.name)


# ------------------------------------------------------------------ indexes, read by R

def test_parse_packages_reads_r_indexes(r_repo: Path) -> None:
    plain = parse_packages((r_repo / "src/contrib/PACKAGES").read_bytes())
    gz = parse_packages((r_repo / "src/contrib/PACKAGES.gz").read_bytes())
    assert plain == gz
    assert [(e["Package"], e["Version"]) for e in plain] == [("abc", "2.1"), ("xyz", "0.1-2")]
    assert plain[1]["Depends"] == "R (>= 4.0), abc" and plain[1]["OS_type"] == "unix"
    with pytest.raises(BadRequest, match="gzip"):
        parse_packages(b"\x1f\x8b" + b"broken")


@needs_r
@pytest.mark.parametrize("tree", ["src/contrib", "bin/windows/contrib/4.3", "bin/macosx/big-sur-arm64/contrib/4.3"])
def test_our_rds_is_identical_to_r_write_packages(r_repo: Path, tmp_path: Path, tree: str) -> None:
    entries = parse_packages((r_repo / tree / "PACKAGES").read_bytes())
    binary = is_binary_contrib_dir(tree)
    (tmp_path / "gz.rds").write_bytes(render_packages_rds(entries, binary=binary))
    (tmp_path / "xz.rds").write_bytes(render_packages_rds(entries, compression="xz", binary=binary))
    (tmp_path / "raw.rds").write_bytes(render_packages_rds(entries, compression="none", binary=binary))
    out = r_lines(
        f'r <- readRDS("{r_repo / tree}/PACKAGES.rds"); rownames(r) <- unname(rownames(r)); '
        'for (f in c("gz.rds", "xz.rds", "raw.rds")) { o <- readRDS(f); '
        'cat(f, identical(o, r), is.character(o), is.matrix(o), "\\n") }',
        cwd=tmp_path,
    )
    assert out == ["gz.rds TRUE TRUE TRUE ", "xz.rds TRUE TRUE TRUE ", "raw.rds TRUE TRUE TRUE "]


@needs_r
def test_empty_and_unicode_rds_read_by_r(tmp_path: Path) -> None:
    (tmp_path / "empty.rds").write_bytes(render_packages_rds([]))
    (tmp_path / "u.rds").write_bytes(render_packages_rds([
        {"Package": "uni", "Version": "1.0", "License": "GPL (>= 2) | file LICENCE — ü"},
    ]))
    out = r_lines(
        'e <- readRDS("empty.rds"); cat(dim(e), is.null(rownames(e)), "\\n"); '
        'u <- readRDS("u.rds"); cat(u[1, "License"] == "GPL (>= 2) | file LICENCE \\u2014 \\u00fc", '
        'Encoding(u[1, "License"]), "\\n")',
        cwd=tmp_path,
    )
    assert out == ["0 15 TRUE ", "TRUE UTF-8 "]


def _write_our_repo(root: Path, pkgs: list[CranPackage], files: dict[str, Path]) -> None:
    """Lay out uploads the way channelgate serves them: newest per folder, older archived."""
    by_dir: dict[str, list[CranPackage]] = {}
    for p in pkgs:
        by_dir.setdefault(p.contrib_dir, []).append(p)
    for d, group in by_dir.items():
        latest, _older = split_latest([p.fields for p in group])
        newest = {e["MD5sum"] for e in latest}
        for p in group:
            dest = root / (p.path_in_repo if p.md5 in newest else p.archive_path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(files[p.filename].read_bytes())
        idx = render_index(latest, binary=is_binary_contrib_dir(d))
        for name in ("PACKAGES", "PACKAGES.gz", "PACKAGES.rds"):
            (root / d / name).write_bytes(idx.get(name))


@needs_r
def test_r_uses_our_index_available_and_install(built: dict[str, BuiltPackage], tmp_path: Path) -> None:
    srcs = [built["abc_2.0"], built["abc_2.1"], built["xyz_0.1-2"]]
    pkgs = [inspect_source(b.path, b.filename) for b in srcs]
    pkgs.append(inspect_binary(built["win"].path, built["win"].filename))
    files = {b.filename: b.path for b in [*srcs, built["win"]]}
    repo = tmp_path / "repo"
    _write_our_repo(repo, pkgs, files)
    assert (repo / "src/contrib/Archive/abc/abc_2.0.tar.gz").is_file()
    lib = tmp_path / "lib"
    lib.mkdir()
    out = r_lines(
        f'repo <- "file://{repo}"; '
        'a <- available.packages(repos = repo, type = "source", filters = list()); '
        'cat(a[, "Package"], "|", a[, "Version"], "|", a["abc", "Imports"], "|", a["abc", "MD5sum"], "\\n"); '
        'w <- available.packages(contriburl = paste0(repo, "/bin/windows/contrib/4.3"), type = "win.binary", filters = list()); '
        'cat(w[, "Package"], w[, "Version"], "\\n"); '
        f'install.packages("abc", repos = repo, type = "source", lib = "{lib}", quiet = TRUE); '
        f'library(abc, lib.loc = "{lib}"); cat(abc_hello(), "\\n")'
    )
    assert out[0] == f"abc xyz | 2.1 0.1-2 | stats, utils | {pkgs[1].md5} "
    assert out[1] == "abc 2.1 "
    assert out[2] == "hello from abc 2.1 "


@needs_r
def test_r_falls_back_to_our_packages_gz(built: dict[str, BuiltPackage], tmp_path: Path) -> None:
    b = built["abc_2.1"]
    pkg = inspect_source(b.path, b.filename)
    contrib = tmp_path / "src/contrib"
    contrib.mkdir(parents=True)
    (contrib / "PACKAGES.gz").write_bytes(render_index([pkg.fields]).packages_gz)
    assert gzip.decompress((contrib / "PACKAGES.gz").read_bytes()).startswith(b"Package: abc\n")
    # read.dcf on our gz index, as available.packages does after an .rds failure
    out = r_lines(f'x <- read.dcf(gzfile("{contrib}/PACKAGES.gz")); cat(x[1, "Package"], x[1, "MD5sum"], "\\n")')
    assert out == [f"abc {pkg.md5} "]


@needs_r
def test_archive_rds_is_what_cran_publishes(tmp_path: Path) -> None:
    files = [
        ArchivedFile("abc", "abc_1.10.tar.gz", 100, 1_700_000_000),
        ArchivedFile("abc", "abc_1.9.tar.gz", 99, 1_600_000_000),
        ArchivedFile("Bz", "Bz_0.1-1.tar.gz", 5, 1_500_000_000),
    ]
    (tmp_path / "archive.rds").write_bytes(render_archive_rds(files))
    (tmp_path / "f").write_bytes(b"x")
    out = r_lines(
        'a <- readRDS("archive.rds"); cat(names(a), "\\n"); cat(rownames(a$abc), "\\n"); '
        'cat(a$abc$size, as.numeric(a$abc$mtime), "\\n"); fi <- file.info("f"); '
        'cat(identical(lapply(fi, class), lapply(a$Bz, class)), identical(names(fi), names(a$Bz)), "\\n")',
        cwd=tmp_path,
    )
    assert out == [
        "abc Bz ",
        "abc/abc_1.9.tar.gz abc/abc_1.10.tar.gz ",
        "99 100 1.6e+09 1.7e+09 ",
        "TRUE TRUE ",
    ]


# ------------------------------------------------------------------ rds writer vs the rdata package

def _rdata_bytes(obj: RValue) -> bytes:
    """The same R object built with the rdata package's builders and XDR unparser."""
    import numpy as np
    from rdata.conversion.to_r import R_MINIMUM_VERSIONS, ConverterFromPythonToR, build_r_char, build_r_object
    from rdata.parser import RData, RExtraInfo, RObjectType, RVersions
    from rdata.unparser import unparse_data

    conv = ConverterFromPythonToR(encoding="utf-8")
    types = {"str": RObjectType.STR, "int": RObjectType.INT, "lgl": RObjectType.LGL,
             "real": RObjectType.REAL, "list": RObjectType.VEC}

    def build(o: RValue):  # type: ignore[no-untyped-def]
        if o is None:
            return build_r_object(RObjectType.NILVALUE)
        value: object
        if o.type == "str":
            value = [build_r_char(v, encoding="utf-8") for v in o.values]  # type: ignore[arg-type]
        elif o.type == "list":
            value = [build(v) for v in o.values]  # type: ignore[arg-type]
        else:
            value = np.array(o.values, dtype=np.float64 if o.type == "real" else np.int32)
        attrs = None
        if o.attributes:
            from rdata.conversion.to_r import build_r_list
            attrs = build_r_list([(conv.convert_to_r_sym(k), build(v)) for k, v in o.attributes])
        return build_r_object(types[o.type], value=value, attributes=attrs,
                              is_object=any(k == "class" for k, _ in o.attributes))

    data = RData(RVersions(3, R_VERSION, R_MINIMUM_VERSIONS[3]), RExtraInfo("UTF-8"), build(obj))
    return unparse_data(data, file_format="xdr", file_type="rds")


def test_rds_writer_matches_rdata_byte_for_byte() -> None:
    entries = [
        {"Package": "abc", "Version": "2.1", "Depends": "R (>= 3.5)", "License": "GPL-2"},
        {"Package": "uni", "Version": "1.0-1", "License": "MIT — ü", "Built": "R 4.3.1; ; x; windows"},
    ]
    for obj in (
        packages_matrix(entries), packages_matrix(entries, binary=True), packages_matrix([]),
        archive_list([ArchivedFile("abc", "abc_1.10.tar.gz", 100, 1.7e9 + 0.5),
                      ArchivedFile("abc", "abc_1.9.tar.gz", 99, 1.6e9), ArchivedFile("Bz", "Bz_0.1.tar.gz", 5, 1.5e9)]),
        archive_list([]),
    ):
        assert serialize(obj) == _rdata_bytes(obj)


def test_archive_rds_round_trips_through_the_rdata_parser() -> None:
    files = [ArchivedFile("abc", "abc_1.9.tar.gz", 99, 1.6e9), ArchivedFile("abc", "abc_1.10.tar.gz", 100, 1.7e9),
             ArchivedFile("Bz", "Bz_0.1.tar.gz", 5, 1.5e9)]
    assert parse_archive_rds(render_archive_rds(files)) == files
    with pytest.raises(BadRequest, match="archive.rds"):
        parse_archive_rds(render_packages_rds([{"Package": "x", "Version": "1.0"}]))


@needs_r
def test_parse_archive_rds_reads_what_r_writes(r_repo: Path) -> None:
    files = parse_archive_rds((r_repo / "src/contrib/Meta/archive.rds").read_bytes())
    assert [(f.package, f.filename) for f in files] == [("abc", "abc_2.0.tar.gz")]
    assert files[0].size == (r_repo / "src/contrib/Archive/abc/abc_2.0.tar.gz").stat().st_size


@pytest.mark.parametrize(("rest", "expect"), [
    ("src/contrib/PACKAGES.rds", ("src/contrib", "source", "index", "PACKAGES.rds", "")),
    ("src/contrib/abc_1.0.tar.gz", ("src/contrib", "source", "file", "abc_1.0.tar.gz", "")),
    ("src/contrib/4.3.1/Recommended/MASS_7.3.tar.gz",
     ("src/contrib", "source", "file", "4.3.1/Recommended/MASS_7.3.tar.gz", "")),
    ("src/contrib/Archive/abc/abc_0.9.tar.gz", ("src/contrib", "source", "archive", "abc_0.9.tar.gz", "abc")),
    ("src/contrib/Meta/archive.rds", ("src/contrib", "source", "archive_meta", "archive.rds", "")),
    ("bin/windows/contrib/4.3/PACKAGES", ("bin/windows/contrib/4.3", "windows", "index", "PACKAGES", "")),
    ("bin/windows/contrib/4.3/abc_1.0.zip", ("bin/windows/contrib/4.3", "windows", "file", "abc_1.0.zip", "")),
    ("bin/macosx/big-sur-arm64/contrib/4.4/abc_1.0.tgz",
     ("bin/macosx/big-sur-arm64/contrib/4.4", "macos", "file", "abc_1.0.tgz", "")),
    ("bin/macosx/contrib/4.0/PACKAGES.gz", ("bin/macosx/contrib/4.0", "macos", "index", "PACKAGES.gz", "")),
])
def test_parse_cran_path(rest: str, expect: tuple[str, ...]) -> None:
    cp = parse_cran_path(rest)
    assert (cp.contrib_dir, cp.tree, cp.kind, cp.name, cp.package) == expect


@pytest.mark.parametrize("rest", [
    "src/contrib/", "src/contrib/../x.tar.gz", "src/contrib/abc_1.0.zip", "bin/windows/contrib/x/PACKAGES",
    "bin/windows/contrib/4.3/abc_1.0.tgz", "src/contrib/Archive/abc/other_1.0.tar.gz", "bin/linux/contrib/4.3/PACKAGES",
    "src/contrib/Archive/abc/..", "bin/macosx/contrib/PACKAGES",
])
def test_parse_cran_path_rejects(rest: str) -> None:
    with pytest.raises(NotFound):
        parse_cran_path(rest)


def test_read_rds_round_trips_the_writer() -> None:
    obj = packages_matrix([{"Package": "abc", "Version": "2.1", "License": "MIT — ü"}])
    for compression in ("gzip", "xz", "none"):
        assert read_rds(write_rds(obj, compression=compression)) == obj  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        read_rds(b"RDX3\n")


@needs_r
def test_read_rds_reads_r_saverds(tmp_path: Path) -> None:
    run_r('x <- list(a = data.frame(n = c(1.5, NA), s = c("x", NA), i = c(1L, 5L), stringsAsFactors = FALSE), '
          'b = NULL, c = c(TRUE, FALSE)); saveRDS(x, "x.rds", compress = "bzip2"); '
          'saveRDS(1:10, "altrep.rds"); '
          'f <- file.info("x.rds"); f$uid <- seq_len(nrow(f)); rownames(f) <- "abc/abc_1.0.tar.gz"; '
          'saveRDS(list(abc = f), "archive.rds")', cwd=tmp_path)
    top = read_rds((tmp_path / "x.rds").read_bytes())
    assert isinstance(top, RVector) and top.type == "list"
    frame = top.values[0]
    assert isinstance(frame, RVector)
    assert [k for k, _ in top.attributes] == ["names"]
    assert frame.values[1] == RVector("str", ["x", None])
    assert frame.values[2] == RVector("int", [1, 5])
    # compact sequences (ALTREP) are beyond the fast reader: parse_archive_rds falls back to rdata
    with pytest.raises(UnsupportedRds):
        read_rds((tmp_path / "altrep.rds").read_bytes())
    files = parse_archive_rds((tmp_path / "archive.rds").read_bytes())
    assert [(f.package, f.filename, f.size) for f in files] == [
        ("abc", "abc_1.0.tar.gz", (tmp_path / "x.rds").stat().st_size)]


def test_archive_rds_beyond_the_reader_without_rdata_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """rdata is an optional extra (it pulls numpy, pandas, xarray): without it, a listing
    in a part of R's format the built-in reader does not cover is a clear upstream error."""
    import struct
    import sys

    # format 3 header, then an ALTREP item (type 238), which the built-in reader does not cover
    data = b"X\n" + struct.pack(">iiii", 3, R_VERSION, 0x030500, 5) + b"UTF-8" + struct.pack(">ii", 238, 0)
    with pytest.raises(UnsupportedRds):
        read_rds(data)
    monkeypatch.setitem(sys.modules, "rdata", None)
    monkeypatch.setitem(sys.modules, "rdata.parser", None)
    with pytest.raises(UpstreamError, match=r"pip install 'channelgate\[rdata\]'"):
        parse_archive_rds(data)
