"""channelgate's benchmark suite, one command from the repository root:

    python -m tests.bench.run [--quick] [--only NAME[,NAME]] [--markdown FILE] [--json FILE]

It starts everything itself on 127.0.0.1:
the fake upstream (tests/harness.py's UpstreamServer in its own process), channelgate
(``python -m proxy serve``), nginx over the same bytes (``worker_processes 1``, the primary
peer, and ``auto``) and proxpi (gunicorn, as its Docker image runs it) in front of the same
upstream; it generates its data, prints every figure as a ratio against its peer measured in
the same run, and removes its processes and temp files however it ends. See suite.py for the
scenarios and options (``--help``).
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from tests.bench.suite import main as suite_main

    return suite_main(argv)


if __name__ == "__main__":
    sys.exit(main())
