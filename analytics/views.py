"""DuckDB views over an output directory: one per dataset of ``schemas/datasets.json``, and ``runs``.

Each dataset's view reads its Hive-partitioned Parquet in place (``dt`` is a DATE column, NULL for
``__HIVE_DEFAULT_PARTITION__``) and always has every column the contract declares, with the
contract's type, whatever the folder holds: a dataset a run did not write (``moderation/`` of a run
with ``--no-moderation``) is an empty view, and files written before a column existed read it as
NULL. ``runs`` holds one row per run summary in ``_runs/``: the batch runs' summaries (checked by
:meth:`pipelines.summary.RunSummary.load`) and the stream job's (``*.stream.json``, one per
execution), with the summary's scalar fields as typed columns (from
``schemas/run_summary.schema.json``) and its nested ones as JSON text.

:func:`connect` opens an in-memory DuckDB with the views; :func:`read_only_connection` also locks it
down for SQL someone typed: only files under the output directory can be read, nothing can be
written, and the settings cannot be changed back. :func:`check_read_only` refuses a statement that
is not a query (``COPY``, ``CREATE``, ``ATTACH``, ``INSERT``, ``SET``, …) before it runs.

>>> print(dataset_view_sql(Path("/data/out"), schemas.dataset("rate_limit_violations"), files=True))
CREATE OR REPLACE VIEW "rate_limit_violations" AS
SELECT CAST(NULL AS BIGINT) AS "user_id", ... CAST(NULL AS DATE) AS dt WHERE false
UNION ALL BY NAME
SELECT * FROM read_parquet('/data/out/rate_limit_violations/dt=*/*.parquet',
    hive_partitioning = true, hive_types = {'dt': DATE}, union_by_name = true)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import schemas

#: Where a dataset's files are, under its folder.
PARTITION_GLOB = "dt=*/*.parquet"
#: What the SQL of ``runner.py sql`` may be: a query, or EXPLAIN of one.
QUERY_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
#: The view of the run summaries.
RUNS = "runs"


class ViewError(Exception):
    """The views cannot be built or the SQL cannot run; the message is one line for the operator."""


class QueryRefused(ViewError):
    """The SQL is not a query (it would write, attach or change a setting), or does not parse."""


def duckdb_type(arrow: pa.DataType) -> str:
    """DuckDB's name for an Arrow type of ``datasets.json`` (as DuckDB itself maps it on reading
    Arrow or Parquet; a test holds the two together).

    >>> duckdb_type(pa.list_(pa.float32(), 384)), duckdb_type(pa.map_(pa.string(), pa.int64()))
    ('FLOAT[384]', 'MAP(VARCHAR, BIGINT)')
    """
    if pa.types.is_fixed_size_list(arrow):
        return f"{duckdb_type(arrow.value_type)}[{arrow.list_size}]"
    if pa.types.is_list(arrow):
        return f"{duckdb_type(arrow.value_type)}[]"
    if pa.types.is_map(arrow):
        return f"MAP({duckdb_type(arrow.key_type)}, {duckdb_type(arrow.item_type)})"
    if pa.types.is_decimal(arrow):
        return f"DECIMAL({arrow.precision},{arrow.scale})"
    if pa.types.is_timestamp(arrow):
        return "TIMESTAMP WITH TIME ZONE" if arrow.tz else "TIMESTAMP"
    simple = {
        pa.string(): "VARCHAR",
        pa.int64(): "BIGINT",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BLOB",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
    }
    if arrow not in simple:
        raise ValueError(f"no DuckDB type for the Arrow type {arrow}")
    return simple[arrow]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def dataset_view_sql(out_dir: Path, dataset: schemas.Dataset, *, files: bool | None = None) -> str:
    """The ``CREATE VIEW`` of one dataset under ``out_dir``.

    Its first part is an empty row set with the contract's columns and types (and ``dt``), so the
    view has them all even when no file does; the files, when ``files`` (default: when the folder
    holds any), are added to it by name.
    """
    folder = out_dir / dataset.name
    if files is None:
        files = any(folder.glob(PARTITION_GLOB))
    typed = ", ".join(
        f"CAST(NULL AS {sql_type}) AS {_quote(name)}"
        for name, sql_type in zip(dataset.schema.names, map(duckdb_type, dataset.schema.types), strict=True)
    )
    view = _quote(dataset.name)
    sql = f"CREATE OR REPLACE VIEW {view} AS\nSELECT {typed}, CAST(NULL AS DATE) AS dt WHERE false"
    if files:
        pattern = _literal(str(folder / PARTITION_GLOB))
        sql += (
            f"\nUNION ALL BY NAME\nSELECT * FROM read_parquet({pattern},\n    hive_partitioning = true, "
            "hive_types = {'dt': DATE}, union_by_name = true)"
        )
    return sql


def runs_schema() -> pa.Schema:
    """The ``runs`` view's columns: ``kind`` (batch | stream), then each field of the run summary's
    JSON Schema, a scalar typed as the schema says and a nested value as JSON text."""
    fields = [pa.field("kind", pa.string(), nullable=False)]
    for name, spec in schemas.run_summary_json_schema()["properties"].items():
        fields.append(pa.field(name, _summary_type(name, spec)))
    return pa.schema(fields)


def _summary_type(name: str, spec: dict[str, Any]) -> pa.DataType:
    kinds = {spec["type"]} if "type" in spec else {s.get("type") for s in spec.get("anyOf", [])} - {"null"}
    if kinds == {"integer"}:
        return pa.int64()
    if kinds == {"number"}:
        return pa.float64()
    if kinds == {"string"} and spec.get("format") == "date-time":
        return pa.timestamp("us", tz="UTC")
    if name == "cost_total":  # an exact decimal's text (Amount): costs keep 6 places
        return pa.decimal128(38, 6)
    return pa.string()  # text, and nested values as JSON text


def run_summaries(out_dir: Path) -> pa.Table:
    """One row per summary in ``out_dir/_runs``, ordered by start; ViewError names a bad file."""
    from datetime import datetime
    from decimal import Decimal

    from pipelines.summary import RunSummary, SummaryError

    schema = runs_schema()
    rows = []
    for path in sorted((out_dir / "_runs").glob("*.json")):
        kind = "stream" if path.name.endswith(".stream.json") else "batch"
        try:
            if kind == "batch":
                data = RunSummary.load(path).to_dict()
            else:
                data = json.loads(path.read_bytes())
                if not isinstance(data, dict):
                    raise SummaryError(f"run summary {str(path)!r} is not a JSON object")
        except SummaryError as exc:
            raise ViewError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise ViewError(f"cannot read run summary {str(path)!r}: {exc}") from None
        row: dict[str, Any] = {"kind": kind}
        for field in schema:
            if field.name == "kind" or field.name not in data:
                continue
            value = data[field.name]
            if value is None:
                row[field.name] = None
            elif pa.types.is_timestamp(field.type):
                row[field.name] = datetime.fromisoformat(value)
            elif pa.types.is_decimal(field.type):
                row[field.name] = Decimal(str(value)).quantize(Decimal("0.000001"))
            elif pa.types.is_string(field.type) and not isinstance(value, str):
                row[field.name] = json.dumps(value, sort_keys=True)
            else:
                row[field.name] = value
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.sort_by([("started_at", "ascending"), ("run_id", "ascending")])


def connect(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding a view per dataset and ``runs``; times are shown in UTC.

    ViewError when ``out_dir`` is not a folder or a run summary is unreadable.
    """
    if not out_dir.is_dir():
        raise ViewError(f"no output directory {str(out_dir)!r}")
    out_dir = out_dir.resolve()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for dataset in schemas.datasets():
            con.execute(dataset_view_sql(out_dir, dataset))
        con.register(RUNS, run_summaries(out_dir))
    except BaseException:
        con.close()
        raise
    return con


