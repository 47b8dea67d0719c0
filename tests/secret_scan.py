"""The suite-wide secret scan (issue 8): every token a test makes and every upstream password
it configures is searched for in everything the channelgate processes log and in every
response body the tests receive.

- secrets are registered where they are made: ``Policy.add_token`` and ``Channelgate.start``
  (upstream passwords), in tests/harness.py;
- logs: each ``Channelgate`` registers its log file; after every test the bytes written since
  the last look are scanned (so a module-scoped server is scanned test by test);
- bodies: ``harness.http``, aiohttp's ``ClientResponse.read`` and requests' responses record
  what they received (conftest.py installs the hooks);
- conftest's autouse fixture fails the test that let a secret out, naming where it was seen.

A secret is searched for only in what arrived after the test learned it: the answer that
creates a token (``POST /api/authentications``) is where the test gets it from.

A secret is found raw and in any base64 alignment (HTTP Basic credentials echoed back), but
never in what a real client prints: pip shows the index URL its user gave it, that is not a
leak by the server. Cheap by construction: ``bytes in bytes`` per secret, on new data only.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_BODY = 64 * 1024 * 1024  # a body larger than this is scanned in its first 64 MiB
# The one answer that hands a caller its own token back, by design: anaconda-client's stage
# step gets a post_url to send the file to, which it does without its API headers, so the
# URL carries the caller's /t/<TOKEN>/ (proxy/api/anaconda.py). Only that field is skipped.
_OWN_TOKEN_FIELDS = ((re.compile(r"/api/stage/"), re.compile(rb'"post_url": ?"[^"]*"')),)


def forms(secret: str) -> list[bytes]:
    """The raw secret and the part of its base64 encoding that is the same whatever bytes
    come before or after it, for each of the three alignments."""
    raw = secret.encode()
    out = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        start = 0 if shift == 0 else -(-8 * shift // 6)  # characters that hold prefix bits
        core = encoded[start:-4]  # the last group may hold suffix bits or padding
        if len(core) >= 16:
            out.append(core)
    return out


@dataclass
class SecretScan:
    secrets: dict[str, tuple[int, list[bytes]]] = field(default_factory=dict)  # -> (known since body n, forms)
    logs: dict[Path, int] = field(default_factory=dict)  # log file -> bytes already scanned
    bodies: list[tuple[int, str, bytes]] = field(default_factory=list)
    bodies_seen: int = 0
    log_bytes_seen: int = 0

    def secret(self, value: str | None) -> None:
        if value and value not in self.secrets:
            self.secrets[value] = (self.bodies_seen, forms(value))

    def watch_log(self, path: Path) -> None:
        self.logs.setdefault(Path(path), 0)

    def received(self, where: str, body: bytes | None) -> None:
        if body:
            data = bytes(body[:MAX_BODY])
            for url, skipped in _OWN_TOKEN_FIELDS:
                if url.search(where):
                    data = skipped.sub(b'"post_url": "<its holder\'s own token: not scanned>"', data)
            self.bodies_seen += 1
            self.bodies.append((self.bodies_seen, where, data))

    def findings(self) -> list[str]:
        """Where a secret was seen since the last call (bodies are then forgotten)."""
        found: list[str] = []
        for path, offset in list(self.logs.items()):
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            self.logs[path] = offset + len(data)
            self.log_bytes_seen += len(data)
            found += self._search(f"log {path}", data, 0)
        bodies, self.bodies = self.bodies, []
        for number, where, body in bodies:
            found += self._search(f"response body of {where}", body, number)
        return found

    def _search(self, where: str, data: bytes, number: int) -> list[str]:
        found = []
        for secret, (since, patterns) in self.secrets.items():
            if number and number <= since:
                continue  # received before the test knew this secret: where it came from
            for pattern in patterns:
                at = data.find(pattern)
                if at >= 0:
                    context = data[max(0, at - 80) : at + len(pattern) + 40].decode("utf-8", "replace")
                    found.append(f"{where}: secret {secret[:8]}... ({'raw' if pattern is patterns[0] else 'base64'}) in {context!r}")
                    break
        return found


SCAN = SecretScan()  # the one scan of this pytest session (tests may hold session state)
