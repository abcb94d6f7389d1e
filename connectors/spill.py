"""Spill batches between pipeline stages to Arrow IPC files, so a shuffle moves file names.

Beam's DirectRunner holds every element of a GroupByKey in memory, several copies deep, so
shuffling the tables themselves makes memory grow with the input (1.1 GB RSS for 200k events,
measured). Spilled, a shuffle element is ``(shard, path)``, and a worker holds one shard's batch at
a time. On a cluster the staging folder is under ``--out``, which every worker already mounts.

Files are named uniquely per write, so a retried bundle never clobbers a file another attempt's
output still names; the launcher removes the whole staging folder when the run ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa


@dataclass(frozen=True)
class Spill:
    """Writes and reads spilled tables under one run's staging folder."""

    folder: str

    def put(self, step: str, table: pa.Table) -> str:
        """Write ``table`` for ``step``; return the file's path (the element to shuffle)."""
        target = Path(self.folder) / step
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{uuid.uuid4().hex}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return str(path)

    @staticmethod
    def load(paths: Iterable[str]) -> list[pa.Table]:
        """Read spilled tables back (memory-mapped: pages come from the OS cache)."""
        return [pa.ipc.open_file(pa.memory_map(path)).read_all() for path in paths]
