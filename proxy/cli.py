"""Command line: ``channelgate serve | check-config | token create|list|revoke | user password``
(DESIGN, "Command line" and "Accounts")."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml
from aiohttp import web

from . import __version__, logs, self_reference
from . import server as listener
from .airgap import commands as airgap_commands
from .app import Gateway, open_services, reload_policy
from .auth import commands as account_commands
from .auth.credentials import generate_token, hash_token
from .auth.tokens_file import append_token_entry
from .context import Services
from .control import PidFile, reload_servers, write_reload_status
from .errors import ConfigError, StorageError
from .metrics import MULTIPROC_ENV, metrics_only_handler, worker_exited
from .settings import SCOPES, Settings, load_settings, parse_settings
from .store import migrate as migrate_command
from .tls import reload_certificate, server_context

log = logging.getLogger("proxy.cli")


def _embedded_default() -> Settings:
    """config/quickstart.yaml, shipped inside the package; relative paths resolve against the CWD."""
    text = resources.files("proxy").joinpath("quickstart.yaml").read_text(encoding="utf-8")
    return parse_settings(text, source=None)


@dataclass(frozen=True)
class ServeOptions:
    """How this process serves: ``sock``/``metrics_sock`` are bound by cmd_serve before
    anything touches disk (and inherited by --workers children), ``main_pid`` names the pid
    file (the parent's under --workers); ``clean_tmp`` is False in children (the parent cleaned)."""

    listen: str
    sock: socket.socket
    json_logs: bool = False
    metrics_sock: socket.socket | None = None
    main_pid: int = 0
    clean_tmp: bool = True


async def _start_sites(runner: web.BaseRunner, settings: Settings, opts: ServeOptions, tls: ssl.SSLContext | None) -> None:
    site = web.SockSite(runner, opts.sock, ssl_context=tls)
    await site.start()
    log.info("listening on %s", site.name)


async def _start_metrics(services: Services, opts: ServeOptions) -> web.BaseRunner | None:
    """server.metrics_listen: /metrics alone on its own address (plain HTTP), behind the same
    connection guard as the main listener (server.limits: connection cap, head, body and
    keep-alive timeouts); its connections are not counted as clients'."""
    if opts.metrics_sock is None:
        return None
    server = listener.GuardedServer(metrics_only_handler(services.metrics), limits=services.settings.limits, metrics=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, opts.metrics_sock)
    await site.start()
    log.info("metrics on %s/metrics", site.name)
    return runner


def _on_sighup(services: Services, policy_path: Path | None, tls: ssl.SSLContext | None, main_pid: int) -> None:
    problems = reload_policy(services, policy_path)
    if tls is not None:
        problems += reload_certificate(tls, services.settings)
    write_reload_status(services.settings.storage_path, main_pid, problems)


async def _serve(settings: Settings, policy_path: Path | None, opts: ServeOptions) -> None:
    """Serve until SIGTERM/SIGINT, on aiohttp's low-level server (no router or middleware
    chain: app.Gateway is the one handler)."""
    tls = server_context(settings)
    listener.install_accept_error_handler(asyncio.get_running_loop())
    await listener.start_worker_threads()
    async with open_services(settings, clean_tmp=opts.clean_tmp) as services:
        sink = logs.AccessSink(json_lines=opts.json_logs, metrics=services.metrics)
        server = listener.GuardedServer(
            Gateway(services).handle,
            limits=settings.limits,
            metrics=services.metrics,
            access_log_class=logs.AccessLogger,
            access_log=sink,
        )
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        await _start_sites(runner, settings, opts, tls)
        for sock in (opts.sock, opts.metrics_sock):  # index entries may never point at these
            if sock is not None:
                host, port = sock.getsockname()[:2]
                services.upstream.own.add_listen(str(host), int(port))
        metrics_runner = await _start_metrics(services, opts)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, services, policy_path, tls, opts.main_pid or os.getpid())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            await runner.cleanup()
            sink.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        if args.config:
            policy_path = Path(args.config).resolve()
            settings = load_settings(policy_path)
        else:
            policy_path = None
            settings = _embedded_default()
            log.info("no --config given: running on the embedded default policy (storage under ./var)")
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        opts = _bind(settings, args.listen or settings.listen, json_logs=args.log_format == "json")
    except ConfigError as exc:
        print(exc.problems[0], file=sys.stderr)
        return 2
    pid_file = PidFile(settings.storage_path, policy_path, max(args.workers, 1))
    try:
        pid_file.open()
    except OSError as exc:
        print(f"cannot write the pid file under {settings.storage_path}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.workers > 1:
            return _serve_workers(settings, policy_path, opts, args.workers, args.event_loop)
        _install_loop(args.event_loop)
        asyncio.run(_serve(settings, policy_path, opts))
        return 0
    except (ConfigError, StorageError) as exc:  # a backend that cannot be opened: one line (DESIGN)
        print(exc.problems[0] if isinstance(exc, ConfigError) else exc.message, file=sys.stderr)
        return 1
    finally:
        pid_file.close()


def _bind(settings: Settings, listen: str, *, json_logs: bool) -> ServeOptions:
    """DESIGN: start-up problems are one line, found before anything changes on disk: the
    ports first (a second serve on a busy port must not clean the running one's tmp/), then
    the storage. Raises ConfigError."""
    sock = listener.bind(listen)
    metrics_sock = None
    try:
        if settings.metrics_listen is not None:
            metrics_sock = listener.bind(settings.metrics_listen)
        found = self_reference.problems(settings, [self_reference.bound(s) for s in (sock, metrics_sock) if s])
        if found:
            raise ConfigError(found)
        listener.check_storage(settings.storage_path)
    except ConfigError:
        sock.close()
        if metrics_sock is not None:
            metrics_sock.close()
        raise
    listener.raise_fd_limit(settings.limits)
    return ServeOptions(listen=listen, sock=sock, json_logs=json_logs, metrics_sock=metrics_sock)


def _install_loop(name: str) -> None:
    """asyncio's own loop by default: its transports do kernel sendfile, which aiohttp's
    FileResponse uses for package files (uvloop has none, so files would be copied through
    Python: 0.66x nginx instead of ~0.9x on 8 parallel 256 MiB downloads). uvloop is an
    opt-in for servers that mostly answer small index pages."""
    if name == "uvloop":
        try:
            import uvloop  # the optional extra "fast"
        except ImportError:
            raise SystemExit("--event-loop uvloop needs uvloop: pip install 'channelgate[fast]'") from None
        uvloop.install()


def _serve_workers(settings: Settings, policy_path: Path | None, opts: ServeOptions, workers: int, event_loop: str) -> int:
    """N processes accept on one listening socket that the parent binds (no SO_REUSEPORT,
    so no other process can join the port); the parent forwards SIGHUP/SIGTERM.

    The parent cleans the store's tmp/ once before forking, so no worker can remove a
    sibling's download in progress. Uploads are seen by every worker at once: the catalog
    notices other processes' commits (catalog.py, data_version). Metrics: every worker
    writes to one prometheus-client multiprocess directory, so any worker's /metrics (or
    the shared metrics_listen socket) answers the sum.
    """
    from .store.backends import create_sqlite_files
    from .store.blobs import BlobStore

    BlobStore(settings.storage_path).open()
    if not settings.database_url:  # PostgreSQL: each worker migrates under an advisory lock
        create_sqlite_files(settings.storage_path)
    metrics_dir = tempfile.mkdtemp(prefix="channelgate-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus-client
    opts = replace(opts, main_pid=os.getpid(), clean_tmp=False)
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                _install_loop(event_loop)
                asyncio.run(_serve(settings, policy_path, opts))
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    opts.sock.close()  # the children hold them
    if opts.metrics_sock is not None:
        opts.metrics_sock.close()
    log.info("started %d workers on %s", workers, opts.listen)
    try:
        return _supervise(children)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(children: list[int]) -> int:
    """Forward signals to the workers and wait for them; one failing stops the others."""

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        remaining.discard(pid)
        worker_exited(pid)
        if code and status == 0:
            status = 1
            log.error("worker %d exited with status %d; stopping the others", pid, code)
            forward(signal.SIGTERM, None)
    return status


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        found = self_reference.problems(settings, [settings.listen, settings.metrics_listen])
        if found:
            raise ConfigError(found)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(
        f"{args.config}: OK ({len(settings.channels)} channel(s), {len(settings.upstreams)} upstream(s), "
        f"{len(settings.tokens)} token(s))"
    )
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    unknown = [s for s in args.scope if s not in SCOPES]
    if unknown:
        print(f"unknown scope(s): {', '.join(unknown)} (known: {', '.join(sorted(SCOPES))})", file=sys.stderr)
        return 2
    token = generate_token()
    entry: dict[str, object] = {
        # default names must stay unique when several tokens are made in the same second
        "name": args.name or f"{args.user}-{dt.datetime.now(dt.timezone.utc):%Y%m%d}-{secrets.token_hex(4)}",
        "user": args.user,
        "sha256": f"sha256:{hash_token(token)}",
        "scopes": list(dict.fromkeys(args.scope)),
    }
    if args.expires is not None:
        entry["expires"] = (dt.date.today() + dt.timedelta(days=args.expires)).isoformat()
    snippet = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None)
    print(f"token (shown once, store it now): {token}")
    print("YAML entry for tokens: (or the tokens_file):")
    print(snippet, end="")
    if args.append:
        path = Path(args.append)
        try:
            append_token_entry(path, entry)
        except (ConfigError, OSError) as exc:
            why = exc.problems[0] if isinstance(exc, ConfigError) else f"cannot write {path}: {exc}"
            print(f"not appended: {why}. The token above works once its entry is in the policy.", file=sys.stderr)
            return 1
        print(f"appended to {path}; apply it with: channelgate reload --config <your policy file>")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload the running server(s) of this policy's store: SIGHUP through the pid file,
    then the outcome each serving process reports (DESIGN, "Operations")."""
    config = Path(args.config).resolve()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found; the running policy stays", file=sys.stderr)
        return 1
    problems = reload_servers(settings.storage_path, config)
    if problems:
        for problem in problems:
            print(problem)
        return 1
    print("reloaded")
    return 0


def _log_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--log-level/--log-format, accepted before and after the subcommand; after wins.
    Values are checked in main() so a bad one is one clear line, not a usage dump."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--log-level", default=default("INFO"), metavar="LEVEL", help="/".join(logs.LEVELS))
    parser.add_argument("--log-format", default=default("text"), metavar="FORMAT", help="text (default) or json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="channelgate", description="Authenticating, caching proxy for conda, PyPI and CRAN.")
    parser.add_argument("--version", action="version", version=f"channelgate {__version__}")
    _log_options(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)  # parent of subcommands that ask for it
    _log_options(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", help="policy file (default: the embedded quickstart policy)")
    serve.add_argument("--listen", help="HOST:PORT (overrides server.listen)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    serve.add_argument(
        "--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
        help="asyncio (default: kernel sendfile for package files) or uvloop",
    )
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a policy file")
    check.add_argument("--config", required=True)
    check.set_defaults(func=cmd_check_config)

    token = sub.add_parser("token", help="manage tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="print a new token and its YAML entry")
    create.add_argument("--user", required=True)
    create.add_argument("--scope", action="append", required=True, help="repeatable: " + ", ".join(sorted(SCOPES)))
    create.add_argument("--expires", type=int, metavar="DAYS")
    create.add_argument("--name", help="entry name (default: <user>-<timestamp>)")
    create.add_argument("--append", metavar="TOKENS_FILE", help="also append the entry to this tokens file")
    create.set_defaults(func=cmd_token_create)
    account_commands.add_parsers(token_sub, sub, common)
    airgap_commands.add_parsers(sub)
    migrate_command.add_parser(sub)

    reload = sub.add_parser("reload", help="reload the running server's policy (and TLS certificate)")
    reload.add_argument("--config", required=True, help="the policy file the server runs with")
    reload.set_defaults(func=cmd_reload)
    _log_options_on_subcommands(parser)
    return parser


def _log_options_on_subcommands(parser: argparse.ArgumentParser) -> None:
    """Every subcommand, however deep and whoever added it, takes the log options too."""
    for action in parser._actions:  # argparse keeps its subcommands there
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(p): p for p in action.choices.values()}.values():
                if "--log-level" not in child._option_string_actions:
                    _log_options(child, top=False)
                _log_options_on_subcommands(child)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level, fmt = str(args.log_level).upper(), str(args.log_format).lower()
    if level not in logs.LEVELS:
        print(f"channelgate: --log-level must be one of {', '.join(logs.LEVELS)}, not {args.log_level!r}", file=sys.stderr)
        return 2
    if fmt not in logs.FORMATS:
        print(f"channelgate: --log-format must be one of {', '.join(logs.FORMATS)}, not {args.log_format!r}", file=sys.stderr)
        return 2
    args.log_format = fmt
    logs.configure(level, fmt)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
