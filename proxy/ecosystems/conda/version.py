"""conda's version ordering (``conda.models.version.VersionOrder``), re-implemented.

Rules (conda docs, "Package match specifications" / VersionOrder docstring):
- case-insensitive; ``-`` is read as ``_`` when the string has no ``_``;
- optional epoch ``N!`` (default 0) and local version ``+local`` (compared last);
- components split on ``.`` and ``_``; each component is split into runs of digits and
  non-digits; a component that starts with a letter gets an implicit leading 0;
- digits compare as integers; strings compare lexicographically, with
  ``*`` < ``dev`` < ``_`` < other strings < integers < ``post``;
- missing components count as 0, so ``1.1 == 1.1.0``;
- a trailing ``_`` stays attached to the last component (openssl ``1.0.1_`` style).
"""
from __future__ import annotations

import re
from functools import total_ordering
from itertools import zip_longest
from typing import Union

_CHECK_RE = re.compile(r"^[*.+!_0-9a-z]+$")
_SPLIT_RE = re.compile(r"([0-9]+|[*]+|[^0-9*]+)")
_INF = float("inf")

Part = Union[int, float, str]
Component = list[Part]


class InvalidVersion(ValueError):
    """The string is not a conda version."""


@total_ordering
class VersionOrder:
    """A parsed conda version, comparable with ``<``/``==`` like conda's VersionOrder."""

    __slots__ = ("source", "version", "local")

    def __init__(self, vstr: str) -> None:
        self.source = vstr
        version = vstr.strip().lower()
        if not version:
            raise InvalidVersion("empty version string")
        invalid = not _CHECK_RE.match(version)
        if invalid and "-" in version and "_" not in version:
            version = version.replace("-", "_")
            invalid = not _CHECK_RE.match(version)
        if invalid:
            raise InvalidVersion(f"invalid character(s) in version {vstr!r}")

        epoch_split = version.split("!")
        if len(epoch_split) == 1:
            epoch = "0"
        elif len(epoch_split) == 2:
            if not epoch_split[0].isdigit():
                raise InvalidVersion(f"epoch must be an integer in version {vstr!r}")
            epoch = epoch_split[0]
        else:
            raise InvalidVersion(f"duplicated epoch separator '!' in version {vstr!r}")

        local_split = epoch_split[-1].split("+")
        if len(local_split) == 1:
            local: list[str] = []
        elif len(local_split) == 2:
            local = local_split[1].replace("_", ".").split(".")
        else:
            raise InvalidVersion(f"duplicated local version separator '+' in version {vstr!r}")
        main = local_split[0]
        if not main:
            raise InvalidVersion(f"missing version before local version separator '+' in {vstr!r}")
        if main[-1] == "_":
            parts = main[:-1].replace("_", ".").split(".")
            parts[-1] += "_"
        else:
            parts = main.replace("_", ".").split(".")

        self.version = [self._component(vstr, p) for p in [epoch, *parts]]
        self.local = [self._component(vstr, p) for p in local]

    @staticmethod
    def _component(vstr: str, text: str) -> Component:
        runs = _SPLIT_RE.findall(text)
        if not runs:
            raise InvalidVersion(f"empty version component in version {vstr!r}")
        out: Component = []
        for run in runs:
            if run.isdigit():
                out.append(int(run))
            elif run == "post":
                out.append(_INF)  # any number < post
            elif run == "dev":
                out.append("DEV")  # '*' < 'DEV' < '_' < 'a' (upper case sorts first)
            else:
                out.append(run)
        if not text[0].isdigit():
            out.insert(0, 0)  # keep numbers and strings in phase
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionOrder):
            return NotImplemented
        return _eq(self.version, other.version) and _eq(self.local, other.local)

    def __hash__(self) -> int:
        # equal versions differ only by trailing zero components: hash without them
        def trimmed(seq: list[Component]) -> tuple[tuple[Part, ...], ...]:
            comps = [tuple(c) for c in seq]
            comps = [tuple(_strip_zeros(c)) for c in comps]
            while comps and not comps[-1]:
                comps.pop()
            return tuple(comps)

        return hash((trimmed(self.version), trimmed(self.local)))

    def __lt__(self, other: VersionOrder) -> bool:
        v1: Component
        v2: Component
        for t1, t2 in ((self.version, other.version), (self.local, other.local)):
            for v1, v2 in zip_longest(t1, t2, fillvalue=[]):
                for c1, c2 in zip_longest(v1, v2, fillvalue=0):
                    if c1 == c2:
                        continue
                    if isinstance(c1, str):
                        if not isinstance(c2, str):
                            return True  # str < number
                    elif isinstance(c2, str):
                        return False
                    return c1 < c2  # type: ignore[operator]  # same kind here
        return False

    def __repr__(self) -> str:
        return f"VersionOrder({self.source!r})"


def _strip_zeros(comp: tuple[Part, ...]) -> list[Part]:
    out = list(comp)
    while out and out[-1] == 0 and not isinstance(out[-1], str):
        out.pop()
    return out


def _eq(t1: list[Component], t2: list[Component]) -> bool:
    v1: Component
    v2: Component
    for v1, v2 in zip_longest(t1, t2, fillvalue=[]):
        for c1, c2 in zip_longest(v1, v2, fillvalue=0):
            if c1 != c2:
                return False
    return True


def version_key_or_none(vstr: str) -> VersionOrder | None:
    """Parse leniently: None for a version conda itself would reject (upstream junk)."""
    try:
        return VersionOrder(vstr)
    except InvalidVersion:
        return None