def read_only_connection(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """:func:`connect`, then locked for SQL typed by someone: files outside ``out_dir`` cannot be
    read, extensions cannot load, and the configuration cannot change. Statements are to pass
    :func:`check_read_only` first (the lock alone would still let ``COPY`` write under ``out_dir``).
    """
    con = connect(out_dir)
    folder = _literal(str(out_dir.resolve()) + "/")
    con.execute(f"SET allowed_directories = [{folder}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    """The statements of ``sql``, each a query; ViewError naming the first that is not.

    >>> check_read_only(duckdb.connect(), "COPY (SELECT 1) TO 'x.csv'")
    Traceback (most recent call last):
    ...
    analytics.views.QueryRefused: only queries (SELECT, EXPLAIN) may run here; statement 1 is COPY
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"SQL does not parse: {_first_line(exc)}") from None
    if not statements:
        raise QueryRefused("no SQL statement given")
    for number, statement in enumerate(statements, 1):
        if statement.type not in QUERY_STATEMENTS:
            raise QueryRefused(
                f"only queries (SELECT, EXPLAIN) may run here; statement {number} is {statement.type.name}"
            )
    return statements


def query(out_dir: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns and rows of the last statement of ``sql`` (queries only) over ``out_dir``'s views."""
    with read_only_connection(out_dir) as con:
        statements = check_read_only(con, sql)
        try:
            for statement in statements[:-1]:
                con.execute(statement.query)
            cursor = con.execute(statements[-1].query)
            columns = [d[0] for d in cursor.description or []]
            return columns, cursor.fetchall()
        except duckdb.Error as exc:
            raise ViewError(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
