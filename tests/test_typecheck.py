"""DESIGN's convention "full type hints, mypy-clean", enforced: mypy over the package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_package_is_mypy_clean() -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extras")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-error-summary", "proxy"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
