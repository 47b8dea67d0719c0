"""The policy's ``users`` (names, or names with a password hash) and ``accounts`` sections
(DESIGN, "Accounts, tokens made by users"); read by ``settings.parse_settings``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .checked_yaml import Checker

SCRYPT_RE = re.compile(r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """``accounts:``: tokens that users make, and how failed sign-ins are slowed down."""

    token_days: int = 30  # expiry of a user-made token when the client asks for none
    token_max_days: int = 365  # the longest expiry a user may ask for
    max_failures: int = 30  # failed authentications per user and per client address...
    failure_window: int = 300  # ...within this many seconds, then 429 until the window passes


def read_users(ck: Checker, value: Any) -> tuple[set[str], dict[str, str]]:
    """``users:``: plain names, or ``{name: NAME, password: "scrypt$..."}``."""
    users: set[str] = set()
    passwords: dict[str, str] = {}
    if value is None:
        return users, passwords
    if not isinstance(value, list):
        ck.bad(("users",), "must be a list of names or {name, password} entries")
        return users, passwords
    for i, item in enumerate(value):
        p = ("users", i)
        if isinstance(item, str) and item:
            users.add(item)
            continue
        if not isinstance(item, dict):
            ck.bad(p, "must be a name or a {name, password} mapping")
            continue
        spec = ck.mapping(item, p, {"name", "password"})
        name = ck.typed(spec.get("name"), p + ("name",), str, "")
        if not name:
            ck.bad(p + ("name",), "is required")
            continue
        users.add(name)
        password = ck.typed(spec.get("password"), p + ("password",), str, None)
        if password is not None:
            if not SCRYPT_RE.match(password):
                ck.bad(p + ("password",), "must be a hash printed by `channelgate user password NAME` (scrypt$...)")
            else:
                passwords[name] = password
    return users, passwords


def read_accounts(ck: Checker, value: Any) -> AccountPolicy:
    path = ("accounts",)
    spec = ck.mapping(value, path, {"token_days", "token_max_days", "max_failures", "failure_window"})
    default = AccountPolicy()
    numbers: dict[str, int] = {}
    for key in ("token_days", "token_max_days", "max_failures", "failure_window"):
        number = ck.typed(spec.get(key), path + (key,), int, getattr(default, key))
        if number < 1:
            ck.bad(path + (key,), "must be at least 1")
            number = getattr(default, key)
        numbers[key] = int(number)
    policy = AccountPolicy(**numbers)
    if policy.token_days > policy.token_max_days:
        ck.bad(path + ("token_days",), f"is longer than token_max_days ({policy.token_max_days})")
    return policy
