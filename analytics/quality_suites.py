"""The data-quality suites: Great Expectations suites kept as data in ``schemas/expectations/``.

Each ``schemas/expectations/<name>.json`` is an expectation suite in GX's own JSON form (``name``,
``expectations``, ``meta``, ``notes``), with one addition under ``meta.aiep``:

- ``reads``: what the suite checks, a dataset of ``schemas/datasets.json`` (one file at a time)
  or ``run_summaries`` (one row per batch run summary; see :mod:`analytics.quality`);
- ``columns``: derived columns, ``{name: DuckDB SQL over the source's columns}``, which GX sees
  beside the stored ones, or instead of a stored one of the same name (``"cost": "CAST(cost AS
  DOUBLE)"``: GX compares a float, the file keeps its exact decimal).

Every dataset's suite also gets, when it is loaded, one ``expect_column_values_to_not_be_null`` per
column that ``datasets.json`` marks ``nullable: false``, so nullability has one source of truth.
Sets and bounds that another contract defines are GX suite parameters (``{"$PARAMETER":
"tiers"}``), filled in by :func:`suite_parameters` from that contract.

>>> events = load_suite("events")
>>> events.reads, events.expectations[0]["type"], events.expectations[0]["kwargs"]
('events', 'expect_column_values_to_not_be_null', {'column': 'event_id'})
>>> "dt" in events.columns and "cost_type" in events.derived
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

import schemas

EXPECTATIONS_DIR = schemas.HERE / "expectations"
#: What the conservation suite reads: the run summaries, not a dataset.
RUN_SUMMARIES = "run_summaries"
#: The partition column: not in the files, DuckDB reads it from the ``dt=`` folder.
PARTITION_COLUMN = "dt"
#: The keyword arguments of an expectation that name columns.
COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")


class QualityError(Exception):
    """Validation cannot run (no such directory, an unusable suite); one line for the operator."""


class SuiteError(QualityError, ValueError):
    """A suite file is not a usable suite; the message names the file and the place."""


@dataclass(frozen=True)
class SuiteSpec:
    """One suite, as loaded: the GX suite document and what it reads."""

    name: str
    #: A dataset of ``datasets.json``, or ``run_summaries``.
    reads: str
    #: Derived columns GX sees: name -> DuckDB SQL over the source's columns.
    derived: Mapping[str, str]
    #: GX expectation configurations (``type``, ``kwargs``, ``notes``), generated ones first.
    expectations: tuple[Mapping[str, Any], ...]
    #: The suite's ``meta`` and ``notes``, for GX.
    meta: Mapping[str, Any]
    notes: str | None
    path: Path

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the expectations name, in order of first use: what a batch must hold."""
        seen: dict[str, None] = {}
        for expectation in self.expectations:
            for column in columns_of(expectation):
                seen.setdefault(column, None)
        return tuple(seen)

    def projection(self, stored: pa.Schema | None) -> str:
        """The DuckDB select list that gives GX :attr:`columns`.

        A derived column is its SQL; ``dt`` comes from the folder; a binary or nested stored
        column (``raw``, a vector, a list or map) is only checked for NULL, so GX sees whether
        it is there (TRUE or NULL) and no vector or raw record is read into memory.
        """
        selected = []
        for column in self.columns:
            name = _quoted(column)
            if column in self.derived:
                selected.append(f"{self.derived[column]} AS {name}")
            elif stored is not None and column in stored.names and _is_bulky(stored.field(column).type):
                selected.append(f"CASE WHEN {name} IS NULL THEN NULL ELSE TRUE END AS {name}")
            else:
                selected.append(name)
        return ", ".join(selected)


def columns_of(expectation: Mapping[str, Any]) -> list[str]:
    """The columns an expectation configuration names.

    >>> columns_of({"type": "t", "kwargs": {"column_A": "a", "column_B": "b", "or_equal": True}})
    ['a', 'b']
    """
    kwargs = expectation.get("kwargs", {})
    found: list[str] = []
    for key in COLUMN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found.extend(str(v) for v in value)
    return found


def suite_names() -> list[str]:
    """Every suite ``validate`` runs: one per dataset of ``datasets.json``, then the run summaries'."""
    return [*schemas.dataset_names(), RUN_SUMMARIES]


