"""The package names a channel serves, merged across its sources, indexed for the web UI.

Names come from the same merged views the clients read (DESIGN "Merge semantics"): the
channel's uploads first, then its upstreams, with the dependency-confusion rule applied
by each ecosystem. A ``NameIndex`` is built once per set of inputs (catalog generation,
upstream document digests, merged index fingerprints) and answers a filter with a
binary search for prefixes and one C-speed ``str.find`` pass over the packed names for
substrings, so a page over a conda-forge-sized upstream (~30k names from 465k records)
costs a slice, not a walk.
"""
from __future__ import annotations

import asyncio
import bisect
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import orjson
from markupsafe import Markup
from urllib.parse import quote

from ..memo import Memo
from ..context import ChannelRequest, Services
from ..errors import NotFound, UpstreamError, UpstreamTimeout
from ..routing import Route
from ..settings import ChannelPolicy

if TYPE_CHECKING:
    from ..ecosystems.conda.handlers import Conda
    from ..ecosystems.conda.subdir_index import SubdirIndex
    from ..ecosystems.cran.handlers import Cran
    from ..ecosystems.pypi.handlers import PyPI

ECOSYSTEMS = ("conda", "pypi", "cran")
MAX_QUERY = 200
HOSTED = "hosted"
Key = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    ecosystem: str
    source: str  # "hosted" or the upstream's name


class NameIndex:
    """Entries sorted by lower-case name, with a prefix (bisect) and substring (packed) index."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        ordered = sorted(entries, key=lambda e: (e.name.lower(), e.ecosystem))
        self.entries = tuple(ordered)
        self.lower = [e.name.lower() for e in ordered]
        self.starts = array("Q")
        offset = 0
        for name in self.lower:
            self.starts.append(offset)
            offset += len(name) + 1
        self.packed = "\n".join(self.lower)
        self._found: Memo[str, tuple[int, ...]] = Memo(64)
        self._rows: dict[int, Markup] = {}  # position -> its table row, rendered once per index

    def __len__(self) -> int:
        return len(self.entries)

    def row(self, channel: str, i: int) -> Markup:
        """The channel page's table row of entry ``i`` (escaped; the hot path of a page)."""
        html = self._rows.get(i)
        if html is None:
            e = self.entries[i]
            href = f"/ui/c/{quote(channel, safe='')}/{e.ecosystem}/{quote(e.name, safe='')}"
            html = self._rows[i] = Markup("<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td></tr>").format(
                href, e.name, e.ecosystem, e.source)
        return html

    def search(self, query: str) -> Sequence[int]:
        """Positions of the entries matching ``query``: names starting with it first (an
        exact name leads), then names containing it, each in name order."""
        q = clean_query(query)
        if not q:
            return range(len(self.entries))
        found = self._found.get(q)
        if found is None:
            found = self._found.put(q, self._search(q))
        return found

    def _search(self, q: str) -> tuple[int, ...]:
        lo = bisect.bisect_left(self.lower, q)
        hi = bisect.bisect_left(self.lower, q + "\U0010ffff", lo)
        out = list(range(lo, hi))
        packed, starts, n = self.packed, self.starts, len(self.entries)
        pos = packed.find(q)
        while pos >= 0:
            i = bisect.bisect_right(starts, pos) - 1
            if not lo <= i < hi:
                out.append(i)
            if i + 1 >= n:
                break
            pos = packed.find(q, starts[i + 1])
        return tuple(out)


def clean_query(query: str) -> str:
    return " ".join(query.split())[:MAX_QUERY].lower()


