"""Command line for accounts: ``channelgate token list|revoke`` (both kinds of token) and
``channelgate user password NAME`` (DESIGN, "Accounts, tokens made by users")."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys

import yaml

from ..audit import audit
from ..settings import Settings, load_settings_or_report
from ..store.backends import open_catalog
from .accounts import hash_password


def add_parsers(token_sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
                sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
                common: argparse.ArgumentParser) -> None:
    listing = token_sub.add_parser("list", help="list policy and user-made tokens (never a secret)", parents=[common])
    listing.add_argument("--config", required=True)
    listing.set_defaults(func=cmd_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke a token by name (either kind)", parents=[common])
    revoke.add_argument("name")
    revoke.add_argument("--config", required=True)
    revoke.add_argument("--user", help="the token's user, when several users have a token of that name")
    revoke.set_defaults(func=cmd_token_revoke)

    user = sub.add_parser("user", help="manage users", parents=[common])
    user_sub = user.add_subparsers(dest="user_command", required=True)
    password = user_sub.add_parser("password", help="print the scrypt hash of a new password for NAME", parents=[common])
    password.add_argument("name")
    password.set_defaults(func=cmd_user_password)



def cmd_token_list(args: argparse.Namespace) -> int:
    """Every token, policy and user-made, with its state; never a secret (none is stored)."""
    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    return asyncio.run(_token_list(settings))


async def _token_list(settings: Settings) -> int:
    async with open_catalog(settings, listen=False) as (_, store):
        revoked = store.revoked_policy_tokens()
        made = store.all()
    today = dt.date.today()
    rows = [("NAME", "USER", "KIND", "SCOPES", "EXPIRES", "STATE")]
    for entry in settings.tokens:
        state = "revoked" if entry.sha256 in revoked else (
            "expired" if entry.expires is not None and today > entry.expires else "active")
        rows.append((entry.name, entry.user, "policy", " ".join(sorted(entry.scopes)),
                     entry.expires.isoformat() if entry.expires else "never", state))
    for token in made:
        expires = dt.datetime.fromtimestamp(token.expires_at, dt.timezone.utc)
        rows.append((token.name, token.user, "user-made", " ".join(token.scopes),
                     expires.strftime("%Y-%m-%d %H:%M"), "expired" if token.expired() else "active"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by name: a user-made one is deleted, a policy one is refused from now on
    (every worker and replica within a second); remove its YAML entry at leisure."""
    settings = load_settings_or_report(args.config)
    if settings is None:
        return 2
    return asyncio.run(_token_revoke(settings, args.name, args.user))


async def _token_revoke(settings: Settings, name: str, user: str | None) -> int:
    async with open_catalog(settings, listen=False) as (_, store):
        policy = [e for e in settings.tokens if e.name == name and (user is None or e.user == user)]
        made = [t for t in store.all() if t.name == name and (user is None or t.user == user)]
        if len(policy) + len(made) > 1:
            owners = sorted({e.user for e in policy} | {t.user for t in made})
            print(f"several tokens are named {name!r} (users: {', '.join(owners)}); pass --user", file=sys.stderr)
            return 2
        if policy:
            await store.revoke_policy_token(policy[0].sha256, policy[0].name)
            print(f"revoked policy token {name!r} of {policy[0].user}; remove its entry from the policy file")
        elif made:
            await store.remove(made[0].user, made[0].name)
            print(f"revoked token {name!r} of {made[0].user}")
        else:
            print(f"no token named {name!r}", file=sys.stderr)
            return 1
    audit("token-revoke", None, "", name, owner=(policy or made)[0].user, by="channelgate-cli")
    return 0


def cmd_user_password(args: argparse.Namespace) -> int:
    """Print a scrypt hash for ``users: [{name: NAME, password: HASH}]``. The password is read
    twice from the terminal, or once from standard input when that is not a terminal."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("a password needs at least 8 characters", file=sys.stderr)
        return 2
    hashed = hash_password(password)
    print(f"password hash for {args.name} (paste it under users:):")
    print(yaml.safe_dump([{"name": args.name, "password": hashed}], sort_keys=False, width=1000), end="")
    return 0