def load_suites() -> list[SuiteSpec]:
    """Every suite, in :func:`suite_names` order; SuiteError when one is missing or unusable."""
    return [load_suite(name) for name in suite_names()]


@cache
def load_suite(name: str) -> SuiteSpec:
    """The suite ``schemas/expectations/<name>.json``, with its generated non-null expectations.

    SuiteError names the file and the place when the file is missing, is not JSON, reads a
    source that does not exist or names a column that its source does not have.
    """
    path = EXPECTATIONS_DIR / f"{name}.json"
    where = f"expectation suite {str(path)!r}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{where} is missing: every dataset of datasets.json needs a suite") from None
    except ValueError as exc:
        raise SuiteError(f"{where} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("name") != name:
        raise SuiteError(f"{where}: expected a GX suite object whose name is {name!r}")
    aiep = document.get("meta", {}).get("aiep", {})
    reads, derived = aiep.get("reads"), aiep.get("columns", {})
    if reads not in suite_names():
        raise SuiteError(f"{where}: at meta.aiep.reads: {reads!r} is not one of {suite_names()}")
    if not isinstance(derived, dict) or not all(isinstance(v, str) for v in derived.values()):
        raise SuiteError(f"{where}: at meta.aiep.columns: expected {{column: DuckDB SQL}}")
    listed = document.get("expectations", [])
    if not isinstance(listed, list) or not all(isinstance(e, dict) and "type" in e for e in listed):
        raise SuiteError(f"{where}: at expectations: expected a list of {{type, kwargs}} objects")
    generated = _not_null_expectations(reads) if reads != RUN_SUMMARIES else []
    spec = SuiteSpec(
        name=name,
        reads=reads,
        derived=dict(derived),
        expectations=tuple([*generated, *listed]),
        meta=document.get("meta", {}),
        notes=document.get("notes"),
        path=path,
    )
    if reads != RUN_SUMMARIES:
        known = {*schemas.arrow_schema(reads).names, *derived, PARTITION_COLUMN}
        for i, expectation in enumerate(listed):
            for column in columns_of(expectation):
                if column not in known:
                    raise SuiteError(
                        f"{where}: at expectations[{i}]: column {column!r} is neither a column of "
                        f"{reads} in datasets.json, nor one of meta.aiep.columns, nor {PARTITION_COLUMN!r}"
                    )
    return spec


def _not_null_expectations(dataset: str) -> list[dict[str, Any]]:
    """One ``expect_column_values_to_not_be_null`` per column ``datasets.json`` says is not nullable."""
    return [
        {
            "type": "expect_column_values_to_not_be_null",
            "kwargs": {"column": field.name},
            "notes": f"datasets.json: {dataset}.{field.name} is nullable: false",
        }
        for field in schemas.arrow_schema(dataset)
        if not field.nullable
    ]


def _is_bulky(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_map(kind)
        or pa.types.is_struct(kind)
    )


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


@cache
def suite_parameters() -> dict[str, Any]:
    """The values of the suites' ``$PARAMETER``s, each read from the contract that defines it.

    - ``decisions``: ``transforms.moderation.DECISIONS``;
    - ``tiers``: the event contract's ``ai_tier`` enum (``event.schema.json``);
    - ``hash_modes``: ``connectors.config.HASH_MODES``;
    - ``dead_letter_reasons``: the codes of ``transforms.dead_letter.Reason``;
    - ``event_time_min``, ``event_time_max``: the event contract's ``event_time`` ``x-range``.

    >>> suite_parameters()["event_time_min"].isoformat()
    '1970-01-01T00:00:01+00:00'
    """
    from connectors.config import HASH_MODES
    from transforms.dead_letter import Reason
    from transforms.moderation import DECISIONS

    properties = schemas.event_json_schema()["properties"]
    time_range = properties["event_time"]["x-range"]
    return {
        "decisions": list(DECISIONS),
        "tiers": list(properties["ai_tier"]["enum"]),
        "hash_modes": list(HASH_MODES),
        "dead_letter_reasons": [reason.value for reason in Reason],
        "event_time_min": datetime.fromisoformat(time_range["min"]),
        "event_time_max": datetime.fromisoformat(time_range["max"]),
    }
