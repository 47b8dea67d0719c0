"""R's DCF (Debian Control File) format: DESCRIPTION and PACKAGES files.

Parsing follows what R's ``read.dcf()`` accepts (R's C function ``do_readDCF``),
checked against R 4.2 itself:

- a record is a run of non-blank lines; lines holding only blanks separate records;
- a field line is ``Tag: value``; the tag is everything before the first ``:``, kept
  as is (read.dcf reads ``B :x`` as field ``"B "``), the value has leading and trailing
  blanks removed;
- a line starting with a space or tab continues the previous field; its leading and
  trailing blanks are removed and it is joined with ``\\n``; a continuation line that is
  just ``.`` stands for an empty line (Debian policy, honoured by read.dcf);
- a field given twice in one record: the last one wins (read.dcf's default, ``all=FALSE``);
- ``\\r\\n`` line ends are accepted; any other line is an error (read.dcf: "Line starting
  '...' is malformed!"), as is a continuation line that opens a record.

Rendering writes what ``read.dcf`` reads back unchanged: one ``Tag: value`` line, further
lines of a multi-line value as continuation lines (an empty line as `` .``), and records
separated by one blank line. Missing (``None``) values are left out, like ``write.dcf``
leaves out ``NA``.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.errors import BadRequest

_BLANKS = " \t"


class DcfError(BadRequest):
    """A DCF text R's read.dcf would refuse. A BadRequest so an upload reports it as is."""


def _preview(line: str) -> str:
    return line[:40].replace("\t", " ")


def parse_dcf(text: str | bytes) -> list[dict[str, str]]:
    """Parse DCF text into its records, each a dict of field -> value in file order.

    Bytes are decoded as UTF-8, falling back to Latin-1 (R's DESCRIPTION files may declare
    ``Encoding: latin1``; PACKAGES files are plain ASCII in practice).
    """
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    if text.startswith("\ufeff"):
        text = text[1:]
    records: list[dict[str, str]] = []
    current: dict[str, list[str]] | None = None
    last_tag: str | None = None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if line.strip(_BLANKS) == "":
            if current is not None:
                records.append({k: "\n".join(v) for k, v in current.items()})
            current, last_tag = None, None
            continue
        if line[0] in _BLANKS:
            if current is None or last_tag is None:
                raise DcfError(
                    f"DCF line {lineno}: continuation line starting '{_preview(line.strip())}' "
                    "at the beginning of a record"
                )
            piece = line.strip(_BLANKS)
            current[last_tag].append("" if piece == "." else piece)
            continue
        tag, sep, value = line.partition(":")
        if not sep or not tag:
            raise DcfError(f"DCF line {lineno}: line starting '{_preview(line)}' is malformed")
        if current is None:
            current = {}
        # read.dcf keeps the last of repeated fields; re-insert so order follows the winner.
        current.pop(tag, None)
        value = value.strip(_BLANKS)
        current[tag] = [value]
        last_tag = tag
    if current is not None:
        records.append({k: "\n".join(v) for k, v in current.items()})
    # A value that only has continuation lines starts with an empty first line: read.dcf
    # drops it ("C:\n  onlycont" reads as "onlycont").
    return [{k: v.lstrip("\n") if v.startswith("\n") else v for k, v in r.items()} for r in records]


def _check_tag(tag: str) -> None:
    if not tag or ":" in tag or "\n" in tag or tag[0] in _BLANKS or tag.strip(_BLANKS) != tag:
        raise ValueError(f"invalid DCF field name {tag!r}")


def render_record(record: Mapping[str, str | None]) -> str:
    """One record as DCF text, ending with a newline (no blank line after it)."""
    out: list[str] = []
    for tag, value in record.items():
        if value is None:
            continue
        _check_tag(tag)
        lines = value.replace("\r\n", "\n").split("\n")
        first = lines[0].strip(_BLANKS)
        out.append(f"{tag}: {first}" if first else f"{tag}:")
        for more in lines[1:]:
            more = more.strip(_BLANKS)
            out.append(f"        {more}" if more else " .")
    return "".join(f"{line}\n" for line in out)


def render_dcf(records: Iterable[Mapping[str, str | None]]) -> str:
    """Records as DCF text, separated by blank lines (the layout of R's write.dcf)."""
    return "\n".join(render_record(r) for r in records)