class Names:
    """Per (channel, ecosystem) merged names, and per (channel, ecosystems) indexes."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lists: Memo[Key, Mapping[str, str]] = Memo(64)
        self._indexes: Memo[Key, NameIndex] = Memo(64)
        self._channeldata: Memo[str, Mapping[str, tuple[str, ...]]] = Memo(16)

    async def index(self, views: Sequence[tuple[str, ChannelPolicy]]) -> NameIndex:
        """The names of these (ecosystem, channel or its public view) pairs, indexed."""
        parts: list[tuple[str, Key, Mapping[str, str]]] = []
        for eco, channel in views:
            key, names = await self.names(channel, eco)
            parts.append((eco, key, names))
        key = tuple((eco, k) for eco, k, _ in parts)
        index = self._indexes.get(key)
        if index is None:
            entries = [Entry(name, eco, source) for eco, _, names in parts for name, source in names.items()]
            index = self._indexes.put(key, NameIndex(entries))
        return index

    async def names(self, channel: ChannelPolicy, ecosystem: str) -> tuple[Key, Mapping[str, str]]:
        """name -> source of one ecosystem of the channel, and the key of its inputs."""
        handler: Any = self.services.ecosystems.get(ecosystem)
        if handler is None:
            return (ecosystem, None), {}
        if ecosystem == "pypi":
            pypi: "PyPI" = handler
            return await pypi.names(channel)
        if ecosystem == "conda":
            return await self._conda_names(channel, handler)
        return await self._cran_names(channel, handler)

    async def _conda_names(self, channel: ChannelPolicy, conda: "Conda") -> tuple[Key, Mapping[str, str]]:
        """Uploads (every label), the upstreams' ``channeldata.json`` packages, and the names
        of the merged subdir indexes: noarch and the uploads' subdirs, and every other one
        built so far (an upstream without channeldata)."""
        catalog = self.services.catalog
        snap = catalog.snapshot(channel.name, "conda")
        body, etag = await conda.indexes.channeldata(channel, "main")
        # noarch and the uploads' subdirs always; other subdirs once a client asked for them
        wanted = {"noarch", *(u.path.split("/", 1)[0] for u in snap.uploads if "main" in u.labels)}
        for subdir in sorted(wanted):
            try:
                await conda.indexes.subdir(channel, "main", subdir)
            except (NotFound, UpstreamError, UpstreamTimeout):
                continue
        built = conda.indexes.built(channel.name, "main")
        key: Key = ("conda", channel.name, snap.generation, etag, tuple(ix.fingerprint for ix in built))
        found = self._lists.get(key)
        if found is not None:
            return key, found
        names: dict[str, str] = dict.fromkeys(snap.by_name, HOSTED)  # visible uploads (not a view's private ones)
        for ix in built:
            for name, upstream in (await asyncio.to_thread(_plan_names, ix)).items():
                names.setdefault(name, upstream)
        ups = self.services.sources.upstreams(channel, "conda")
        fallback = ups[0].name if len(ups) == 1 else "upstream"
        for name in self._channeldata_names(body, etag):
            names.setdefault(name.lower(), fallback)  # channeldata() applied the merge rule
        return key, self._lists.put(key, names)

    def _channeldata_names(self, body: bytes, etag: str) -> Mapping[str, tuple[str, ...]]:
        """name -> subdirs of a merged ``channeldata.json`` (parsed once per ETag)."""
        found = self._channeldata.get(etag)
        if found is None:
            packages = orjson.loads(body).get("packages")
            out: dict[str, tuple[str, ...]] = {}
            for name, entry in packages.items() if isinstance(packages, dict) else ():
                subdirs = entry.get("subdirs") if isinstance(entry, dict) else None
                out[name] = tuple(s for s in subdirs if isinstance(s, str)) if isinstance(subdirs, list) else ()
            found = self._channeldata.put(etag, out)
        return found

    async def conda_subdirs(self, channel: ChannelPolicy, name: str) -> tuple[str, ...]:
        """The subdirs the channel's ``channeldata.json`` lists for a package."""
        conda: Any = self.services.ecosystems.get("conda")
        if conda is None:
            return ()
        body, etag = await conda.indexes.channeldata(channel, "main")
        return tuple(self._channeldata_names(body, etag).get(name.lower(), ()))

    async def _cran_names(self, channel: ChannelPolicy, cran: "Cran") -> tuple[Key, Mapping[str, str]]:
        """Every uploaded package (any tree) and the merged ``src/contrib`` index."""
        catalog = self.services.catalog
        snap = catalog.snapshot(channel.name, "cran")
        view = None
        try:
            view = await cran.view(channel_request(self.services, channel, "src/contrib/PACKAGES"),
                                   "src/contrib", "source")
        except (NotFound, UpstreamError, UpstreamTimeout):
            pass
        key: Key = ("cran", channel.name, snap.generation, view.key if view is not None else None)
        found = self._lists.get(key)
        if found is not None:
            return key, found
        names = dict.fromkeys(snap.by_name, HOSTED)
        for source in view.latest if view is not None else ():
            names.setdefault(source.package, HOSTED if source.upload is not None
                             else source.upstream.name if source.upstream else "upstream")
        return key, self._lists.put(key, names)


def _plan_names(index: "SubdirIndex") -> dict[str, str]:
    """lower-case name -> upstream, of the upstream records a merged index serves (its plan
    already applied the merge rule and the upstream filters)."""
    from ..ecosystems.conda.sections import EXTENSIONS

    plan, out = index.plan, dict[str, str]()
    for ext in EXTENSIONS:
        for j, lo, hi in plan.runs[ext]:
            if j == 0:  # the uploads
                continue
            section = plan.sections[ext][j]
            if section.perm is None:
                ids = set(section.nids[lo:hi])
            else:
                ids = {section.nids[section.perm[s]] for s in range(lo, hi)}
            table, upstream = plan.tables[ext][j], index.upstreams[j - 1].upstream.name
            for nid in ids:
                out.setdefault(table[nid].lower(), upstream)
    return out


def channel_request(services: Services, channel: ChannelPolicy, rest: str) -> ChannelRequest:
    """A context for calling an ecosystem's merged views on the UI's behalf (the UI has
    already authorised the reader; the route only names the channel)."""
    route = Route("channel", None, channel.name, rest, f"/{channel.name}")
    return ChannelRequest(route, channel, None, services)
