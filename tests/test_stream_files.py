"""A stream's file names (``connectors.parquet_sink``): ``part-<stream id>-<writer>-<sequence>``, and
``remove_parts_after`` deleting, in every dataset, exactly the named writer's files from a sequence
number on, never another writer's, another stream's or a bounded run's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import schemas
from connectors.parquet_sink import (
    NoFileNames,
    ParquetSink,
    RunFileNames,
    StreamFileNames,
    remove_parts_after,
)

STREAM = StreamFileNames("s0123abcd")
OTHER_STREAM = StreamFileNames("s4567ef01")
RUN = RunFileNames("0123abcd")
DAYS = (datetime(2025, 3, 1, 12, tzinfo=UTC), datetime(2025, 3, 2, 12, tzinfo=UTC))


def late_events(n: int) -> pa.Table:
    """``n`` rows of ``late_events/``, over two days (so two ``dt`` folders)."""
    times = [DAYS[i % 2] for i in range(n)]
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "user_id": list(range(n)),
            "aggregate": ["rate_limit"] * n,
            "window_start": pa.array(times, pa.timestamp("us", tz="UTC")),
            "watermark": pa.array(times, pa.timestamp("us", tz="UTC")),
            "source": ["in.jsonl"] * n,
            "line_no": list(range(1, n + 1)),
        },
        schema=schemas.arrow_schema("late_events"),
    )


def dead_letters(n: int) -> pa.Table:
    """``n`` rows of ``dead_letter/``, over two days."""
    return pa.table(
        {
            "source": ["in.jsonl"] * n,
            "line_no": list(range(1, n + 1)),
            "position": [str(i + 1) for i in range(n)],
            "raw": [b"{"] * n,
            "raw_truncated": [False] * n,
            "reason": ["invalid_json"] * n,
            "detail": ["cut short"] * n,
            "event_id": [None] * n,
            "event_time": pa.array([DAYS[i % 2] for i in range(n)], pa.timestamp("us", tz="UTC")),
        },
        schema=schemas.arrow_schema("dead_letter"),
    )


def files(out: Path) -> set[str]:
    """Every file under ``out``, relative, hidden ones included."""
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


def test_stream_file_names() -> None:
    assert StreamFileNames.key("0003", 12) == "0003-0000000012"
    assert StreamFileNames.key("gate", 0) == "gate-0000000000"
    assert STREAM.stem(StreamFileNames.key("gate", 7)) == "s0123abcd-gate-0000000007"
    assert STREAM.owns("part-s0123abcd-gate-0000000007.parquet")
    assert STREAM.owns("part-s0123abcd-0001-0000000000.parquet")
    assert not STREAM.owns("part-s4567ef01-gate-0000000007.parquet")  # another stream's
    assert not STREAM.owns("part-0123abcd-0001-20250301T000000.parquet")  # a bounded run's
    assert not STREAM.owns(".part-s0123abcd-gate-0000000007.parquet.123.tmp")  # not yet a file
    assert not STREAM.owns("part-s0123abcd-gate-0000000007.parquet.tmp")


def test_no_file_names_owns_nothing_and_names_nothing(tmp_path: Path) -> None:
    naming = NoFileNames()
    assert not naming.owns("part-s0123abcd-gate-0000000007.parquet")
    assert not naming.owns("part-0123abcd-0001-20250301T000000.parquet")
    with pytest.raises(TypeError, match="names no file"):
        naming.stem("gate-0000000000")
    # A sink reading with it sees every file of its dataset, whoever wrote it.
    dataset = schemas.dataset("late_events")
    ParquetSink(tmp_path, dataset, STREAM).write(StreamFileNames.key("gate", 0), late_events(2))
    ParquetSink(tmp_path, dataset, RUN).write("0001-20250301T000000", late_events(3))
    reader = ParquetSink(tmp_path, dataset, NoFileNames())
    found = reader.rows_elsewhere(["event_id"], pc.field("line_no") > 0)
    assert sorted(found.column("event_id").to_pylist()) == ["e0", "e0", "e1", "e1", "e2"]
    # ... while the stream's own sink leaves its own files out.
    mine = ParquetSink(tmp_path, dataset, STREAM).rows_elsewhere(["event_id"], pc.field("line_no") > 0)
    assert sorted(mine.column("event_id").to_pylist()) == ["e0", "e1", "e2"]


def test_remove_parts_after_deletes_only_the_writers_later_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sinks = {
        name: {
            naming: ParquetSink(out, schemas.dataset(name), naming) for naming in (STREAM, OTHER_STREAM, RUN)
        }
        for name in ("late_events", "dead_letter")
    }
    tables = {"late_events": late_events(4), "dead_letter": dead_letters(4)}
    for name in sinks:
        for writer in ("gate", "0001", "0012"):
            for sequence in range(5):
                key = StreamFileNames.key(writer, sequence)
                sinks[name][STREAM].write(key, tables[name])
                sinks[name][OTHER_STREAM].write(key, tables[name])
        sinks[name][RUN].write("gate-0000000003", tables[name])  # a run's file whose key looks alike
        sinks[name][RUN].write("0001-20250301T000000", tables[name])
    # A temporary file a killed writer left, and a file outside the datasets.
    (out / "late_events" / "dt=2025-03-01" / ".part-s0123abcd-gate-0000000009.parquet.77.tmp").write_bytes(
        b"x"
    )
    (out / "_runs").mkdir()
    (out / "_runs" / "part-s0123abcd-gate-0000000009.parquet").write_bytes(b"x")
    before = files(out)
    # Every write is a real Parquet file in each day's folder.
    assert (
        pq.read_table(
            out / "dead_letter" / "dt=2025-03-02" / "part-s0123abcd-0001-0000000004.parquet"
        ).num_rows
        == 2
    )

    removed = remove_parts_after(out, STREAM, "gate", 3)

    expected = {
        f"{name}/dt={day}/part-s0123abcd-gate-{sequence:010d}.parquet"
        for name in ("late_events", "dead_letter")
        for day in ("2025-03-01", "2025-03-02")
        for sequence in (3, 4)
    }
    assert sorted(str(p.relative_to(out)) for p in removed) == sorted(expected)
    assert files(out) == before - expected
    assert not any(p.exists() for p in removed)
    # A writer whose next write is past every file it wrote removes nothing.
    assert remove_parts_after(out, STREAM, "0001", 5) == []
    assert files(out) == before - expected
    # From 0 on: all of one writer's files, still only that writer's (not "0012" for "0001").
    removed = remove_parts_after(out, STREAM, "0001", 0)
    assert len(removed) == 2 * 2 * 5
    assert all("part-s0123abcd-0001-" in p.name for p in removed)
    left = files(out)
    assert sum("part-s0123abcd-0012-" in f for f in left) == 2 * 2 * 5
    assert sum("part-s4567ef01-" in f for f in left) == 2 * 2 * 3 * 5
    assert sum("part-0123abcd-" in f for f in left) == 2 * 2 * 2
    assert "_runs/part-s0123abcd-gate-0000000009.parquet" in left
    assert "late_events/dt=2025-03-01/.part-s0123abcd-gate-0000000009.parquet.77.tmp" in left


def test_remove_parts_after_on_an_empty_output_removes_nothing(tmp_path: Path) -> None:
    assert remove_parts_after(tmp_path / "nothing-here", STREAM, "gate", 0) == []


# --- FileTail: long lines, rotation and truncation -------------------------------------------------


def test_a_follow_reads_past_a_line_longer_than_one_read(tmp_path: Path) -> None:
    from connectors.file_tail import READ_BYTES, FileTail

    path = tmp_path / "events.jsonl"
    long_line = b"x" * (READ_BYTES + 1024)
    path.write_bytes(b"first\n" + long_line + b"\nlast\n")
    tail = FileTail([str(path)], max_record_bytes=2 * READ_BYTES)
    (records,) = tail.poll()
    assert records.raws == [b"first", long_line, b"last"] and records.line_nos == [1, 2, 3]
    assert tail.poll() == []


def test_a_line_over_the_limit_is_cut_and_rejected_and_the_next_is_read(tmp_path: Path) -> None:
    from connectors.file_tail import FileTail

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a\n" + b"y" * 5000 + b"\nb\n")
    tail = FileTail([str(path)], max_record_bytes=1000)
    (records,) = tail.poll()
    assert records.line_nos == [1, 2, 3] and records.raws[2] == b"b"
    assert set(records.rejected) == {1} and records.rejected[1].reason.value == "line_too_long"


def test_a_truncated_or_replaced_file_is_read_from_its_start(tmp_path: Path) -> None:
    from connectors.file_tail import FileTail

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"one\ntwo\n")
    tail = FileTail([str(path)], max_record_bytes=1000)
    assert tail.poll()[0].raws == [b"one", b"two"]
    path.write_bytes(b"new\n")  # truncated and rewritten (copytruncate)
    assert tail.poll()[0].raws == [b"new"]
    rotated = tmp_path / "events.jsonl.1"
    path.rename(rotated)
    path.write_bytes(b"fresh one\nfresh two\n")  # another file under the name, longer than before
    (records,) = tail.poll()
    assert records.raws == [b"fresh one", b"fresh two"] and records.line_nos == [1, 2]
    resumed = FileTail([str(path)], max_record_bytes=1000)
    resumed.resume(tail.position)
    with path.open("ab") as grow:
        grow.write(b"three\n")
    assert resumed.poll()[0].raws == [b"three"]
