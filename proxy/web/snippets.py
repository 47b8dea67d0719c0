"""Copy-paste client setup for a channel (README "Client setup"), with the channel's URL.

The token is always the placeholder ``<TOKEN>``: a page never shows a secret the reader
did not just make (DESIGN "Web UI"). A public channel's snippets need no token.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..settings import ChannelPolicy

TOKEN = "<TOKEN>"


@dataclass(frozen=True, slots=True)
class Snippet:
    title: str
    file: str
    text: str


def setup_snippets(base: str, channel: ChannelPolicy, ecosystems: tuple[str, ...]) -> list[Snippet]:
    name = channel.name
    parts = urlsplit(base)
    origin = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    authed = origin if channel.public else f"{parts.scheme}://{TOKEN}:x-auth-token@{parts.netloc}{parts.path.rstrip('/')}"
    alias = origin if channel.public else f"{origin}/t/{TOKEN}"
    out: list[Snippet] = []
    if "conda" in ecosystems:
        out.append(Snippet("conda, mamba", "~/.condarc", f"channel_alias: {alias}\nchannels:\n  - {name}\n"))
        out.append(Snippet("pixi", "pixi.toml", f'[workspace]\nchannels = ["{alias}/{name}"]\n'))
    if "pypi" in ecosystems:
        index = f"{authed}/api/repo/{name}/simple"
        out.append(Snippet("pip", "~/.config/pip/pip.conf", f"[global]\nindex-url = {index}\n"))
        out.append(Snippet("uv", "uv.toml", f'[[index]]\nurl = "{alias}/api/repo/{name}/simple"\ndefault = true\n'))
    if "cran" in ecosystems:
        out.append(Snippet("R", "~/.Rprofile", f'options(repos = c({_r_name(name)} = "{authed}/api/repo/{name}"))\n'))
    return out


def _r_name(name: str) -> str:
    return name if name.replace(".", "").replace("_", "").isalnum() and name[0].isalpha() else f"`{name}`"
