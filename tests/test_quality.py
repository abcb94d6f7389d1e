"""Data-quality gates: the Great Expectations suites of ``schemas/expectations/`` over a real run's
outputs (every stage on, the network blocked), then over copies broken on purpose: a corrupted
Parquet file, run summaries that disagree with their files."""

from __future__ import annotations

import doctest
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runner
import schemas
from analytics import quality_sources, quality_suites
from analytics.quality import QualityResult, validate

#: Values written into a corrupted copy; neither may appear in any report or Data Docs page.
SHORT_HASH = "deadbeefcafe"
UNKNOWN_DECISION = "escalated-zq7"
#: Every suite that reads a dataset the fixture run writes files to (a batch run has no late events).
WRITTEN = ("events", "moderation", "rate_limit_violations", "dead_letter", "embeddings", "user_features")


@pytest.fixture(scope="module")
def clean_run(analytics_run: dict[str, Any]) -> dict[str, Any]:
    """The shared analytics run: every stage on, ``--validate``, the network blocked."""
    return {**analytics_run, "out": Path(analytics_run["out"])}


def test_run_validate_passes_every_suite_on_a_clean_run(clean_run: dict[str, Any]) -> None:
    report = clean_run["stdout"].split("data quality of ", 1)[1]
    for suite in WRITTEN:
        assert f"\n  {suite}: passed, " in report and "expectations evaluated on" in report
    assert "\n  late_events: passed, nothing to check (no files)" in report
    assert "\n  run_summaries: passed, 8 expectations evaluated on 1 batch run summary" in report
    assert "FAILED" not in report


def test_validation_writes_data_docs_under_the_output(clean_run: dict[str, Any]) -> None:
    docs = clean_run["out"] / "_quality"
    assert (docs / "index.html").stat().st_size > 0
    for suite in (*WRITTEN, "run_summaries"):
        pages = list((docs / "validations" / suite).rglob("*.html"))
        assert pages and all(page.stat().st_size > 0 for page in pages), suite
    assert not (docs / "validations" / "late_events").exists()  # no files, nothing validated


def test_validation_sends_nothing_over_the_network(clean_run: dict[str, Any]) -> None:
    """GX's usage analytics are off: the run and its validation never tried a non-local address."""
    log = clean_run["network_log"]
    assert "guard installed" in log
    assert "blocked" not in log


