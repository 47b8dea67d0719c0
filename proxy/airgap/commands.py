"""The air-gap command line: ``seed``, ``export``, ``import``, ``cache`` (DESIGN, "Command line"
and "Air-gap"). Each prints what it did and exits non-zero with a clear message on failure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..settings import Settings, load_settings
from .bundle import BundleError
from .progress import human


def _settings(path: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_bundle, manifest_path

    settings = _settings(args.config)
    if settings is None:
        return 2
    try:
        manifest = export_bundle(settings, Path(args.out), list(args.channel), Path(args.since) if args.since else None)
    except BundleError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    size = sum(m.size for m in manifest.members.values())
    print(f"wrote {args.out}: {len(manifest.members)} member(s), {human(size)} of content, "
          f"channels {', '.join(manifest.channels) or '-'}; manifest {manifest_path(Path(args.out))}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .importing import import_bundle

    settings = _settings(args.config)
    if settings is None:
        return 2
    try:
        report = import_bundle(settings, Path(args.bundle))
    except BundleError as exc:
        print(f"import refused, nothing was published: {exc}", file=sys.stderr)
        return 1
    if report.files == 0 and report.rows == 0:
        print(f"{args.bundle}: verified; everything in it was already stored (nothing changed)")
    else:
        print(f"{args.bundle}: verified and published {report.files} new file(s), {human(report.bytes)}, "
              f"{report.rows} catalog row(s); {report.unchanged} already stored")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    import asyncio

    from .seed import print_summary, seed
    from .seedfile import load_seed_file

    settings = _settings(args.config)
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

    imp = sub.add_parser("import", help="verify a bundle, then publish it into the store")
    imp.add_argument("--config", required=True)
    imp.add_argument("bundle", metavar="BUNDLE")
    imp.set_defaults(func=cmd_import)
