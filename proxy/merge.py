"""The merge rule, shared by every ecosystem (DESIGN, "Merge semantics").

Sources in order: the channel's own uploads, then its upstreams as listed.
- Dependency-confusion rule (devpi's): once a name exists in the uploads, no upstream
  contributes any version of it, unless the name is in ``upstream_allow``.
- Otherwise the first source that has a given key (file name) wins.
Callers pass names already in their ecosystem's normal form (PEP 503 for PyPI, lower case
for conda, as-is for CRAN) and ``allow`` normalised the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")


def upstream_may_serve(name: str, local_names: frozenset[str] | set[str], allow: frozenset[str]) -> bool:
    """Whether upstreams may contribute versions of ``name`` at all (check this before fetching)."""
    return name not in local_names or name in allow


@dataclass(frozen=True, slots=True)
class MergeRule:
    """The dependency-confusion rule of one channel: the names its uploads hold and the
    names ``upstream_allow`` lets upstreams serve anyway (both in normal form)."""

    local_names: frozenset[str]
    allow: frozenset[str]

    def upstream_may_serve(self, name: str) -> bool:
        return upstream_may_serve(name, self.local_names, self.allow)

    @property
    def blocked(self) -> frozenset[str]:
        """The names no upstream may contribute any version of."""
        return self.local_names - self.allow


def merge(
    local: Iterable[T],
    upstreams: Sequence[Iterable[T]],
    *,
    name: Callable[[T], str],
    key: Callable[[T], str],
    allow: frozenset[str],
    local_names: frozenset[str] | None = None,
) -> list[T]:
    """Merged items, local first. ``local_names`` defaults to the names among ``local``;
    pass the channel's full set when ``local`` is a subset (e.g. one label)."""
    local = list(local)
    names = local_names if local_names is not None else frozenset(name(item) for item in local)
    out: list[T] = []
    seen: set[str] = set()
    for item in local:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    for source in upstreams:
        for item in source:
            if not upstream_may_serve(name(item), names, allow):
                continue
            k = key(item)
            if k not in seen:
                seen.add(k)
                out.append(item)
    return out
