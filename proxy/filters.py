"""Upstream filters: mirror rules applied on the way from an upstream to a merged index
(DESIGN, "Air-gap", upstream filters; absent = everything).

Pure functions over (ecosystem, name, version, license), applied in one place: sources.py
(``Sources.upstreams`` for names and subdirs, ``upstream_records`` for the rest), where every
ecosystem takes an upstream's records into its merge, so indexes, files and ``seed`` all see
the same filtered view. A filtered-out name is simply absent (a 404 "not found").

Version specs are written in each ecosystem's own syntax:
- PyPI: PEP 440 specifiers (``numpy>=1.26,<2``), names compared PEP 503-normalised;
- conda: MatchSpec version syntax (``numpy >=1.26``, ``python 3.11.*``, ``a >=1,<2|3.*``),
  ordered by conda's VersionOrder;
- CRAN: R's ``ggplot2 (>= 3.4)``, ordered like ``package_version``.
Names may hold shell globs (``*-debug``). ``licenses`` (conda and CRAN) keeps records whose
license is one of the listed ones (an ``A | B`` / ``A OR B`` choice matches when any part
does; CRAN's ``+ file LICENSE`` is ignored). ``latest: N`` keeps the newest N versions of
each name, after the other rules.
"""
from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion as InvalidPep440, Version

from .ecosystems.conda.version import InvalidVersion as InvalidConda, VersionOrder

T = TypeVar("T")
FILTER_KEYS = ("subdirs", "include", "exclude", "licenses", "latest")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne, "=": operator.eq,
}
_NAME_SPEC = re.compile(r"^\s*([A-Za-z0-9_.*?\[\]!+-]+)\s*(.*?)\s*$")
_CONDA_TERM = re.compile(r"^(>=|<=|==|!=|>|<|=)?\s*([^\s<>=!,|]+)$")
_R_SPEC = re.compile(r"^\(\s*(>=|<=|==|>|<|!=)\s*([0-9][0-9.-]*)\s*\)$")


class FilterError(ValueError):
    """A filter rule that cannot be read (reported by check-config with its key path)."""


def normalize_name(ecosystem: str, name: str) -> str:
    if ecosystem == "pypi":
        return re.sub(r"[-_.]+", "-", name).lower()
    return name.lower() if ecosystem == "conda" else name


# --------------------------------------------------------------------------- version specs
def _r_key(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in re.split(r"[.-]", version.strip()))
    except ValueError:
        return None


def _pep440_key(version: str) -> Version | None:
    try:
        return Version(version)
    except InvalidPep440:
        return None


def _conda_key(version: str) -> VersionOrder | None:
    try:
        return VersionOrder(version)
    except InvalidConda:
        return None


VERSION_KEYS: dict[str, Callable[[str], Any]] = {"pypi": _pep440_key, "conda": _conda_key, "cran": _r_key}


def _conda_matcher(spec: str) -> Callable[[str], bool]:
    """conda MatchSpec version syntax: ``,`` is and, ``|`` is or, ``1.2.*`` a prefix."""
    alternatives: list[list[Callable[[str], bool]]] = []
    for alt in spec.replace(" ", "").split("|"):
        terms: list[Callable[[str], bool]] = []
        for term in alt.split(","):
            m = _CONDA_TERM.match(term)
            if not m:
                raise FilterError(f"not a conda version spec: {spec!r}")
            op, ver = m.group(1) or "", m.group(2)
            if ver.endswith("*"):
                prefix = ver.rstrip("*").rstrip(".")
                terms.append(_conda_prefix(prefix, negate=op == "!="))
                continue
            target = _conda_key(ver)
            if target is None:
                raise FilterError(f"not a conda version: {ver!r}")
            terms.append(_conda_compare(_OPS[op or "=="], target))
        alternatives.append(terms)
    return lambda v: any(all(t(v) for t in terms) for terms in alternatives)


def _conda_compare(compare: Callable[[Any, Any], bool], target: VersionOrder) -> Callable[[str], bool]:
    def match(version: str) -> bool:
        key = _conda_key(version)
        return key is not None and compare(key, target)

    return match


def _conda_prefix(prefix: str, *, negate: bool) -> Callable[[str], bool]:
    parts = prefix.split(".") if prefix else []

    def match(version: str) -> bool:
        hit = version.split(".")[: len(parts)] == parts
        return hit != negate

    return match