def test_validate_exits_0_on_a_clean_run(
    clean_run: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert runner.main(["validate", "--out", str(clean_run["out"])]) == 0
    printed = capsys.readouterr()
    assert "events: passed" in printed.out and printed.err == ""


def corrupt_events_file(out: Path) -> Path:
    """Break one events file: a negative cost, a short hash and an unknown decision, one row each."""
    for path in sorted((out / "events").glob("dt=*/*.parquet")):
        table = pq.read_table(path)
        rows = table.to_pylist()
        priced = [i for i, r in enumerate(rows) if r["cost"] is not None and r["input_hash"] is not None]
        if priced:
            break
    else:
        raise AssertionError("no events file with a priced event that has a prompt")
    row = priced[0]
    columns = {
        "cost": Decimal("-1.500000"),
        "input_hash": SHORT_HASH,
        "decision": UNKNOWN_DECISION,
    }
    for name, value in columns.items():
        values = table.column(name).to_pylist()
        values[row] = value
        index = table.schema.get_field_index(name)
        table = table.set_column(
            index, table.schema.field(index), pa.array(values, table.schema.field(name).type)
        )
    pq.write_table(table, path)
    return path


def test_a_corrupted_copy_fails_naming_each_broken_expectation_and_file(
    clean_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "out"
    shutil.copytree(clean_run["out"], copy, ignore=shutil.ignore_patterns("_quality"))
    broken = corrupt_events_file(copy).relative_to(copy)
    other = next(p for p in sorted((copy / "events").glob("dt=*/*.parquet")) if p != copy / broken)
    pq.write_table(pq.read_table(other).drop_columns(["hash_mode"]), other)  # not the contract's schema

    assert runner.main(["validate", "--out", str(copy)]) == 1
    printed = capsys.readouterr()
    for name in (
        "expect_column_values_to_be_between on events.cost",
        "expect_column_values_to_match_regex on events.input_hash",
        "expect_column_values_to_be_in_set on events.decision",
    ):
        assert f"    {name}: 1 unexpected of " in printed.out and f", in {broken} (1)" in printed.out
        assert name in printed.err  # the one-line error names it too
    assert "  events: FAILED, 3 failed of " in printed.out
    for suite in ("moderation", "embeddings", "run_summaries"):
        assert f"  {suite}: passed" in printed.out
    unchecked = other.relative_to(copy)
    assert f"    not checked: {unchecked}: no column 'hash_mode' (string in datasets.json)\n" in printed.out
    assert "error: data quality failed (4): " in printed.err and f"{unchecked} not checked" in printed.err

    for raw in (SHORT_HASH, UNKNOWN_DECISION):
        assert raw not in printed.out + printed.err
        for page in (copy / "_quality").rglob("*"):
            assert not page.is_file() or raw.encode() not in page.read_bytes(), page


@pytest.fixture(scope="module")
def doctored_summaries(clean_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the run whose summary claims one more processed event than its files hold, beside
    an earlier summary of the same inputs that is wrong everywhere (replaced: not reconciled), a
    stream's summary (never reconciled) and a summary file that is not one."""
    copy = tmp_path_factory.mktemp("summaries") / "out"
    shutil.copytree(clean_run["out"], copy, ignore=shutil.ignore_patterns("_quality"))
    (path,) = (copy / "_runs").glob("*.json")
    summary = json.loads(path.read_text())
    earlier = {
        **summary,
        "run_id": "20000101T000000Z-00000000",
        "finished_at": "2000-01-01T00:00:00.000+00:00",
        "events_read": summary["events_read"] + 50,
        "events_dead_lettered": summary["events_dead_lettered"] + 50,
        "dead_letters_by_reason": {"malformed_json": summary["events_dead_lettered"] + 50},
    }
    (copy / "_runs" / "20000101T000000Z-00000000.json").write_text(json.dumps(earlier))
    summary["events_read"] += 1  # the invariant still holds, so the summary loads
    summary["events_processed"] += 1
    path.write_text(json.dumps(summary))
    (copy / "_runs" / f"{summary['run_id'][:-8]}s0123456789abcde.stream.json").write_text("{}")
    (copy / "_runs" / "notes.json").write_text('{"run_id": "x"}')
    return {"result": validate(copy), "summary": path.name}


def conservation_failures(result: QualityResult) -> dict[str, Any]:
    (suite,) = (s for s in result.suites if s.suite == "run_summaries")
    return {f.name: f for f in suite.failed}


def test_a_summary_that_disagrees_with_its_files_fails_conservation(
    doctored_summaries: dict[str, Any],
) -> None:
    result = doctored_summaries["result"]
    failed = conservation_failures(result)
    assert not result.passed
    processed = failed["expect_column_pair_values_to_be_equal on run_summaries.events_processed, events_rows"]
    assert processed.unexpected == 1
    assert processed.where == ((f"_runs/{doctored_summaries['summary']}", 1),)
    assert processed.name in result.failures


def test_only_the_latest_summary_of_each_input_is_reconciled(doctored_summaries: dict[str, Any]) -> None:
    """The earlier summary's dead letters disagree with the files, but a rerun replaced its files."""
    failed = conservation_failures(doctored_summaries["result"])
    assert list(failed) == [
        "expect_column_pair_values_to_be_equal on run_summaries.events_processed, events_rows"
    ]


def test_stream_summaries_are_counted_never_reconciled(doctored_summaries: dict[str, Any]) -> None:
    (suite,) = (s for s in doctored_summaries["result"].suites if s.suite == "run_summaries")
    assert suite.sources == 1
    assert suite.note is not None and "1 stream summaries not reconciled with files" in suite.note
    assert "2 read, the latest per inputs fingerprint checked" in suite.note


def test_a_file_in_runs_that_is_not_a_summary_fails_validation(doctored_summaries: dict[str, Any]) -> None:
    result = doctored_summaries["result"]
    (suite,) = (s for s in result.suites if s.suite == "run_summaries")
    ((path, reason),) = suite.unchecked
    assert path == "_runs/notes.json" and "is a required property" in reason
    assert "_runs/notes.json not checked" in result.failures


def test_validate_has_help_and_refuses_bad_flags_and_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        runner.main(["validate", "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert all(word in shown for word in ("--out", "DIR/_quality/index.html", "Exit status:"))
    with pytest.raises(SystemExit) as exited:
        runner.main(["validate"])
    assert exited.value.code == 2
    assert runner.main(["validate", "--out", str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.endswith(f"error: no output directory {str(tmp_path / 'nothing')!r}\n")


def test_non_null_expectations_come_from_datasets_json_alone() -> None:
    """Every dataset has a suite; its non-null checks are exactly the columns datasets.json says
    are not nullable, generated at load time: no suite file restates one."""
    for dataset in schemas.dataset_names():
        spec = quality_suites.load_suite(dataset)
        generated = [
            e["kwargs"]["column"]
            for e in spec.expectations
            if e["type"] == "expect_column_values_to_not_be_null"
        ]
        assert generated == [f.name for f in schemas.arrow_schema(dataset) if not f.nullable]
    for path in quality_suites.EXPECTATIONS_DIR.glob("*.json"):
        assert "expect_column_values_to_not_be_null" not in path.read_text(), path
    assert sorted(p.stem for p in quality_suites.EXPECTATIONS_DIR.glob("*.json")) == sorted(
        quality_suites.suite_names()
    )


@pytest.mark.parametrize("module", [quality_suites, quality_sources])
def test_the_docstring_examples_hold(module: Any) -> None:
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted > 0 and outcome.failed == 0
