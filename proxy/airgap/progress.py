"""Progress for long-running commands: rich's bar on a terminal, plain lines otherwise
(a log file or CI gets one line per PLAIN_EVERY seconds and one at the end, never a bar)."""
from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TaskID, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

PLAIN_EVERY = 5.0


class Progress:
    """``with Progress("export", total_bytes) as p: p.advance(n)``; ``total`` may grow."""

    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None, unit: str = "bytes") -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.items = 0
        self.unit = unit
        self.stream = stream or sys.stderr
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        self._last = 0.0

    def __enter__(self) -> "Progress":
        if self.stream.isatty():
            columns = [TextColumn("[bold]{task.description}"), BarColumn()]
            if self.unit == "bytes":
                columns += [DownloadColumn(), TransferSpeedColumn()]
            else:
                columns += [TextColumn("{task.completed}/{task.total}")]
            self._rich = RichProgress(*columns, TimeRemainingColumn(), console=Console(file=self.stream))
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total)
        self._last = time.monotonic()
        return self

    def grow(self, total: int) -> None:
        self.total = total
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, total=total)

    def advance(self, amount: int, *, items: int = 0) -> None:
        self.done += amount
        self.items += items
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, advance=amount)
            return
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY:
            self._last = now
            self._line()

    def note(self, text: str) -> None:
        """A line of its own (a failure, a phase change), above the bar on a terminal."""
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def _line(self) -> None:
        total = f"/{_human(self.total) if self.unit == 'bytes' else self.total}" if self.total else ""
        done = _human(self.done) if self.unit == "bytes" else str(self.done)
        print(f"{self.label}: {done}{total}", file=self.stream, flush=True)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()
        else:
            self._line()


def _human(size: int | None) -> str:
    value = float(size or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


human = _human
