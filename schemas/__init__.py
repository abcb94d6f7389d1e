"""The project's contracts as data files, and small loaders that read them.

Every contract lives in exactly one file beside this module; code calls these loaders instead of
copying a limit, a price or a type into itself.
"""

from __future__ import annotations

import csv
import json
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

HERE = Path(__file__).resolve().parent
MIGRATIONS_DIR = HERE / "migrations"


@cache
def event_json_schema() -> dict[str, Any]:
    """The input event's JSON Schema (``event.schema.json``)."""
    return json.loads((HERE / "event.schema.json").read_text(encoding="utf-8"))


@cache
def run_summary_json_schema() -> dict[str, Any]:
    """The run summary's JSON Schema (``run_summary.schema.json``, generated from pipelines/summary.py)."""
    return json.loads((HERE / "run_summary.schema.json").read_text(encoding="utf-8"))


@cache
def _datasets() -> dict[str, Any]:
    return json.loads((HERE / "datasets.json").read_text(encoding="utf-8"))


def dataset_names() -> list[str]:
    """Names of the Parquet datasets whose schemas ``datasets.json`` defines."""
    return [name for name in _datasets() if not name.startswith("$")]


_SIMPLE_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _arrow_type(spec: str) -> pa.DataType:
    """The Arrow type a ``datasets.json`` type names.

    >>> _arrow_type("fixed_size_list<float32>[384]")
    FixedSizeListType(fixed_size_list<item: float>[384])
    >>> _arrow_type("map<string,int64>")
    MapType(map<string, int64>)
    """
    spec = spec.replace(" ", "")
    if spec.startswith("decimal(") and spec.endswith(")"):
        precision, scale = (int(part) for part in spec[len("decimal(") : -1].split(","))
        return pa.decimal128(precision, scale)
    if spec.startswith("fixed_size_list<") and spec.endswith("]"):
        item, size = spec[len("fixed_size_list<") : -1].split(">[")
        return pa.list_(_arrow_type(item), int(size))
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(_arrow_type(spec[len("list<") : -1]))
    if spec.startswith("map<") and spec.endswith(">"):
        key, value = spec[len("map<") : -1].split(",", 1)
        return pa.map_(_arrow_type(key), _arrow_type(value))
    if spec not in _SIMPLE_TYPES:
        raise ValueError(
            f"datasets.json: unknown type {spec!r}; expected one of {sorted(_SIMPLE_TYPES)},"
            " decimal(P,S), list<T>, fixed_size_list<T>[N] or map<K,V>"
        )
    return _SIMPLE_TYPES[spec]


@dataclass(frozen=True)
class Dataset:
    """One Parquet dataset under ``--out``, as ``datasets.json`` defines it."""

    name: str
    schema: pa.Schema
    #: The column whose UTC date names the ``dt=`` partition a row is written to.
    partition_time: str


@cache
def dataset(name: str) -> Dataset:
    """One output dataset, e.g. ``dataset("events")``; KeyError names the datasets there are."""
    try:
        spec = _datasets()[name]
    except KeyError:
        raise KeyError(f"no dataset {name!r} in datasets.json; have {dataset_names()}") from None
    schema = pa.schema(
        [pa.field(f["name"], _arrow_type(f["type"]), nullable=f["nullable"]) for f in spec["fields"]]
    )
    partition_time = spec["partition_time"]
    if partition_time not in schema.names:
        raise ValueError(f"datasets.json: {name}.partition_time {partition_time!r} is not one of its fields")
    return Dataset(name, schema, partition_time)


def datasets() -> list[Dataset]:
    """Every output dataset, in ``datasets.json`` order."""
    return [dataset(name) for name in dataset_names()]


def arrow_schema(name: str) -> pa.Schema:
    """The Arrow schema of one output dataset, e.g. ``arrow_schema("events")``."""
    return dataset(name).schema


@cache
def tier_table() -> dict[str, Any]:
    """Default rate-limit settings (``tiers.toml``): ``window_seconds`` and ``quotas`` by tier."""
    with (HERE / "tiers.toml").open("rb") as fh:
        return tomllib.load(fh)


