"""Data-quality gates: the suites of ``schemas/expectations/`` run over an output directory with
Great Expectations, in an ephemeral context, with Data Docs written under ``DIR/_quality/``.

:func:`validate` reads each dataset one Parquet file at a time, through DuckDB, taking only the
columns its suite names (derived ones computed by DuckDB: a vector's norm, a decimal's type), and
hands GX batches of about ``rows_per_batch`` rows, several small files to a batch or a large
file over several: memory stays flat however large the output. When a batch fails an
expectation, the batch is split by file, and halves are validated again with only the failing
expectations, until each unexpected row is counted against its file.

The run summaries' suite checks one row per batch run summary (``_runs/*.json``, not
``*.stream.json``), the latest of each inputs fingerprint (a rerun of the same inputs replaces
the earlier run's files): each count the summary gives for a dataset against the rows of that
run's files in it (``part-<inputs_fingerprint>-*.parquet``, ``connectors.parquet_sink``). A stream
summary covers one execution of a stream whose files span all of them (a killed execution writes
none), so streams are counted and named in a note, never reconciled.

Reports never hold a value of a failing row: GX's result format is ``SUMMARY`` with partial
unexpected lists, unexpected rows and index queries off, and a failure is reported as its
expectation, column, counts and files. GX's usage analytics are off (``GX_ANALYTICS_ENABLED`` and
the context's ``analytics_enabled``); GX 1.24 sends none anyway, and a test runs ``validate``
with the network blocked.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

import schemas
from analytics.quality_gx import GxSession, outcomes
from analytics.quality_sources import Batch, file_batches, summaries_table, summary_batches
from analytics.quality_suites import (
    RUN_SUMMARIES,
    QualityError,
    SuiteSpec,
    columns_of,
    load_suites,
    suite_parameters,
)

__all__ = ["QualityError", "QualityResult", "validate"]

#: Rows GX validates at once; a batch's columns are at most a few hundred bytes a row.
ROWS_PER_BATCH = 100_000
#: Where Data Docs go, under the output directory.
DOCS_FOLDER = "_quality"


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation of a suite that some rows broke, with where and how many, never values."""

    suite: str
    expectation: str  # the GX expectation type
    columns: tuple[str, ...]
    #: Rows that broke it over every batch; None when it raised instead (see ``error``).
    unexpected: int | None
    rows: int  # rows it was evaluated on
    #: ``(file or summary, unexpected rows there)``, relative to the output directory.
    where: tuple[tuple[str, int], ...]
    error: str | None = None

    @property
    def name(self) -> str:
        """``expect_column_values_to_be_between on events.cost``."""
        return f"{self.expectation} on {self.suite}.{', '.join(self.columns) or '(table)'}"


@dataclass(frozen=True)
class SuiteReport:
    """What one suite found."""

    suite: str
    expectations: int  # in the suite
    batches: int  # GX batches validated
    rows: int  # rows checked
    sources: int  # files (or summaries) read
    failed: tuple[FailedExpectation, ...]
    #: Files or summaries that could not be checked: ``(path, why)``, the path relative to the
    #: output directory (unreadable, or not of its dataset's schema).
    unchecked: tuple[tuple[str, str], ...]
    note: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failed and not self.unchecked


@dataclass(frozen=True)
class QualityResult:
    """What :func:`validate` found, suite by suite, and where the Data Docs are."""

    out_dir: Path
    suites: tuple[SuiteReport, ...]
    data_docs: Path  # the site's index.html

    @property
    def passed(self) -> bool:
        return all(suite.passed for suite in self.suites)

    @property
    def failures(self) -> list[str]:
        """What failed, by name: expectations, then files that could not be checked."""
        failed = [f.name for s in self.suites for f in s.failed]
        unchecked = {f"{path} not checked": None for s in self.suites for path, _ in s.unchecked}
        return failed + list(unchecked)

    def lines(self) -> list[str]:
        """The report ``runner.py validate`` prints: a line per suite, one per failure below it."""
        lines = [f"data quality of {self.out_dir} (suites in schemas/expectations/):"]
        for suite in self.suites:
            lines.append(f"  {_suite_line(suite)}")
            lines.extend(f"    not checked: {path}: {why}" for path, why in suite.unchecked)
            lines.extend(f"    {_failure_line(failure)}" for failure in suite.failed)
        lines.append(f"  data docs: {self.data_docs}")
        return lines


def _suite_line(suite: SuiteReport) -> str:
    verdict = "passed" if suite.passed else "FAILED"
    if suite.suite == RUN_SUMMARIES:
        checked = _count(suite.sources, "batch run summary", "batch run summaries")
    else:
        checked = f"{_count(suite.rows, 'row')} of {_count(suite.sources, 'file')}"
    if suite.sources == 0:
        source = "batch run summaries" if suite.suite == RUN_SUMMARIES else "files"
        line = f"{suite.suite}: {verdict}, nothing to check (no {source})"
    else:
        failed = f"{len(suite.failed)} failed of " if suite.failed else ""
        line = (
            f"{suite.suite}: {verdict}, {failed}{_count(suite.expectations, 'expectation')} evaluated on "
            f"{checked} in {_count(suite.batches, 'batch', 'batches')}"
        )
    return f"{line}; {suite.note}" if suite.note else line