def version_matcher(ecosystem: str, spec: str) -> Callable[[str], bool]:
    """A predicate over version strings; FilterError when ``spec`` is not valid."""
    if ecosystem == "pypi":
        try:
            specifiers = SpecifierSet(spec)
        except InvalidSpecifier:
            raise FilterError(f"not a PEP 440 version specifier: {spec!r}") from None
        return lambda v: (k := _pep440_key(v)) is not None and specifiers.contains(k, prereleases=True)
    if ecosystem == "conda":
        return _conda_matcher(spec)
    m = _R_SPEC.match(spec)
    if not m:
        raise FilterError(f"not an R version requirement like '(>= 1.2)': {spec!r}")
    target, compare = _r_key(m.group(2)), _OPS[m.group(1)]
    return lambda v: (k := _r_key(v)) is not None and compare(k, target)


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    pattern: str  # a normalised name or glob
    spec: str  # "" = any version
    match_version: Callable[[str], bool] | None

    def matches_name(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    def matches(self, name: str, version: str) -> bool:
        return self.matches_name(name) and (self.match_version is None or self.match_version(version))


def parse_rule(ecosystem: str, text: str) -> Rule:
    m = _NAME_SPEC.match(text)
    if not m or not m.group(1):
        raise FilterError(f"not a name or 'name spec': {text!r}")
    name, spec = m.group(1), m.group(2)
    return Rule(normalize_name(ecosystem, name), spec, version_matcher(ecosystem, spec) if spec else None)


@dataclass(frozen=True)
class UpstreamFilter:
    ecosystem: str
    subdirs: frozenset[str] | None = None
    include: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()
    licenses: frozenset[str] | None = None  # lower-case
    latest: int | None = None
    fingerprint: str = ""  # identifies the rules (cache keys of merged indexes include it)

    @property
    def per_record(self) -> bool:
        """Whether names alone cannot decide (version specs, licenses, latest N)."""
        return (self.licenses is not None or self.latest is not None
                or any(r.spec for r in self.include + self.exclude))

    def allows_subdir(self, subdir: str) -> bool:
        return self.subdirs is None or subdir in self.subdirs

    def allows_name(self, name: str) -> bool:
        """False when no record of ``name`` can pass (skip its upstream documents at all)."""
        name = normalize_name(self.ecosystem, name)
        if self.include and not any(r.matches_name(name) for r in self.include):
            return False
        return not any(not r.spec and r.matches_name(name) for r in self.exclude)

    def allows(self, name: str, version: str, license: str | None = None) -> bool:
        name = normalize_name(self.ecosystem, name)
        if self.include and not any(r.matches(name, version) for r in self.include):
            return False
        if any(r.matches(name, version) for r in self.exclude):
            return False
        return self.licenses is None or license_allowed(license, self.licenses)

    def select(self, items: Iterable[T], *, name: Callable[[T], str], version: Callable[[T], str],
               license: Callable[[T], str | None] = lambda _: None) -> list[T]:
        """The items that pass, in their order; ``latest`` counts distinct versions per name."""
        kept = [i for i in items if self.allows(name(i), version(i), license(i))]
        if self.latest is None:
            return kept
        key = VERSION_KEYS[self.ecosystem]
        versions: dict[str, set[str]] = {}
        for item in kept:
            versions.setdefault(normalize_name(self.ecosystem, name(item)), set()).add(version(item))
        newest = {n: set(sorted(vs, key=lambda v: _sortable(key(v)), reverse=True)[: self.latest])
                  for n, vs in versions.items()}
        return [i for i in kept if version(i) in newest[normalize_name(self.ecosystem, name(i))]]


def _sortable(key: Any) -> tuple[int, Any]:
    return (0, ()) if key is None else (1, key)


def license_allowed(license: str | None, allowed: frozenset[str]) -> bool:
    if not license:
        return False
    for part in re.split(r"\s*(?:\||\bOR\b)\s*", license):
        part = re.sub(r"\s*\+\s*file\s+LICEN[CS]E\s*$", "", part.strip().strip("()"), flags=re.I).strip()
        if part.lower() in allowed:
            return True
    return False


def build_filter(ecosystem: str, raw: Any) -> tuple[UpstreamFilter | None, list[tuple[tuple[Any, ...], str]]]:
    """An UpstreamFilter from the policy's ``filter:`` mapping, and the problems found
    (key path below ``filter``, message)."""
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [((), "must be a mapping")]
    problems: list[tuple[tuple[Any, ...], str]] = []
    for key in raw:
        if key not in FILTER_KEYS:
            problems.append(((key,), f"unknown key (allowed: {', '.join(FILTER_KEYS)})"))
    lists: dict[str, list[str]] = {}
    for key in ("subdirs", "include", "exclude", "licenses"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)):
            problems.append(((key,), "must be a list of non-empty strings"))
            value = None
        lists[key] = list(value) if value is not None else []
    if raw.get("subdirs") is not None and ecosystem != "conda":
        problems.append((("subdirs",), "applies to conda upstreams only"))
    if raw.get("licenses") is not None and ecosystem == "pypi":
        problems.append((("licenses",), "applies to conda and CRAN upstreams only"))
    latest = raw.get("latest")
    if latest is not None and (isinstance(latest, bool) or not isinstance(latest, int) or latest < 1):
        problems.append((("latest",), "must be a positive integer"))
        latest = None
    rules: dict[str, list[Rule]] = {"include": [], "exclude": []}
    for key in rules:
        for i, text in enumerate(lists[key]):
            try:
                rules[key].append(parse_rule(ecosystem, text))
            except FilterError as exc:
                problems.append(((key, i), str(exc)))
    flt = UpstreamFilter(
        ecosystem=ecosystem,
        subdirs=frozenset(lists["subdirs"]) if raw.get("subdirs") is not None else None,
        include=tuple(rules["include"]),
        exclude=tuple(rules["exclude"]),
        licenses=frozenset(v.lower() for v in lists["licenses"]) if raw.get("licenses") is not None else None,
        latest=latest,
        fingerprint=repr(sorted((k, repr(v)) for k, v in raw.items())),
    )
    return flt, problems


__all__ = ["FilterError", "Rule", "UpstreamFilter", "build_filter", "license_allowed", "parse_rule",
           "version_matcher"]
