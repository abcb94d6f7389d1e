"""Parquet datasets under the output directory: Hive-partitioned by ``dt``, zstd, atomic files.

Every file is ``<out>/<dataset>/dt=<YYYY-MM-DD>/part-<stem>.parquet``. The stem is deterministic
(the inputs' fingerprint and a shard), so a re-run of the same inputs replaces its files instead
of adding to them. A file appears atomically: it is written under a hidden temporary name, then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

#: The partition value Hive, Spark and DuckDB read as NULL.
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def partition_dates(times: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``YYYY-MM-DD`` (UTC) of each timestamp; NULL_PARTITION where the time is unknown."""
    dates = pc.strftime(times, format="%Y-%m-%d")
    return pc.fill_null(dates, NULL_PARTITION)


def write_partitioned(
    table: pa.Table, out_dir: Path, dataset: str, stem: str, time_column: str
) -> list[Path]:
    """Write ``table`` as one file per ``dt`` (from ``time_column``); return the paths written."""
    if table.num_rows == 0:
        return []
    dates = partition_dates(table.column(time_column))
    written = []
    days = sorted(pc.unique(dates).to_pylist())
    for dt in days:
        part = table if len(days) == 1 else table.filter(pc.equal(dates, dt))  # one day: no copy
        folder = out_dir / dataset / f"dt={dt}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{stem}.parquet"
        temporary = folder / f".part-{stem}.parquet.{os.getpid()}.tmp"
        pq.write_table(part, temporary, compression="zstd")
        os.replace(temporary, final)
        written.append(final)
    return written


def remove_stale_parts(out_dir: Path, datasets: list[str], fingerprint: str, older_than: float) -> list[Path]:
    """Delete files an earlier run of the same inputs wrote and this run did not rewrite.

    A run owns every ``part-<fingerprint>-*`` file; any such file last written before this run
    began (``older_than``, epoch seconds) is from a run whose results this one replaces.
    """
    removed = []
    for dataset in datasets:
        for path in (out_dir / dataset).glob(f"dt=*/part-{fingerprint}-*.parquet"):
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        for folder in (out_dir / dataset).glob("dt=*"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return removed


def remove_temporary_files(out_dir: Path, datasets: list[str]) -> list[Path]:
    """Delete the hidden temporary files a killed run left (a Parquet file written, not renamed).

    Call it only while holding the output directory's lock: then no other run is writing one.
    """
    removed = []
    for dataset in datasets:
        for path in (out_dir / dataset).glob("dt=*/.part-*.tmp"):
            path.unlink()
            removed.append(path)
    return removed


def held_event_ids(out_dir: Path, wanted: Mapping[str, Sequence[str]], other_than: str) -> set[str]:
    """Which of the ``wanted`` event ids (grouped by their ``dt`` partition) the ``events`` dataset
    under ``out_dir`` holds in files not named by the fingerprint ``other_than``.

    An event can only be in its own day's partition, so only those folders are read, and of their
    files only the ``event_id`` column, filtered to the ids asked for.
    """
    held: set[str] = set()
    for dt, ids in wanted.items():
        files = sorted(
            str(path)
            for path in (out_dir / "events" / f"dt={dt}").glob("part-*.parquet")
            if not path.name.startswith(f"part-{other_than}-")
        )
        if files and ids:
            found = ds.dataset(files, format="parquet").to_table(
                columns=["event_id"], filter=pc.field("event_id").isin(list(ids))
            )
            held.update(found.column("event_id").to_pylist())
    return held