#: The pricing table's columns, in order (``pricing.csv``; ``PRICING.md`` says what each means).
PRICING_COLUMNS = ("model", "effective_from", "input_per_1k_usd", "output_per_1k_usd", "per_image_usd")


def pricing_rows(path: Path | None = None) -> list[dict[str, str]]:
    """Rows of the pricing table (``pricing.csv`` unless another path is given), as strings.

    Every row holds every column: a cell that is *empty* means 0, but a *missing* cell (a row cut
    short) is an error, as are a header without the contract's columns, a column named twice, an
    unknown column or a row with cells beyond the header. The ValueError names the row (the
    header is row 1) and the column. A UTF-8 byte order mark is allowed.
    """
    with (path or HERE / "pricing.csv").open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [name.strip() for name in next(reader, [])]
        problem = _pricing_header_problem(header)
        if problem:
            raise ValueError(f"row 1 (the header): {problem}")
        rows = []
        row_no, blank = 1, None
        try:
            for row_no, cells in enumerate(reader, start=2):
                if not cells:  # blank lines may end the table, not interrupt it
                    blank = blank or row_no
                    continue
                if blank:
                    raise ValueError(f"row {blank} is empty; rows must follow one another")
                if len(cells) < len(header):
                    raise ValueError(
                        f"row {row_no}, column {header[len(cells)]}: the cell is missing (row {cells!r});"
                        " an empty cell means 0, a missing one is an error"
                    )
                if len(cells) > len(header):
                    columns = ", ".join(header)
                    raise ValueError(
                        f"row {row_no}: {len(cells)} cells, but the header has {len(header)}: {columns}"
                    )
                rows.append(dict(zip(header, cells, strict=True)))
        except csv.Error as exc:
            raise ValueError(f"row {row_no + 1}: {exc}") from None
    return rows


def _pricing_header_problem(header: list[str]) -> str | None:
    expected = ", ".join(PRICING_COLUMNS)
    if not header:
        return f"the table is empty; expected the columns {expected}"
    for name in header:
        if header.count(name) > 1:
            return f"column {name!r} appears twice"
        if name not in PRICING_COLUMNS:
            return f"unknown column {name!r}; expected {expected}"
    missing = [name for name in PRICING_COLUMNS if name not in header]
    return f"no column {missing[0]!r}; expected {expected}" if missing else None


#: The default topic list of semantic analysis (``topics.json``).
DEFAULT_TOPICS = HERE / "topics.json"
DEFAULT_BLOCKLIST = HERE / "moderation_blocklist.txt"
DEFAULT_IMAGE_BLOCKLIST = HERE / "image_blocklist.txt"


def list_file(path: Path) -> tuple[str, ...]:
    """The entries of a one-per-line list file (a blocklist): stripped, blank lines and ``#``
    comments left out, in file order.

    UnicodeDecodeError when the file is not UTF-8.
    """
    entries = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return tuple(entries)


def topics(path: Path | None = None) -> list[tuple[str, str]]:
    """``(label, description)`` of each topic in ``topics.json`` (or the file at ``path``).

    ValueError says what is wrong: not a JSON object with a ``topics`` list, an entry without a
    label (1 to 64 characters) or a description, a label given twice.
    """
    where = str(path or DEFAULT_TOPICS)
    try:
        doc = json.loads((path or DEFAULT_TOPICS).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"topics file {where!r} is not JSON: {exc}") from None
    entries = doc.get("topics") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"topics file {where!r}: expected an object with a non-empty `topics` list")
    found: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        label = entry.get("label") if isinstance(entry, dict) else None
        description = entry.get("description") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not 1 <= len(label) <= 64 or not isinstance(description, str):
            raise ValueError(
                f"topics file {where!r}: topics[{i}] must be {{label: 1-64 characters, description: text}}"
            )
        if label in (seen[0] for seen in found):
            raise ValueError(f"topics file {where!r}: label {label!r} is given twice")
        found.append((label, description))
    return found
