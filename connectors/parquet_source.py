"""Parquet inputs: one event per row; ``line_no`` is the 1-based row number, ``raw`` the row as JSON.

Values become what the same event holds in JSON: a decimal is a number, binary is UTF-8 text, a
timestamp with a zone is RFC 3339 text, a null struct field is an absent one. A value JSON cannot
carry, or Python cannot hold, makes its row a dead letter with the reason of the rule it breaks.

Rows are converted in chunks of about ``BATCH_BYTES`` of *decoded* data (a dictionary-encoded
column can decode to far more than the file holds), and a row larger than any valid event is cut
without being converted: memory stays bounded by the file's largest row, not by its row count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.input_batches import BATCH_BYTES, BatchBuilder, too_long
from connectors.inputs import InputError, InputSplit
from connectors.storage import parquet_source
from connectors.tabular import unflatten, unique_columns
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, Reason
from transforms.event_batch import InputRecords
from transforms.validate import EventRules, json_bytes, nesting_too_deep


class _Unreadable:
    """A Parquet value Python cannot hold (a timestamp past year 9999, bytes a string can't be)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def read_parquet(split: InputSplit, batch_lines: int, rules: EventRules) -> Iterator[InputRecords]:
    """Read a Parquet input (always one split) as batches of parsed records.

    Its rows are read by column, not in the file's byte order, so a batch's ``bytes_read`` is its
    share of the file by rows: the batches of a file add up to its size.
    """
    file = split.file
    try:
        # Dictionary-encoded strings stay encoded until a chunk of rows is converted: decoded at
        # once, one repeated 5 MB string in a 300-row file is 1.5 GB.
        path, filesystem = parquet_source(file.path)
        dictionary = _dictionary_columns(pq.read_metadata(path, filesystem=filesystem))
        parquet = pq.ParquetFile(path, read_dictionary=dictionary, filesystem=filesystem)
        total_rows = parquet.metadata.num_rows
        names = parquet.schema_arrow.names
        unique_columns(names, file.name)
        builder = BatchBuilder(file)
        for first_row, chunk, weight in _row_chunks(parquet, batch_lines, rules.max_record_bytes):
            rows = len(builder.raws) + chunk.num_rows
            if builder.raws and (builder.bytes + weight > BATCH_BYTES or rows > batch_lines):
                yield builder.records(parsed=True)
                builder = BatchBuilder(file)
            last_row = first_row + chunk.num_rows - 1
            builder.bytes_read += _share(file.content_size, last_row, total_rows) - _share(
                file.content_size, first_row - 1, total_rows
            )
            if chunk.num_rows == 1 and weight > rules.max_record_bytes:  # too large to convert
                builder.add(first_row, _preview(chunk), too_long(weight, rules.max_record_bytes))
            else:
                _add_rows(builder, first_row, names, chunk, rules)
        if builder.raws:
            yield builder.records(parsed=True)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read Parquet input {file.name!r}: {exc}") from None


def _share(size: int, rows: int, total_rows: int) -> int:
    """The bytes of ``size`` that the first ``rows`` of ``total_rows`` rows stand for.

    >>> [_share(10, rows, 3) for rows in range(4)]
    [0, 3, 6, 10]
    """
    return size * rows // total_rows


def _row_chunks(
    parquet: pq.ParquetFile, batch_lines: int, limit: int
) -> Iterator[tuple[int, pa.RecordBatch, int]]:
    """``(row number of its first row, chunk, decoded bytes)`` of consecutive rows holding about
    ``BATCH_BYTES``, read a row group at a time; a row over ``limit`` is a chunk of its own."""
    row_no = 1
    for group in range(parquet.metadata.num_row_groups):
        rows = _rows_per_read(parquet.metadata.row_group(group), batch_lines)
        for arrow_batch in parquet.iter_batches(batch_size=rows, row_groups=[group]):
            sizes = _row_bytes(arrow_batch)
            for start, stop in _chunks(sizes, limit):
                yield row_no + start, arrow_batch.slice(start, stop - start), int(sizes[start:stop].sum())
            row_no += arrow_batch.num_rows


def _dictionary_columns(metadata: pq.FileMetaData) -> list[str]:
    """Paths of the string columns some row group stores dictionary-encoded."""
    paths = set()
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for i in range(row_group.num_columns):
            column = row_group.column(i)
            if column.physical_type == "BYTE_ARRAY" and any("DICTIONARY" in e for e in column.encodings):
                paths.add(column.path_in_schema)
    return sorted(paths)


def _rows_per_read(row_group: pq.RowGroupMetaData, batch_lines: int) -> int:
    """Rows read at a time from a row group so that Arrow holds about ``BATCH_BYTES`` (by the
    group's own uncompressed size; dictionary-encoded columns stay encoded)."""
    per_row = max(1, row_group.total_byte_size // max(1, row_group.num_rows))
    return max(1, min(batch_lines, BATCH_BYTES // per_row))


def _add_rows(
    builder: BatchBuilder, first_row: int, names: list[str], chunk: pa.RecordBatch, rules: EventRules
) -> None:
    columns = [_column_values(column) for column in chunk.columns]
    for i in range(chunk.num_rows):
        row = {name: column[i] for name, column in zip(names, columns, strict=True)}
        try:
            values = {name: _json_value(value, name) for name, value in row.items()}
            raw = json_bytes(values, rules)
            builder.add(first_row + i, raw, parsed=unflatten(values))
        except RecursionError:
            builder.add(first_row + i, _raw_of(row), nesting_too_deep(rules))
        except ContractViolation as violation:
            builder.add(first_row + i, _raw_of(row), violation)


def _chunks(sizes: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive rows holding about ``BATCH_BYTES`` at most; a row over
    ``limit`` is a chunk of its own."""
    start, held = 0, 0
    for i, size in enumerate(sizes.tolist()):
        if size > limit or (held and held + size > BATCH_BYTES):
            if i > start:
                yield start, i
            start, held = i, 0
            if size > limit:
                yield i, i + 1
                start = i + 1
                continue
        held += size
    if start < len(sizes):
        yield start, len(sizes)


def _row_bytes(batch: pa.RecordBatch) -> np.ndarray:
    """About how many bytes each row takes once decoded (its strings and binaries, nested ones
    and dictionary-encoded ones included; 8 bytes per other value)."""
    total = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        total += _value_bytes(column)
    return total


def _value_bytes(array: pa.Array) -> np.ndarray:
    """Bytes each value of ``array`` takes once decoded, nested values summed into their row."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = _value_bytes(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
        return lengths[indices] if len(lengths) else np.zeros(len(array), dtype=np.int64)
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_struct(kind):
        sizes = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            sizes += _value_bytes(child)
        return sizes
    if pa.types.is_fixed_size_list(kind):
        child = np.concatenate([[0], np.cumsum(_value_bytes(array.values))])
        starts = (np.arange(len(array)) + array.offset) * kind.list_size
        return child[starts + kind.list_size] - child[starts]
    if hasattr(array, "offsets") and hasattr(array, "values"):  # lists, large lists, maps, list views
        child = np.concatenate([[0], np.cumsum(_value_bytes(array.values))])
        offsets = array.offsets.to_numpy(zero_copy_only=False)
        if hasattr(array, "sizes"):  # a list view: each row names its own slice
            ends = offsets + array.sizes.to_numpy(zero_copy_only=False)
            return child[ends] - child[offsets]
        return child[offsets[1:]] - child[offsets[:-1]]
    width = kind.bit_width // 8 if pa.types.is_primitive(kind) and kind.bit_width >= 8 else 8
    return np.full(len(array), width, dtype=np.int64)


def _column_values(column: pa.Array) -> list[Any]:
    """A column as Python values; a value Python cannot hold becomes ``_Unreadable``."""
    try:
        return column.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        values: list[Any] = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except UnicodeDecodeError as exc:
                values.append(
                    _Unreadable(Reason.INVALID_UTF8, f"holds bytes that are not UTF-8 ({exc.reason})")
                )
            except (ValueError, OverflowError) as exc:
                reason = Reason.OUT_OF_RANGE if _temporal(column.type) else Reason.MALFORMED_ROW
                values.append(_Unreadable(reason, f"holds a {column.type} value Python cannot hold ({exc})"))
            except pa.ArrowException as exc:
                values.append(_Unreadable(Reason.MALFORMED_ROW, f"holds a value Arrow cannot read ({exc})"))
        return values


def _temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind)


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
        reason = (
            Reason.TIMESTAMP_OUT_OF_RANGE
            if path == "event_time" and value.reason == Reason.OUT_OF_RANGE
            else value.reason
        )
        raise ContractViolation(reason, f"{path} {value.detail}")
    raise ContractViolation(
        Reason.WRONG_TYPE, f"{path} holds a {type(value).__name__}, which JSON cannot carry"
    )


def _raw_of(row: dict[str, Any]) -> bytes:
    """The row as JSON text for a dead letter, whatever it holds (``repr`` of what JSON can't)."""
    try:
        raw = orjson.dumps(row, default=repr, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, RecursionError):  # nested past orjson's limit
        raw = repr(row)[: RAW_KEEP_BYTES + 1].encode("utf-8", "backslashreplace")
    return raw[: RAW_KEEP_BYTES + 1]


def _preview(row: pa.RecordBatch) -> bytes:
    """The first bytes of a row too large to convert: its string columns cut before they reach
    Python, then the row as JSON."""
    cut = []
    for column in row.columns:
        kind = column.type
        if pa.types.is_dictionary(kind):
            column = column.dictionary_decode()
            kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = pc.utf8_slice_codeunits(column, 0, RAW_KEEP_BYTES)
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            column = pc.binary_slice(column, 0, RAW_KEEP_BYTES)
        cut.append(column)
    preview = pa.RecordBatch.from_arrays(cut, names=row.schema.names)
    return _raw_of(preview.to_pylist()[0])
