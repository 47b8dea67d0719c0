"""The pure authorisation decision: no I/O, no request objects.

Effective right = token scopes ∩ the user's role on the channel (DESIGN, "Tokens and
authentication"). Roles are ordered read < write < admin and granted per channel to
``group:NAME`` or ``user:NAME``. A public channel reads anonymously. A channel that does
not exist is decided exactly like a private channel on which nobody has a role, so its
answer cannot be told apart (no enumeration).
"""
from __future__ import annotations

import enum

from ..settings import ROLES, ChannelPolicy
from ..token_settings import Scope
from .credentials import Principal

ROLE_RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}  # read < write < admin


class Action(enum.Enum):
    # (scope that grants it, minimum role)
    CONDA_READ = (Scope.CONDA_DOWNLOAD.value, "read")
    PYPI_READ = (Scope.PYPI_DOWNLOAD.value, "read")
    CRAN_READ = (Scope.CRAN_DOWNLOAD.value, "read")
    API_READ = (Scope.API_READ.value, "read")
    WRITE = (Scope.API_WRITE.value, "write")
    ADMIN = (Scope.API_WRITE.value, "admin")

    @property
    def scope(self) -> str:
        return self.value[0]

    @property
    def min_role(self) -> str:
        return self.value[1]

    @property
    def is_read(self) -> bool:
        return self.value[1] == "read"


READ_ACTION = {"conda": Action.CONDA_READ, "pypi": Action.PYPI_READ, "cran": Action.CRAN_READ}


class Decision(enum.Enum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"  # -> 401 with a Basic challenge
    FORBIDDEN = "forbidden"  # -> 403


def role_of(principal: Principal, channel: ChannelPolicy) -> int:
    rank = 0
    for role in ("read", "write", "admin"):
        for grantee in getattr(channel, role):
            kind, _, name = grantee.partition(":")
            if (kind == "user" and name == principal.user) or (kind == "group" and name in principal.groups):
                rank = max(rank, ROLE_RANK[role])
    return rank


def decide(principal: Principal | None, channel: ChannelPolicy | None, action: Action) -> Decision:
    if channel is not None and channel.public and action.is_read:
        return Decision.ALLOW
    if principal is None:
        return Decision.UNAUTHENTICATED
    if channel is None:
        return Decision.FORBIDDEN
    if action.scope not in principal.scopes and Scope.ALL.value not in principal.scopes:
        return Decision.FORBIDDEN
    if role_of(principal, channel) < ROLE_RANK[action.min_role]:
        return Decision.FORBIDDEN
    return Decision.ALLOW


def sees_private(principal: Principal | None, channel: ChannelPolicy, action: Action) -> bool:
    """Whether private packages of the channel are visible to this principal: the read role
    there and the scope ``action`` needs, as if the channel were not public (DESIGN,
    "Accounts": private = invisible to anyone without the read role)."""
    if principal is None:
        return False
    if action.scope not in principal.scopes and Scope.ALL.value not in principal.scopes:
        return False
    return role_of(principal, channel) >= ROLE_RANK["read"]
