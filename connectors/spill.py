"""Spill batches between pipeline stages to Arrow IPC files, so a shuffle moves file names.

Beam's DirectRunner holds every element of a GroupByKey in memory, several copies deep, so
shuffling the tables themselves makes memory grow with the input (1.1 GB RSS for 200k events,
measured). Spilled, a shuffle element is ``(key, (path, first batch, batch count))``, and a worker
holds one shard's batch at a time. The tables one stage call splits by key share one file. The
staging folder is ``DIR/_staging`` by default, a local temporary folder when ``--out`` is an object
store, or ``--staging-dir``: on a cluster a folder every worker mounts (files are memory-mapped, so
it is a disk, never an object store).

Files are named uniquely per write, so a retried bundle never clobbers a file another attempt's
output still names; the launcher removes the whole staging folder when the run ends, and nothing
removes a file before: a stage may read another's files again later in the run (the sinks read
the raw records of conflicting events back from the first shuffle's, see ``load_placed``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

#: Where one spilled table lies: ``(file, first record batch, number of record batches)``. A plain
#: tuple, so that an engine's coder moves it as cheaply as a string.
SpillRef = tuple[str, int, int]

#: Where a spilled row lies, as two columns a later stage can carry instead of a large value of the
#: row (see :meth:`Spill.load_placed`): its file, and ``batch << 32 | row`` in that file.
PLACE_FILE, PLACE_AT = "_spilled_file", "_spilled_at"


@dataclass(frozen=True)
class Spill:
    """Writes and reads spilled tables under one run's staging folder."""

    folder: str

    def put(self, step: str, table: pa.Table) -> SpillRef:
        """Write ``table`` for ``step``; return where it lies (the element to shuffle)."""
        return self.put_many(step, [table])[0]

    def put_many(self, step: str, tables: Sequence[pa.Table]) -> list[SpillRef]:
        """Write several tables of one schema for ``step`` into one file, one after the other;
        return where each lies. A stage that splits its output by key writes one file, not one
        per key: creating a file costs more than the bytes of a small table."""
        if not tables:
            return []
        target = Path(self.folder) / step
        target.mkdir(parents=True, exist_ok=True)
        path = str(target / f"{uuid.uuid4().hex}.arrow")
        refs: list[SpillRef] = []
        first = 0
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, tables[0].schema) as writer:
            for table in tables:
                batches = table.to_batches()
                for batch in batches:
                    writer.write_batch(batch)
                refs.append((path, first, len(batches)))
                first += len(batches)
        return refs

    def load_placed(self, refs: Iterable[SpillRef]) -> list[pa.Table]:
        """:meth:`load`, each table with two more columns saying where each of its rows lies:
        ``PLACE_FILE``, the file's path under this folder, and ``PLACE_AT``, ``batch << 32 |
        row`` in it. A stage can then leave a large column behind and have the few values it
        needs later read back with :meth:`values_at`, while the files exist: the run's staging
        folder lasts as long as the run."""
        placed = []
        for path, first, schema, batches in self._batches(refs):
            table = pa.Table.from_batches(batches, schema=schema)
            at = np.concatenate(
                [
                    ((first + i) << 32) + np.arange(batch.num_rows, dtype=np.int64)
                    for i, batch in enumerate(batches)
                ]
                or [np.empty(0, dtype=np.int64)]
            )
            name = os.path.relpath(path, self.folder)
            placed.append(
                table.append_column(PLACE_FILE, pa.repeat(pa.scalar(name), table.num_rows)).append_column(
                    PLACE_AT, pa.array(at)
                )
            )
        return placed

    def values_at(self, column: str, rows: pa.Table) -> pa.Array:
        """The values of ``column`` at the places ``rows`` names (its ``PLACE_FILE`` and
        ``PLACE_AT``, from :meth:`load_placed`), in the order of ``rows``; each batch read once."""
        files, places = rows.column(PLACE_FILE).to_pylist(), rows.column(PLACE_AT).to_numpy()
        wanted: dict[tuple[str, int], list[int]] = {}
        for i, (name, at) in enumerate(zip(files, places.tolist(), strict=True)):
            wanted.setdefault((name, at >> 32), []).append(i)
        values: list[pa.Array] = []
        order: list[int] = []
        kind: pa.DataType = pa.null()
        readers: dict[str, pa.ipc.RecordBatchFileReader] = {}
        for (name, batch), positions in wanted.items():
            if name not in readers:
                readers[name] = pa.ipc.open_file(pa.memory_map(os.path.join(self.folder, name)))
            source = readers[name].get_batch(batch).column(column)
            kind = source.type
            values.append(source.take(pa.array(places[positions] & 0xFFFFFFFF)))
            order.extend(positions)
        if not values:
            return pa.array([], kind)
        gathered = pa.concat_arrays(values)
        return gathered.take(pa.array(np.argsort(np.asarray(order), kind="stable")))

    @classmethod
    def load(cls, refs: Iterable[SpillRef]) -> list[pa.Table]:
        """Read spilled tables back (memory-mapped: pages come from the OS cache), each file
        opened once however many of its tables are asked for."""
        return [pa.Table.from_batches(batches, schema=schema) for _, _, schema, batches in cls._batches(refs)]

    @staticmethod
    def _batches(refs: Iterable[SpillRef]) -> Iterator[tuple[str, int, pa.Schema, list[pa.RecordBatch]]]:
        """``(file, first batch, schema, batches)`` of each spilled table, each file opened once."""
        readers: dict[str, pa.ipc.RecordBatchFileReader] = {}
        for path, first, count in refs:
            if path not in readers:
                readers[path] = pa.ipc.open_file(pa.memory_map(path))
            reader = readers[path]
            yield path, first, reader.schema, [reader.get_batch(i) for i in range(first, first + count)]
