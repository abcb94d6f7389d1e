"""What the data-quality suites read: a dataset's files in batches, and the run summaries.

A dataset is read one Parquet file at a time by DuckDB, with only the columns its suite names
(:meth:`~analytics.quality_suites.SuiteSpec.projection`: derived columns are computed there, a
vector or raw record is reduced to whether it is there), into batches (:class:`Batch`) of about
``rows_per_batch`` rows: several small files to a batch, a large file over several. Memory
follows the batch size, not the dataset's.

The conservation suite reads one row per batch run summary (``_runs/<run_id>.json``;
``*.stream.json`` are a stream's), the latest of each inputs fingerprint by ``finished_at``: a
rerun of the same inputs replaces the files of the runs before it
(``connectors.parquet_sink.RunFileNames``), so only the latest summary describes files that
exist. A row holds the summary's run id, fingerprint and every count, and ``<dataset>_rows`` for
every dataset of ``schemas/datasets.json``: the rows of that dataset's files the run wrote,
``part-<inputs_fingerprint>-*.parquet``, counted from the Parquet footers (no data is read).

A stream's summary covers one execution of the job; its files span every execution since its
recovery store began, and a killed execution writes no summary at all, so no stream summary can
be reconciled with files. They are counted in the note, not checked.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from analytics.quality_suites import SuiteSpec
from pipelines.summary import Count, RunSummary, SummaryError

#: Rows DuckDB hands over at a time: a batch is cut at the first read that fills it.
READ_ROWS = 16_384


@dataclass
class Batch:
    """Rows GX validates at once, as parts of the files they came from."""

    parts: list[tuple[str, pa.Table]] = field(default_factory=list)
    rows: int = 0

    def add(self, label: str, table: pa.Table) -> None:
        self.parts.append((label, table))
        self.rows += table.num_rows

    def drop(self, label: str) -> None:
        """Leave out the rows of ``label`` added last (a file that failed while being read)."""
        while self.parts and self.parts[-1][0] == label:
            self.rows -= self.parts.pop()[1].num_rows

    def frame(self) -> Any:
        """The rows as one pandas DataFrame (what GX's pandas data source takes), indexed 0..n-1."""
        return pa.concat_tables([table for _, table in self.parts]).to_pandas()

    @property
    def segments(self) -> list[tuple[str, int, int]]:
        """``(label, start, stop)``: rows ``start:stop`` of the batch are from ``label``."""
        segments: list[tuple[str, int, int]] = []
        for label, table in self.parts:
            if segments and segments[-1][0] == label:
                _, start, stop = segments.pop()
                segments.append((label, start, stop + table.num_rows))
            else:
                stop = segments[-1][2] if segments else 0
                segments.append((label, stop, stop + table.num_rows))
        return segments


def file_batches(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    spec: SuiteSpec,
    stored: pa.Schema,
    files: list[Path],
    rows_per_batch: int,
    unchecked: list[tuple[str, str]],
) -> Iterator[Batch]:
    """Batches of ``rows_per_batch`` rows (at most ``READ_ROWS`` more) of the suite's columns,
    file by file.

    A file whose columns are not those of ``stored`` (the dataset's schema in datasets.json),
    or that DuckDB cannot read, is not checked: it goes to ``unchecked`` with the reason.
    """
    projection = spec.projection(stored)
    sql = (
        f"SELECT {projection} FROM read_parquet($path, hive_partitioning = true, "
        "hive_types = {'dt': VARCHAR})"
    )
    batch = Batch()
    for path in files:
        label = str(path.relative_to(out_dir))
        mismatch = schema_mismatch(path, stored)
        if mismatch:
            unchecked.append((label, mismatch))
            continue
        try:
            reader = con.sql(sql, params={"path": str(path)}).to_arrow_reader(min(rows_per_batch, READ_ROWS))
            for record_batch in reader:
                batch.add(label, pa.Table.from_batches([record_batch]))
                if batch.rows >= rows_per_batch:
                    yield batch
                    batch = Batch()
        except duckdb.Error as exc:
            unchecked.append((label, _describe(exc)))
            batch.drop(label)  # what was read of it before the error
    if batch.rows:
        yield batch


def schema_mismatch(path: Path, stored: pa.Schema) -> str | None:
    """How the file's columns differ from the dataset's in datasets.json, or None.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> pq.write_table(pa.table({"a": ["1"]}), folder / "x.parquet")
    >>> schema_mismatch(folder / "x.parquet", pa.schema([("a", pa.int64()), ("b", pa.bool_())]))
    "column 'a' is string, datasets.json says int64"
    """
    try:
        found = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        return str(exc).splitlines()[0][:300]
    for column in stored:
        if column.name not in found.names:
            return f"no column {column.name!r} ({column.type} in datasets.json)"
        if found.field(column.name).type != column.type:
            return (
                f"column {column.name!r} is {found.field(column.name).type}, datasets.json says {column.type}"
            )
    extra = [name for name in found.names if name not in stored.names]
    return f"columns {extra} are not in datasets.json" if extra else None


def _describe(exc: duckdb.Error) -> str:
    """One line about a read error; a conversion error would quote the value, so it says less."""
    if isinstance(exc, duckdb.ConversionException):
        return "a value does not convert to the type the suite reads it as (values are not shown)"
    return str(exc).splitlines()[0][:300]


def summary_batches(
    con: duckdb.DuckDBPyConnection, spec: SuiteSpec, table: pa.Table, labels: list[str]
) -> Iterator[Batch]:
    """The run summaries' table, with the suite's derived columns, as one batch."""
    if not labels:
        return
    con.register("run_summaries", table)
    try:
        rows = con.sql(f"SELECT {spec.projection(None)} FROM run_summaries").to_arrow_table()
    finally:
        con.unregister("run_summaries")
    batch = Batch()
    for i, label in enumerate(labels):
        batch.add(label, rows.slice(i, 1))
    yield batch


#: How a stream's summary file ends; the other ``_runs/*.json`` are batch runs'.
STREAM_SUFFIX = ".stream.json"


@dataclass(frozen=True)
class SummariesTable:
    """The conservation suite's input."""

    table: pa.Table
    #: Each row's summary file, relative to the output directory (``_runs/<run_id>.json``).
    labels: list[str]
    #: Summary or Parquet files that could not be read: ``(path, reason)``.
    unchecked: list[tuple[str, str]]
    note: str


def summaries_table(out_dir: Path) -> SummariesTable:
    """The latest batch run summary of each inputs fingerprint in ``out_dir``, with the rows of its files."""
    runs = out_dir / "_runs"
    paths = sorted(runs.glob("*.json"))
    streams = [p for p in paths if p.name.endswith(STREAM_SUFFIX)]
    unchecked: list[tuple[str, str]] = []
    latest: dict[str, tuple[RunSummary, Path]] = {}
    loaded = 0
    for path in paths:
        if path in streams:
            continue
        try:
            summary = RunSummary.load(path)
        except SummaryError as exc:
            unchecked.append((f"_runs/{path.name}", str(exc)))
            continue
        loaded += 1
        held = latest.get(summary.inputs_fingerprint)
        if held is None or held[0].finished_at < summary.finished_at:
            latest[summary.inputs_fingerprint] = (summary, path)
    chosen = sorted(latest.values(), key=lambda held: held[0].finished_at)
    counts = [
        name for name, hint in typing.get_type_hints(RunSummary, include_extras=True).items() if hint == Count
    ]
    columns: dict[str, list[object]] = {"run_id": [], "inputs_fingerprint": []}
    columns.update({name: [] for name in counts})
    columns.update({f"{name}_rows": [] for name in schemas.dataset_names()})
    for summary, _ in chosen:
        columns["run_id"].append(summary.run_id)
        columns["inputs_fingerprint"].append(summary.inputs_fingerprint)
        for name in counts:
            columns[name].append(getattr(summary, name))
        for dataset in schemas.dataset_names():
            rows = _rows_written(out_dir, dataset, summary.inputs_fingerprint, unchecked)
            columns[f"{dataset}_rows"].append(rows)
    note = (
        f"{loaded} read, the latest per inputs fingerprint checked; {len(streams)} stream summaries "
        "not reconciled with files (each covers one execution of a stream)"
    )
    table = pa.table({name: pa.array(values, _type_of(name)) for name, values in columns.items()})
    return SummariesTable(table, [f"_runs/{path.name}" for _, path in chosen], unchecked, note)


def _type_of(column: str) -> pa.DataType:
    return pa.string() if column in ("run_id", "inputs_fingerprint") else pa.int64()


def _rows_written(out_dir: Path, dataset: str, fingerprint: str, unchecked: list[tuple[str, str]]) -> int:
    """Rows of the dataset's files a batch run with this inputs fingerprint wrote, from their footers."""
    total = 0
    for path in sorted((out_dir / dataset).glob(f"dt=*/part-{fingerprint}-*.parquet")):
        try:
            total += pq.read_metadata(path).num_rows
        except (OSError, pa.ArrowException) as exc:
            unchecked.append((str(path.relative_to(out_dir)), str(exc).splitlines()[0][:300]))
    return total
