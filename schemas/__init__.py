"""The project's contracts as data files, and small loaders that read them.

Every contract lives in exactly one file beside this module; code calls these loaders instead of
copying a limit, a price or a type into itself.
"""

from __future__ import annotations

import csv
import json
import tomllib
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
def _datasets() -> dict[str, Any]:
    return json.loads((HERE / "datasets.json").read_text(encoding="utf-8"))


def dataset_names() -> list[str]:
    """Names of the Parquet datasets whose schemas ``datasets.json`` defines."""
    return [name for name in _datasets() if not name.startswith("$")]


def _arrow_type(spec: str) -> pa.DataType:
    if spec.startswith("decimal(") and spec.endswith(")"):
        precision, scale = (int(part) for part in spec[len("decimal(") : -1].split(","))
        return pa.decimal128(precision, scale)
    simple = {
        "string": pa.string(),
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "binary": pa.binary(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    if spec not in simple:
        raise ValueError(f"datasets.json: unknown type {spec!r}; expected one of {sorted(simple)}")
    return simple[spec]


@cache
def arrow_schema(dataset: str) -> pa.Schema:
    """The Arrow schema of one output dataset, e.g. ``arrow_schema("events")``."""
    try:
        spec = _datasets()[dataset]
    except KeyError:
        raise KeyError(f"no dataset {dataset!r} in datasets.json; have {dataset_names()}") from None
    return pa.schema(
        [pa.field(f["name"], _arrow_type(f["type"]), nullable=f["nullable"]) for f in spec["fields"]]
    )


@cache
def tier_table() -> dict[str, Any]:
    """Default rate-limit settings (``tiers.toml``): ``window_seconds`` and ``quotas`` by tier."""
    with (HERE / "tiers.toml").open("rb") as fh:
        return tomllib.load(fh)


def pricing_rows(path: Path | None = None) -> list[dict[str, str]]:
    """Rows of the pricing table (``pricing.csv`` unless another path is given), as strings."""
    with (path or HERE / "pricing.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
