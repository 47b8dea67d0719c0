"""The audit trail: one log line per write (DESIGN, "Accounts ..."): upload, delete, copy,
move, label change, privacy and metadata change, token made or revoked.

Each line names the user, the token name, the action, the channel and the file (or
package, label, token) acted on, as ``key=value`` pairs on the ``proxy.audit`` logger, so
an operator can filter on the logger name. Values are escaped (no control characters,
spaces quoted); the logging filter masks tokens as everywhere else.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .auth.credentials import Principal

log = logging.getLogger("proxy.audit")


def _value(text: str) -> str:
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:300]
    return f'"{text}"' if (" " in text or not text or '"' in text) else text


def audit(action: str, principal: "Principal | None", channel: str, target: str, **extra: str) -> None:
    user = principal.user if principal else "-"
    token = principal.token_name if principal else "-"
    fields = {"user": user, "token": token, "action": action, "channel": channel or "-", "file": target or "-", **extra}
    log.info("audit %s", " ".join(f"{k}={_value(v)}" for k, v in fields.items()))
