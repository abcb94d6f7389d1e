"""Split a table into shards so an engine shuffles a few large tables, not one element per event."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.windows import TumblingWindows


def split_by_shard(table: pa.Table, shard: pa.ChunkedArray | pa.Array) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(shard, rows of that shard)`` for each shard present, in shard order.

    >>> t = pa.table({"x": [1, 2, 3, 4]})
    >>> [(k, p.column("x").to_pylist()) for k, p in split_by_shard(t, pa.array([1, 0, 1, 0]))]
    [(0, [2, 4]), (1, [1, 3])]
    """
    if table.num_rows == 0:
        return
    order = pc.sort_indices(shard).to_numpy()
    keys = np.asarray(pc.take(shard, pa.array(order)))
    bounds = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(keys)]))
    for start, end in zip(starts, ends, strict=True):
        # take, not slice: a slice shares (and would pickle) the whole parent's buffers.
        yield int(keys[start]), table.take(pa.array(order[start:end]))


def split_by_shard_and_window(
    table: pa.Table, shard: pa.Array, windows: TumblingWindows, time_column: str
) -> Iterator[tuple[tuple[int, int], pa.Table]]:
    """Yield ``((shard, window start in µs), rows)`` for each pair present, in that order; one
    sort and one take per pair, rows keeping their order within a pair.

    >>> t = pa.table({"t": pa.array([0, 61_000_000, 5_000_000], pa.timestamp("us"))})
    >>> parts = split_by_shard_and_window(t, pa.array([1, 1, 0]), TumblingWindows(60), "t")
    >>> [(key, part.num_rows) for key, part in parts]
    [((0, 0), 1), ((1, 0), 1), ((1, 60000000), 1)]
    """
    if table.num_rows == 0:
        return
    shards = np.asarray(shard, dtype=np.int64)
    starts = windows.starts(table.column(time_column))
    order = np.lexsort((starts, shards))  # by shard, then window; stable
    keys_shard, keys_start = shards[order], starts[order]
    change = np.flatnonzero((np.diff(keys_shard) != 0) | (np.diff(keys_start) != 0)) + 1
    bounds = np.concatenate(([0], change, [order.size]))
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        # take, not slice: a slice shares (and would pickle) the whole parent's buffers.
        yield (int(keys_shard[lo]), int(keys_start[lo])), table.take(pa.array(order[lo:hi]))


def user_shard(table: pa.Table, shards: int) -> pa.Array:
    """Shard of each row's ``user_id``: all of one user's events land in one shard."""
    user_ids = table.column("user_id").to_numpy()
    return pa.array(user_ids % shards)
