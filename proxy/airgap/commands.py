"""The air-gap command line: ``seed``, ``export``, ``import``, ``cache`` (DESIGN, "Command line"
and "Air-gap"). Each prints what it did and exits non-zero with a clear message on failure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..settings import load_settings_or_report
from .bundle import BundleError
from .progress import human



def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_bundle, manifest_path

    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    try:
        done = export_bundle(settings, Path(args.out), list(args.channel), Path(args.since) if args.since else None)
    except BundleError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {done.members} member(s), {human(done.bytes)} of content, "
          f"channels {', '.join(done.channels) or '-'}; manifest {manifest_path(Path(args.out))}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .importing import import_bundle

    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    try:
        report = import_bundle(settings, Path(args.bundle))
    except BundleError as exc:
        print(f"import refused, nothing was published: {exc}", file=sys.stderr)
        return 1
    before = " (imported before: the store knows its manifest)" if report.imported_before else ""
    if not report.changed_shared and report.index_copies == 0:
        print(f"{args.bundle}: verified; everything in it was already stored (nothing changed){before}")
    elif not report.changed_shared:
        print(f"{args.bundle}: verified; the shared store is unchanged{before}; copied {report.index_copies} "
              f"index document(s) into this host's index cache")
    else:
        print(f"{args.bundle}: verified and published {report.files} new file(s), {report.index_copies} index "
              f"document(s), {human(report.bytes)}, {report.rows} catalog row(s), {report.settings} package "
              f"setting(s); {report.unchanged} already stored")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    import asyncio

    from .seed import print_summary, seed
    from .seedfile import load_seed_file

    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    try:
        seed_file = load_seed_file(Path(args.seedfile), settings)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if settings.offline:
        print("the policy says offline: true; seed fetches from upstreams (run it on the connected side)",
              file=sys.stderr)
        return 2
    tallies, failures = asyncio.run(seed(settings, seed_file))
    print_summary(tallies, failures)
    if failures:
        print(f"{len(failures)} failure(s): see above", file=sys.stderr)
        return 1
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import cache_admin

    if not args.config:
        print("channelgate cache: --config is required", file=sys.stderr)
        return 2
    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    action = getattr(args, "cache_command", None)
    if action == "verify":
        from .verify import verify

        checked = verify(settings)
        print(f"verified {checked.checked} stored file(s): {len(checked.mismatches)} mismatch(es), "
              f"{len(checked.missing)} missing")
        for line in checked.mismatches + checked.missing:
            print(line)
        return 1 if checked.mismatches or checked.missing else 0
    if action == "prune":
        if args.older_than is None and args.max_size is None:
            print("cache prune needs --older-than DAYS and/or --max-size SIZE", file=sys.stderr)
            return 2
        try:
            max_size = cache_admin.parse_size(args.max_size) if args.max_size else None
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        files, freed = cache_admin.prune(settings, older_than_days=args.older_than, max_size=max_size)
        print(f"removed {files} cached artifact(s), {human(freed)}; uploads, indexes and imported files kept")
        return 0
    found = cache_admin.usage(settings)
    console = Console()
    table = Table(title=f"cache of {settings.storage_path}")
    for column in ("upstream", "artifacts", "indexes"):
        table.add_column(column, justify="left" if column == "upstream" else "right")
    for name in sorted(set(found.upstream_artifacts) | set(found.upstream_indexes)):
        table.add_row(name, human(found.upstream_artifacts.get(name, 0)), human(found.upstream_indexes.get(name, 0)))
    console.print(table)
    table = Table(title="per channel (uploads, plus its upstreams' share)")
    for column in ("channel", "uploads", "total"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for name, total in sorted(found.channels.items()):
        table.add_row(name, human(found.channel_uploads.get(name, 0)), human(total))
    console.print(table)
    return 0


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    seed = sub.add_parser("seed", help="fill the store with everything a seed file resolves to")
    seed.add_argument("--config", required=True)
    seed.add_argument("seedfile", metavar="SEEDFILE")
    seed.set_defaults(func=cmd_seed)

    export = sub.add_parser("export", help="write a bundle of the store for an air-gapped site")
    export.add_argument("--config", required=True)
    export.add_argument("--out", required=True, metavar="BUNDLE", help="the bundle (a tar) to write")
    export.add_argument("--channel", action="append", default=[], help="repeatable; default: every channel")
    export.add_argument("--since", metavar="OLD_MANIFEST", help="write only what this earlier manifest lacks")
    export.set_defaults(func=cmd_export)

    cache = sub.add_parser("cache", help="show the store's size per channel and upstream; prune; verify")
    cache.add_argument("--config", help="policy file (also accepted after prune/verify)")
    cache.set_defaults(func=cmd_cache)
    cache_sub = cache.add_subparsers(dest="cache_command")
    prune = cache_sub.add_parser(
        "prune", help="remove cached upstream artifacts unused for DAYS, or least recently used down to a size")
    prune.add_argument("--config", default=argparse.SUPPRESS)
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="not served (nor fetched) for DAYS")
    prune.add_argument("--max-size", metavar="SIZE", help="until the cached artifacts fit in SIZE (e.g. 20G)")
    verify = cache_sub.add_parser("verify", help="re-hash every stored file and report mismatches")
    verify.add_argument("--config", default=argparse.SUPPRESS)

    imp = sub.add_parser("import", help="verify a bundle, then publish it into the store")
    imp.add_argument("--config", required=True)
    imp.add_argument("bundle", metavar="BUNDLE")
    imp.set_defaults(func=cmd_import)
