"""Split a table into shards so an engine shuffles a few large tables, not one element per event."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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


def user_shard(table: pa.Table, shards: int) -> pa.Array:
    """Shard of each row's ``user_id``: all of one user's events land in one shard."""
    user_ids = table.column("user_id").to_numpy()
    return pa.array(user_ids % shards)
