"""channelgate: one authenticating, caching proxy for conda, PyPI and CRAN channels."""
from __future__ import annotations

__version__ = "0.1.0"