def _count(n: int, one: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``1,000 rows``."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _failure_line(failure: FailedExpectation) -> str:
    if failure.error is not None:
        return f"{failure.name}: raised {failure.error}"
    where = ", ".join(f"{path} ({count:,})" for path, count in failure.where[:5])
    more = f" and {len(failure.where) - 5} more" if len(failure.where) > 5 else ""
    counted = f"{failure.unexpected:,} unexpected of {_count(failure.rows, 'row')}"
    return f"{failure.name}: {counted}, in {where}{more}"


def validate(out_dir: Path, rows_per_batch: int = ROWS_PER_BATCH) -> QualityResult:
    """Run every suite over the outputs in ``out_dir``; write Data Docs to ``out_dir/_quality``.

    A dataset without files passes (nothing to check): a ``--no-moderation`` run writes no
    ``moderation/``. QualityError when ``out_dir`` is not a directory or a suite is unusable.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise QualityError(f"no output directory {str(out_dir)!r}")
    specs = load_suites()
    parameters = suite_parameters()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")  # a slow file would draw one on stderr
    staging = out_dir / f".{DOCS_FOLDER}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        session = GxSession(specs, staging)
        reports = tuple(_run_suite(session, con, out_dir, spec, parameters, rows_per_batch) for spec in specs)
        session.build_docs()
        final = out_dir / DOCS_FOLDER
        shutil.rmtree(final, ignore_errors=True)  # the last validation's docs, replaced whole
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        con.close()
    return QualityResult(out_dir, reports, final / "index.html")


@dataclass
class _Tally:
    """One expectation's findings over the batches of a suite."""

    rows: int = 0
    unexpected: int = 0
    where: Counter[str] = field(default_factory=Counter)
    error: str | None = None


def _run_suite(
    session: GxSession,
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    spec: SuiteSpec,
    parameters: Mapping[str, Any],
    rows_per_batch: int,
) -> SuiteReport:
    tallies = [_Tally() for _ in spec.expectations]
    unchecked: list[tuple[str, str]] = []
    note = None
    batches: Iterator[Batch]
    if spec.reads == RUN_SUMMARIES:
        summaries = summaries_table(out_dir)
        unchecked.extend(summaries.unchecked)
        note, sources = summaries.note, len(summaries.labels)
        batches = summary_batches(con, spec, summaries.table, summaries.labels)
    else:
        files = sorted((out_dir / spec.reads).glob("dt=*/part-*.parquet"))
        sources = len(files)
        batches = file_batches(
            con, out_dir, spec, schemas.arrow_schema(spec.reads), files, rows_per_batch, unchecked
        )
    count = rows = 0
    for batch in batches:
        count += 1
        rows += batch.rows
        frame = batch.frame()
        segments = batch.segments
        result = session.validate(spec, frame, parameters, stored=True)
        failing = _record(result, tallies, segments)
        if failing:
            _attribute(session, spec, frame, segments, failing, parameters, tallies)
    failed = tuple(
        FailedExpectation(
            suite=spec.name,
            expectation=str(expectation["type"]),
            columns=tuple(columns_of(expectation)),
            unexpected=None if tally.error else tally.unexpected,
            rows=tally.rows,
            where=tuple(sorted(tally.where.items())),
            error=tally.error,
        )
        for expectation, tally in zip(spec.expectations, tallies, strict=True)
        if tally.error or tally.unexpected
    )
    return SuiteReport(
        spec.name, len(spec.expectations), count, rows, sources, failed, tuple(unchecked), note
    )


def _record(result: Any, tallies: list[_Tally], segments: list[tuple[str, int, int]]) -> list[int]:
    """Add a batch's results to the tallies; return the indices of the expectations that failed
    on rows (not those that raised)."""
    failing = []
    for index, outcome in outcomes(result):
        tally = tallies[index]
        info = outcome.exception_info or {}
        if info.get("raised_exception"):
            message = str(info.get("exception_message") or "an exception").splitlines()[0]
            tally.error = tally.error or message[:200]
            continue
        tally.rows += int(outcome.result.get("element_count") or 0)
        unexpected = int(outcome.result.get("unexpected_count") or 0)
        tally.unexpected += unexpected
        if unexpected and len(segments) == 1:
            tally.where[segments[0][0]] += unexpected
        elif unexpected:
            failing.append(index)
    return failing


def _attribute(
    session: GxSession,
    spec: SuiteSpec,
    frame: Any,
    segments: list[tuple[str, int, int]],
    failing: list[int],
    parameters: Mapping[str, Any],
    tallies: list[_Tally],
) -> None:
    """Count the unexpected rows of the ``failing`` expectations against the files they are in:
    validate each half of the batch's files with only those expectations, recursing into the
    halves where they still fail, down to single files."""
    pending = [(segments, failing)]
    while pending:
        group, expectations = pending.pop()
        middle = len(group) // 2
        for half in (group[:middle], group[middle:]):
            sub = frame.iloc[half[0][1] : half[-1][2]]
            result = session.validate(spec, sub, parameters, only=expectations)
            still = []
            for index, outcome in outcomes(result):
                unexpected = int((outcome.result or {}).get("unexpected_count") or 0)
                if unexpected and len(half) == 1:
                    tallies[index].where[half[0][0]] += unexpected
                elif unexpected:
                    still.append(index)
            if still:
                pending.append((half, still))
