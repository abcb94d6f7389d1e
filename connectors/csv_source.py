"""CSV inputs (``.csv``, ``.csv.gz``): a header row, then one event per row.

A cell is text, so columns the contract types as integers are read as integers when they are
ASCII digits (and left as text, to be rejected as ``wrong_type``, when not). Lines end at ``\\n``,
``\\r\\n`` or a lone ``\\r``; a byte order mark is skipped; blank lines carry no record.

A row that can't become an event is a dead letter of its own: cells that don't parse (an unclosed
quote is ``malformed_row``, and swallows the rest of the file as CSV says it must), a cell count
that differs from the header's, bytes that are not UTF-8, a record past the size limit (cut while
it is read: one ``line_too_long``, then reading resumes after the record). Only a file without a
readable header, or whose header names a column twice, ends the run.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator
from functools import cache
from typing import IO, Any, cast

import schemas
from connectors.input_batches import BatchBuilder, too_long
from connectors.inputs import InputError, InputFile, InputSplit, open_content
from connectors.tabular import unflatten, unique_columns
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, Reason
from transforms.event_batch import InputRecords
from transforms.validate import EventRules

_INTEGER = re.compile(r"[+-]?\d+\Z", re.ASCII)
_UNCLOSED = "a quote opened in this record is never closed: the record runs to the end of the file"
#: Digits of the longest integer a 64-bit field can hold (with a sign: 20 characters).
_INTEGER_DIGITS = 20


class _RecordTooLong(Exception):
    """Raised through ``csv.reader`` when the record it is reading grows past the limit."""


class _CellState:
    """Whether a CSV record is inside a quoted cell at the point read so far, as ``csv.reader``
    reads it: a quote opens a quoted cell only at the cell's start (elsewhere it is text), ``""``
    inside one is a quote, and a line break inside one does not end the record. Fed in pieces."""

    _BREAKS = re.compile(r'[",\r\n]')

    def __init__(self) -> None:
        self.quoted = False  # inside a quoted cell
        self._cell_empty = True  # nothing read of the current cell yet
        self._quote_pending = False  # the last piece ended on a quote inside a quoted cell

    def feed(self, text: str) -> None:
        """Read on through ``text``."""
        i, n = 0, len(text)
        if self._quote_pending and n:
            self._quote_pending = False
            if text[0] == '"':  # an escaped quote: still inside the cell
                i = 1
            else:
                self.quoted, self._cell_empty = False, False
        while i < n:
            if self.quoted:
                j = text.find('"', i)
                if j < 0:
                    return
                if j + 1 == n:
                    self._quote_pending = True
                    return
                if text[j + 1] == '"':
                    i = j + 2
                    continue
                self.quoted, self._cell_empty, i = False, False, j + 1
                continue
            found = self._BREAKS.search(text, i)
            if found is None:
                self._cell_empty = False
                return
            j = found.start()
            if text[j] == '"':
                self.quoted = self._cell_empty and j == i
                self._cell_empty = False
            else:  # a comma or a line break: a new cell, or a new record, starts
                self._cell_empty = True
            i = j + 1


class _CsvLines:
    """The lines of a CSV input as ``csv.reader`` pulls them, decoded.

    Bytes that are not UTF-8 stay visible (surrogateescape) so that the row, not the file, is
    rejected. It keeps the first bytes of the record being read (``start`` begins a new one) and
    whether it is inside a quoted cell, and stops a record that grows past ``limit`` bytes, so
    neither a long line nor a quote that never closes is ever held whole.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self.limit = limit
        self.line_no = 0  # physical lines read so far
        self._after_cr = False  # the last read ended in "\r": a lone "\n" next is its CRLF's
        self.start()

    def start(self) -> None:
        """A new record begins with the next line."""
        self.first_line = self.line_no + 1
        self.parts: list[bytes] = []
        self.size = 0
        self.cells = _CellState()

    def raw(self) -> bytes:
        """The bytes of the record read since ``start`` (its first ``RAW_KEEP_BYTES + 1`` at most)."""
        return b"".join(self.parts)[: RAW_KEEP_BYTES + 1].rstrip(b"\r\n")

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self._line()
        if not line:
            raise StopIteration
        if self.size > self.limit:
            raise _RecordTooLong
        return line

    def skip_record(self) -> None:
        """Read on, holding nothing, to the end of the record that grew too long."""
        while self.cells.quoted and self._line(keep=False):
            pass

    def _line(self, keep: bool = True) -> str:
        """The next line ("" at the end of the input), its bytes and quotes accounted for."""
        line = self._read(self.limit + 1)  # characters: never fewer than bytes
        if not line:
            return line
        self.line_no += 1
        self._account(line, keep)
        if len(line) > self.limit and not line.endswith(("\n", "\r")):
            while chunk := self._read(1 << 20):  # the rest of the line, unheld
                self._account(chunk, keep=False)
                if chunk.endswith(("\n", "\r")):
                    break
        return line

    def _read(self, size: int) -> str:
        text = self._text.readline(size)
        if self._after_cr and text.startswith("\n"):  # a CRLF that the size limit split
            self.size += 1
            text = text[1:] or self._text.readline(size)
        self._after_cr = text.endswith("\r")
        return text

    def _account(self, text: str, keep: bool) -> None:
        data = text.encode("utf-8", "surrogateescape")
        if keep and self.size <= RAW_KEEP_BYTES:
            self.parts.append(data)
        self.size += len(data)
        self.cells.feed(text)


