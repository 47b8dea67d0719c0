"""Rows of the benchmark table and their rendering (aligned text, Markdown, JSON).

Each figure is one ``Row``: what channelgate measured (``ours``), what the peer measured in
the same run (``peer``), their ratio, the target from the performance issue and the outcome.
Rows without a target are informational (``INFO``); a row that could not be measured carries
``SKIP`` and the reason, a row whose measurement broke carries ``ERROR`` and the error.
"""
from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["PASS", "FAIL", "INFO", "SKIP", "ERROR"]
Check = Callable[[float, "float | None", "float | None"], bool]  # (ours, peer, ratio) -> passed


@dataclass
class Row:
    name: str  # stable id, e.g. "pypi_page.vs_proxpi"
    figure: str  # human description
    unit: str  # "req/s", "MiB/s", "s", "ms", "MiB", "count", "clients"
    ours: float | None = None
    peer: float | None = None
    peer_name: str = ""
    ratio: float | None = None  # ours / peer unless the row says otherwise
    target: str = ""
    status: Status = "INFO"
    note: str = ""

    def judge(self, check: Check | None) -> Row:
        """Set the status from ``check`` once the numbers are in."""
        if self.status in ("SKIP", "ERROR"):
            return self
        if self.ours is None:
            self.status = "ERROR"
            self.note = self.note or "not measured"
            return self
        if self.ratio is None and self.peer not in (None, 0) and self.ours is not None:
            self.ratio = self.ours / self.peer
        if check is None:
            self.status = "INFO"
        else:
            self.status = "PASS" if check(self.ours, self.peer, self.ratio) else "FAIL"
        return self


def skipped(name: str, figure: str, unit: str, target: str, reason: str, status: Status = "SKIP") -> Row:
    return Row(name, figure, unit, target=target, status=status, note=reason)


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("count", "clients"):
        return f"{value:.0f}"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def cells(row: Row) -> list[str]:
    peer = _num(row.peer, row.unit)
    if row.peer is not None and row.peer_name:
        peer = f"{peer} ({row.peer_name})"
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    return [row.figure, _num(row.ours, row.unit), peer, ratio, row.target or "-", row.status]


HEADER = ["figure", "ours", "peer", "ratio", "target", "result"]


def text_table(rows: list[Row]) -> str:
    table = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    out = []
    for i, line in enumerate(table):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  [{r.name}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row], *, title: str, machine: str, command: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"Machine: {machine}  ",
        f"Command: `{command}`",
        "",
        "ratio = ours / peer, both measured in this run; targets are the performance issue's; "
        "INFO rows have no target.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in cells(row)) + " |")
    notes = [r for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- `{r.name}`: {_md_escape(r.note)}" for r in notes]
    return "\n".join(lines) + "\n"


def machine_description() -> str:
    """nproc, the CPU model from /proc/cpuinfo, memory and the kernel."""
    import os

    model = "unknown CPU"
    mem = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024**2:.0f} GiB RAM"
                break
    except OSError:
        pass
    return f"nproc={os.cpu_count()}, {model}{mem}, Linux {platform.release()}, Python {platform.python_version()}"


def write_json(path: Path, rows: list[Row], machine: str) -> None:
    path.write_text(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=1))
