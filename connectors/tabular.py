"""CSV and Parquet inputs: rows with the event's fields as (dotted) columns.

Nested fields are dotted column names (``input.text``, ``usage.input_tokens``,
``output.image.path``); Parquet may also nest them as structs. A CSV cell is text, so columns the
contract types as integers are read as integers when they look like one (and left as text, to be
rejected as ``wrong_type``, when not). An empty CSV cell or a Parquet null means "absent".

A row the reader cannot turn into an event (a CSV row with too many cells or a stray carriage
return, a record over the size limit, a Parquet value that JSON cannot carry) becomes a dead
letter of its own; only an input that cannot be read as a whole (no header, a header naming a
column twice, a file that is not Parquet) ends the run.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from typing import IO, Any, cast

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from connectors.sources import BatchBuilder, InputError, InputFile, too_long
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, Reason
from transforms.event_batch import InputRecords

_INTEGER = re.compile(r"[+-]?\d+\Z")


@cache
def _integer_columns() -> frozenset[str]:
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


def unflatten(row: dict[str, Any]) -> dict[str, Any]:
    """Nest dotted keys and drop absent values.

    >>> unflatten({"event_id": "e1", "usage.input_tokens": 3, "input.text": None})
    {'event_id': 'e1', 'usage': {'input_tokens': 3}}
    """
    event: dict[str, Any] = {}
    for key, value in row.items():
        if value is None:
            continue
        if isinstance(value, dict):
            value = unflatten(value)
            if not value:
                continue
        parts = key.split(".")
        node = event
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ContractViolation(Reason.WRONG_TYPE, f"column {key!r} nests under a value")
            node = child
        node[parts[-1]] = value
    return event


def _unique_columns(names: list[str], source: str) -> None:
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise InputError(f"input {source!r} names column {twice[0]!r} more than once")


# --- CSV ---------------------------------------------------------------------------------------


class _RecordTooLong(Exception):
    """Raised through ``csv.reader`` when the record it is reading grows past the limit."""


class _CsvLines:
    """The lines of a CSV input as ``csv.reader`` pulls them, decoded.

    Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``, as the csv module expects; a byte order mark
    is skipped; bytes that are not UTF-8 stay visible (surrogateescape) so that the row, not the
    file, is rejected. It remembers the raw bytes of the record being read (``start`` begins a new
    one) and stops a record that grows past ``limit`` bytes, so neither a long line nor an unclosed
    quote that swallows the rest of the file is ever held whole.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self.limit = limit
        self.line_no = 0  # physical lines read so far
        self.start()

    def start(self) -> None:
        """A new record begins with the next line."""
        self.first_line = self.line_no + 1
        self.parts: list[bytes] = []
        self.size = 0

    def raw(self) -> bytes:
        """The bytes of the record read since ``start`` (its first ``RAW_KEEP_BYTES + 1`` at most)."""
        return b"".join(self.parts)[: RAW_KEEP_BYTES + 1].rstrip(b"\r\n")

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self.limit + 1)  # characters: never fewer than bytes
        if not line:
            raise StopIteration
        self.line_no += 1
        data = line.encode("utf-8", "surrogateescape")
        self.size += len(data)
        if self.size - len(data) <= RAW_KEEP_BYTES:
            self.parts.append(data)
        if len(line) > self.limit and not line.endswith(("\n", "\r")):
            while chunk := self._text.readline(1 << 20):  # skip the rest of the line unheld
                self.size += len(chunk.encode("utf-8", "surrogateescape"))
                if chunk.endswith(("\n", "\r")):
                    break
        if self.size > self.limit:
            raise _RecordTooLong
        return line


def _csv_cell(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in _integer_columns() and _INTEGER.match(cell):
        return int(cell)
    return cell


def read_csv(file: InputFile, batch_lines: int, max_record_bytes: int) -> Iterator[InputRecords]:
    """Read a CSV input (header row first) as batches of parsed records."""
    # A cell may hold a whole record (an inline image): the record limit is the only field limit.
    csv.field_size_limit(max(csv.field_size_limit(), max_record_bytes))
    try:
        with gzip.open(file.path, "rb") if file.gzip else open(file.path, "rb") as stream:
            lines = _CsvLines(cast(IO[bytes], stream), max_record_bytes)  # GzipFile reads like one
            yield from _csv_batches(file, lines, batch_lines)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"cannot read CSV input {file.name!r}: {exc}") from None


def _csv_batches(file: InputFile, lines: _CsvLines, batch_lines: int) -> Iterator[InputRecords]:
    reader = csv.reader(lines)
    header: list[str] = []
    batch = BatchBuilder(file)
    while not header:  # blank lines before the header carry nothing
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, _RecordTooLong) as exc:
            raise InputError(f"CSV input {file.name!r} has no readable header row: {exc}") from None
        if not header:
            batch.blank_lines += 1
    _unique_columns(header, file.name)
    while True:
        lines.start()
        try:
            cells = next(reader)
        except StopIteration:
            break
        except _RecordTooLong:
            batch.add(lines.first_line, lines.raw(), too_long(lines.size, lines.limit))
            reader = csv.reader(lines)  # the old reader may be inside an unclosed quote
        except csv.Error as exc:
            batch.add(lines.first_line, lines.raw(), ContractViolation(Reason.MALFORMED_ROW, str(exc)))
            reader = csv.reader(lines)
        else:
            if cells:
                raw = lines.raw()
                try:
                    batch.add(lines.first_line, raw, parsed=_csv_record(header, cells))
                except ContractViolation as violation:
                    batch.add(lines.first_line, raw, violation)
            else:  # a blank line carries no record; counted, not dead-lettered
                batch.blank_lines += 1
        if batch.full(batch_lines):
            yield batch.records(parsed=True)
            batch = BatchBuilder(file)
    if batch.raws or batch.blank_lines:
        yield batch.records(parsed=True)