def read_csv(split: InputSplit, batch_lines: int, rules: EventRules) -> Iterator[InputRecords]:
    """Read a CSV input (header row first; always one split) as batches of parsed records."""
    file, limit = split.file, rules.max_record_bytes
    # A cell may hold a whole record (an inline image): the record limit is the only field limit.
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    try:
        with open_content(file) as stream:
            lines = _CsvLines(cast(IO[bytes], stream), limit)  # GzipFile reads like one
            yield from _csv_batches(file, lines, batch_lines, stream.tell)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"cannot read CSV input {file.name!r}: {exc}") from None


def _csv_batches(
    file: InputFile, lines: _CsvLines, batch_lines: int, position: Callable[[], int]
) -> Iterator[InputRecords]:
    """The batches of a CSV input; ``position`` tells how far into the content the text layer
    has read (a little ahead of the rows parsed, and at the end once they all are)."""
    covered = 0

    def records(batch: BatchBuilder) -> InputRecords:
        nonlocal covered
        batch.bytes_read = position() - covered
        covered += batch.bytes_read
        return batch.records(parsed=True)

    # strict: a quote still open at the end of the file is an error, not a cell that ate the rest.
    reader = csv.reader(lines, strict=True)
    header: list[str] = []
    batch = BatchBuilder(file)
    while not header:  # blank lines before the header carry nothing
        try:
            header = next(reader)
        except StopIteration:
            break
        except (csv.Error, _RecordTooLong) as exc:
            raise InputError(f"CSV input {file.name!r} has no readable header row: {exc}") from None
        if not header:
            batch.blank_lines += 1
    unique_columns(header, file.name)
    while header:
        lines.start()
        try:
            cells = next(reader)
        except StopIteration:
            break
        except _RecordTooLong:
            batch.add(lines.first_line, lines.raw(), too_long(lines.size, lines.limit))
            lines.skip_record()
            reader = csv.reader(lines, strict=True)  # the old one is inside the record it gave up
        except csv.Error as exc:
            detail = _UNCLOSED if str(exc) == "unexpected end of data" else f"cells do not parse: {exc}"
            batch.add(lines.first_line, lines.raw(), ContractViolation(Reason.MALFORMED_ROW, detail))
            reader = csv.reader(lines, strict=True)
        else:
            if cells:
                _add_row(batch, lines.first_line, lines.raw(), header, cells)
            else:  # a blank line carries no record; counted, not dead-lettered
                batch.blank_lines += 1
        if batch.full(batch_lines):
            yield records(batch)
            batch = BatchBuilder(file)
    if batch.raws or batch.blank_lines:
        yield records(batch)


def _add_row(batch: BatchBuilder, line_no: int, raw: bytes, header: list[str], cells: list[str]) -> None:
    try:
        if any("\udc80" <= ch <= "\udcff" for cell in cells for ch in cell):
            raise ContractViolation(Reason.INVALID_UTF8, "the row holds bytes that are not UTF-8")
        if len(cells) != len(header):
            raise ContractViolation(
                Reason.MALFORMED_ROW, f"row has {len(cells)} cells; the header has {len(header)}"
            )
        event = unflatten({column: _cell(column, cell) for column, cell in zip(header, cells, strict=True)})
    except ContractViolation as violation:
        batch.add(line_no, raw, violation)
    else:
        batch.add(line_no, raw, parsed=event)


@cache
def integer_columns() -> frozenset[str]:
    """Dotted names of every integer field in the event JSON Schema."""
    found: set[str] = set()

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, spec in props.items():
            if spec.get("type") == "integer":
                found.add(prefix + name)
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")

    walk(schemas.event_json_schema()["properties"], "")
    return frozenset(found)


def _cell(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in integer_columns() and _INTEGER.match(cell):
        if len(cell.lstrip("+-")) > _INTEGER_DIGITS:
            raise ContractViolation(
                Reason.OUT_OF_RANGE, f"{column} is an integer of {len(cell)} digits; it does not fit 64 bits"
            )
        return int(cell)
    return cell
