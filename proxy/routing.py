"""Path -> what is asked for. Strips ``/t/<TOKEN>/`` wherever DESIGN allows it.

Forms (``P`` is a channel prefix)::

    [/t/<TOKEN>]/api/repo/[t/<TOKEN>/]<channel>/<rest>    Anaconda Server form
    [/t/<TOKEN>]/<channel>/<rest>                           anaconda.org / channel_alias form
    [/t/<TOKEN>]/api/<endpoint...>                          JSON API (health, anaconda-client)

``rest`` decides the ecosystem: ``simple/...`` is PyPI, ``src/...`` and ``bin/...`` are CRAN,
anything else (``<subdir>/...``, ``label/...``, ``channeldata.json``) is conda.
The token never leaves this module except inside ``Route.token``; ``Route.prefix`` is the
path up to and including the channel, *with* any path token, for links the server must
build absolutely (CEP-16 base URLs, anaconda-client's post_url).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import NotFound
from .settings import RESERVED_CHANNEL_NAMES


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # "channel" | "api"
    token: str | None
    channel: str = ""
    rest: str = ""  # after "<channel>/" (channel) or after "api/" (api); may end with "/"
    prefix: str = ""  # path of the channel prefix as requested, token included

    @property
    def ecosystem(self) -> str:
        return ecosystem_of(self.rest)


def ecosystem_of(rest: str) -> str:
    head = rest.split("/", 1)[0]
    if head == "simple":
        return "pypi"
    if head in ("src", "bin"):
        return "cran"
    return "conda"


def parse(path: str) -> Route:
    segs = path.split("/")
    # segs[0] is "" for an absolute path
    i = 1
    token: str | None = None
    if len(segs) > 3 and segs[1] == "t":
        token, i = segs[2], 3
    head = segs[i] if i < len(segs) else ""
    if head == "api":
        if i + 1 < len(segs) and segs[i + 1] == "repo":
            j = i + 2
            if j + 2 < len(segs) and segs[j] == "t":
                if token is not None and token != segs[j + 1]:
                    raise NotFound()
                token, j = segs[j + 1], j + 2
            if j >= len(segs) or not segs[j]:
                raise NotFound()
            return Route("channel", token, segs[j], "/".join(segs[j + 1 :]), "/".join(segs[: j + 1]))
        return Route("api", token, rest="/".join(segs[i + 1 :]))
    if not head or head in RESERVED_CHANNEL_NAMES:
        raise NotFound()
    return Route("channel", token, head, "/".join(segs[i + 1 :]), "/".join(segs[: i + 1]))