def _csv_record(header: list[str], cells: list[str]) -> dict[str, Any]:
    if any("\udc80" <= ch <= "\udcff" for cell in cells for ch in cell):
        raise ContractViolation(Reason.INVALID_UTF8, "the row holds bytes that are not UTF-8")
    if len(cells) != len(header):
        raise ContractViolation(
            Reason.MALFORMED_ROW, f"row has {len(cells)} cells; the header has {len(header)}"
        )
    return unflatten({col: _csv_cell(col, cell) for col, cell in zip(header, cells, strict=True)})


# --- Parquet -----------------------------------------------------------------------------------


class _Unreadable:
    """A Parquet value Python cannot represent (a timestamp past year 9999, say)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def read_parquet(file: InputFile, batch_lines: int, max_record_bytes: int) -> Iterator[InputRecords]:
    """Read a Parquet input; ``line_no`` is the 1-based row number, ``raw`` the row as JSON."""
    try:
        parquet = pq.ParquetFile(file.path)
        names = parquet.schema_arrow.names
        _unique_columns(names, file.name)
        row_no = 1
        for batch in parquet.iter_batches(batch_size=_rows_per_batch(parquet.metadata, batch_lines)):
            columns = [_column_values(column) for column in batch.columns]
            builder = BatchBuilder(file)
            for i in range(batch.num_rows):
                row = {name: column[i] for name, column in zip(names, columns, strict=True)}
                raw, violation, parsed = _parquet_record(row, max_record_bytes)
                builder.add(row_no + i, raw, violation, parsed)
            row_no += batch.num_rows
            yield builder.records(parsed=True)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet input {file.name!r}: {exc}") from None


def _rows_per_batch(metadata: pq.FileMetaData, batch_lines: int) -> int:
    """Rows per batch such that a batch holds about ``BATCH_BYTES`` (by the file's own sizes)."""
    from connectors.sources import BATCH_BYTES

    if metadata.num_rows == 0:
        return batch_lines
    total = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    per_row = max(1, total // metadata.num_rows)
    return max(1, min(batch_lines, BATCH_BYTES // per_row))


def _column_values(column: pa.Array) -> list[Any]:
    """A column as Python values; a value Python cannot represent becomes ``_Unreadable``."""
    try:
        return column.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        values: list[Any] = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except (ValueError, OverflowError, pa.ArrowException) as exc:
                values.append(_Unreadable(f"{column.type} value {str(exc)[:200]}"))
        return values


def _parquet_record(row: dict[str, Any], limit: int) -> tuple[bytes, ContractViolation | None, Any]:
    """``(raw, violation, event)`` of one Parquet row: the row as JSON text and as an event."""
    try:
        values = {name: _json_value(value, name) for name, value in row.items()}
        raw = orjson.dumps(values)
    except ContractViolation as violation:
        return _raw_of(row), violation, None
    if len(raw) > limit:
        return raw[: RAW_KEEP_BYTES + 1], too_long(len(raw), limit), None
    try:
        return raw, None, unflatten(values)
    except ContractViolation as violation:
        return raw, violation, None


def _json_value(value: Any, path: str) -> Any:
    """``value`` as the JSON value an equivalent JSONL record would hold; rejects what JSON can't.

    >>> _json_value({"at": datetime(2025, 7, 1), "n": Decimal("2"), "x": Decimal("0.5")}, "metadata")
    {'at': '2025-07-01T00:00:00 (no zone)', 'n': 2, 'x': 0.5}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ContractViolation(Reason.OUT_OF_RANGE, f"{path} is {value}, which JSON cannot carry")
        return value
    if isinstance(value, dict):
        return {key: _json_value(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):  # a map entry
        return [value[0], _json_value(value[1], f"{path}.{value[0]}")]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        # A timestamp without a zone is not RFC 3339: the marker makes event_time reject it.
        return value.isoformat() if value.tzinfo else f"{value.isoformat()} (no zone)"
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractViolation(Reason.INVALID_UTF8, f"{path} holds bytes that are not UTF-8") from None
    if isinstance(value, _Unreadable):
        reason = Reason.TIMESTAMP_OUT_OF_RANGE if path == "event_time" else Reason.OUT_OF_RANGE
        raise ContractViolation(reason, f"{path}: {value.detail}")
    raise ContractViolation(
        Reason.WRONG_TYPE, f"{path} holds a {type(value).__name__}, which JSON cannot carry"
    )


def _raw_of(row: dict[str, Any]) -> bytes:
    """The row as JSON text for a dead letter, whatever it holds."""
    raw = orjson.dumps(row, default=repr, option=orjson.OPT_NON_STR_KEYS)
    return raw[: RAW_KEEP_BYTES + 1]
