"""Event-time tumbling windows: assign each event its window, split a batch by window.

Windows are aligned to the Unix epoch, so every engine and every worker assigns an event the same
window without talking to the others: the window of a time ``t`` of size ``s`` starts at
``t - t mod s``. Times are microseconds since the epoch, as Arrow's ``timestamp("us")`` holds
them; times before 1970 fall in the window that contains them, not the one after (floor
division).

Rate limits use the windows of ``rate_limit.window_seconds``; the spine's second shuffle is keyed
by a coarser *pane* (:func:`pane_seconds`) that holds whole windows of every size a stage
aggregates over, so that a streaming engine's watermark can tell when a pane, and every window in
it, is complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: A UTC day: the output datasets' ``dt`` partition, and the pane a window that divides it uses.
DAY_SECONDS = 86_400

US = 1_000_000

#: The longest pane: about 68 years, the range of a window (``rate_limit.window_seconds``).
MAX_PANE_SECONDS = 2**31


@dataclass(frozen=True)
class TumblingWindows:
    """Back-to-back event-time windows of ``size_seconds``, aligned to the epoch.

    >>> windows = TumblingWindows(60)
    >>> windows.starts(pa.array([0, 59_999_999, 60_000_000, -1], pa.timestamp("us"))).tolist()
    [0, 0, 60000000, -60000000]
    """

    size_seconds: int

    def __post_init__(self) -> None:
        if not isinstance(self.size_seconds, int) or self.size_seconds <= 0:
            raise ValueError(
                f"a window's size must be a positive number of seconds, got {self.size_seconds!r}"
            )

    @property
    def size_us(self) -> int:
        """The window's length in microseconds."""
        return self.size_seconds * US

    def starts(self, times: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The start (µs since the epoch, int64) of each time's window; times must not be null."""
        if times.null_count:
            raise ValueError("window assignment needs a time on every row; got nulls")
        us = pc.cast(times, pa.timestamp("us", tz=getattr(times.type, "tz", None))).cast(pa.int64())
        values: np.ndarray = us.to_numpy() if isinstance(us, pa.Array) else us.combine_chunks().to_numpy()
        starts: np.ndarray = (values // self.size_us) * self.size_us
        return starts

    def split(self, table: pa.Table, time_column: str) -> Iterator[tuple[int, pa.Table]]:
        """``(window start in µs, rows of that window)`` for each window the batch touches, in
        window order; rows keep their order within a window.

        >>> t = pa.table({"t": pa.array([61_000_000, 1_000_000, 62_000_000], pa.timestamp("us"))})
        >>> [(start, part.num_rows) for start, part in TumblingWindows(60).split(t, "t")]
        [(0, 1), (60000000, 2)]
        """
        if table.num_rows == 0:
            return
        starts = self.starts(table.column(time_column))
        distinct = np.unique(starts)
        if distinct.size == 1:  # the common case: no copy
            yield int(distinct[0]), table
            return
        order = np.argsort(starts, kind="stable")
        bounds = np.searchsorted(starts[order], distinct, side="left")
        ends = np.append(bounds[1:], order.size)
        for start, lo, hi in zip(distinct.tolist(), bounds.tolist(), ends.tolist(), strict=True):
            yield start, table.take(pa.array(order[lo:hi]))


def pane_seconds(*window_seconds: int) -> int:
    """The size of the pane that holds whole windows of every size given.

    A pane is a UTC day (the datasets' ``dt`` partition: each pane then writes one file per
    dataset) when every window divides a day; otherwise the least common multiple of the window
    sizes and of a day, so that panes still align with ``dt`` partitions; and when that exceeds
    ``MAX_PANE_SECONDS`` (a window of a prime number of seconds), the least common multiple of
    the window sizes alone: a pane then spans several days and writes one file per day it holds.

    >>> pane_seconds(60)
    86400
    >>> pane_seconds(60, 3600)
    86400
    >>> pane_seconds(7 * 86_400)
    604800
    >>> pane_seconds(25_200)
    604800
    >>> pane_seconds(2**31 - 1)
    2147483647
    """
    aligned = math.lcm(DAY_SECONDS, *window_seconds)
    if aligned <= MAX_PANE_SECONDS:
        return aligned
    size = math.lcm(*window_seconds)
    if size > MAX_PANE_SECONDS:
        raise ValueError(f"windows of {window_seconds} seconds share no pane of at most {MAX_PANE_SECONDS} s")
    return size
