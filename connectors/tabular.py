"""CSV and Parquet inputs: rows with the event's fields as (dotted) columns.

Nested fields are dotted column names (``input.text``, ``usage.input_tokens``,
``output.image.path``); Parquet may also nest them as structs. A CSV cell is text, so columns the
contract types as integers are read as integers when they look like one (and left as text, to be
rejected as ``wrong_type``, when not). An empty CSV cell or a Parquet null means "absent".
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from typing import Any

import orjson
import pyarrow.parquet as pq

import schemas
from connectors.sources import InputError, InputFile
from transforms.dead_letter import ContractViolation, Reason
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
        if isinstance(value, datetime):
            value = value.isoformat() if value.tzinfo else value.isoformat() + " (no zone)"
        parts = key.split(".")
        node = event
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ContractViolation(Reason.WRONG_TYPE, f"column {key!r} nests under a value")
            node = child
        node[parts[-1]] = value
    return event


def _csv_cell(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in _integer_columns() and _INTEGER.match(cell):
        return int(cell)
    return cell


def read_csv(file: InputFile, batch_lines: int) -> Iterator[InputRecords]:
    """Read a CSV input (header row first) as batches of parsed records."""
    raw_handle = gzip.open(file.path, "rb") if file.gzip else open(file.path, "rb")  # noqa: SIM115
    # surrogateescape keeps invalid UTF-8 visible so the row, not the file, is rejected.
    text = io.TextIOWrapper(raw_handle, encoding="utf-8", errors="surrogateescape", newline="")
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in text:
            consumed.append(line)
            yield line

    try:
        reader = csv.reader(lines())
        header = next(reader, None)
        if header is None:
            return
        consumed.clear()
        batch = InputRecords(file.name, file.order, [], [], [])
        line_no = reader.line_num + 1
        for cells in reader:
            raw = "".join(consumed).rstrip("\r\n").encode("utf-8", "surrogateescape")
            consumed.clear()
            assert batch.parsed is not None
            batch.line_nos.append(line_no)
            batch.raws.append(raw)
            batch.parsed.append(_csv_record(header, cells))
            line_no = reader.line_num + 1
            if len(batch.raws) >= batch_lines:
                yield batch
                batch = InputRecords(file.name, file.order, [], [], [])
        if batch.raws:
            yield batch
    except (OSError, EOFError, gzip.BadGzipFile, csv.Error) as exc:
        raise InputError(f"cannot read CSV input {file.name!r}: {exc}") from None
    finally:
        text.close()


def _csv_record(header: list[str], cells: list[str]) -> Any:
    if any("\udc80" <= ch <= "\udcff" for cell in cells for ch in cell):
        return ContractViolation(Reason.INVALID_UTF8, "the row holds bytes that are not UTF-8")
    if len(cells) != len(header):
        return ContractViolation(
            Reason.MALFORMED_ROW,
            f"row has {len(cells)} cells; the header has {len(header)}",
        )
    try:
        return unflatten({col: _csv_cell(col, cell) for col, cell in zip(header, cells, strict=True)})
    except ContractViolation as violation:
        return violation


def read_parquet(file: InputFile, batch_lines: int) -> Iterator[InputRecords]:
    """Read a Parquet input; ``line_no`` is the 1-based row number, ``raw`` the row as JSON."""
    try:
        parquet = pq.ParquetFile(file.path)
        row_no = 1
        for batch in parquet.iter_batches(batch_size=batch_lines):
            rows = batch.to_pylist()
            parsed: list[Any] = []
            raws: list[bytes] = []
            for row in rows:
                raws.append(orjson.dumps(row, default=str))
                try:
                    parsed.append(unflatten(row))
                except ContractViolation as violation:
                    parsed.append(violation)
            yield InputRecords(file.name, file.order, list(range(row_no, row_no + len(rows))), raws, parsed)
            row_no += len(rows)
    except OSError as exc:
        raise InputError(f"cannot read Parquet input {file.name!r}: {exc}") from None
