"""Windowed state of the spine as accumulators both engines fold: the watermark, the duplicate
memory and the open rate-limit windows.

A bounded run (Beam) creates each one, adds a whole shard or pane in one batch and closes it at
the end of its input; a stream (Bytewax) adds batch after batch and closes what the watermark has
passed. The logic is the same code either way, which is what makes the parity test between the
two engines mean something (DESIGN.md, "Engines").

The shape is Beam's ``CombineFn``: create, add a batch, merge, extract (``close``). Times are
microseconds since the epoch (int64), as Arrow's ``timestamp("us")`` holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dedup import Deduplicated, collapse_duplicates, conflict_with_first_copy
from transforms.event_batch import FINGERPRINT, ORDER, RAW
from transforms.windows import TumblingWindows

#: A watermark past every event time: the end of a bounded input closes every window.
END_OF_TIME = np.iinfo(np.int64).max


def event_times(events: pa.Table, column: str = "event_time") -> np.ndarray:
    """The ``column`` of ``events`` as int64 microseconds since the epoch."""
    times = events.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    values: np.ndarray = (
        times.combine_chunks().to_numpy() if times.num_chunks != 1 else times.chunk(0).to_numpy()
    )
    return values


def first_window_ends(times_us: np.ndarray, windows: Sequence[TumblingWindows]) -> np.ndarray:
    """For each time, the end of the earliest-closing of the windows it falls in (µs).

    >>> first_window_ends(np.array([61_000_000]), [TumblingWindows(60), TumblingWindows(3600)]).tolist()
    [120000000]
    """
    ends = np.full(times_us.shape, END_OF_TIME, dtype=np.int64)
    for window in windows:
        np.minimum(ends, (times_us // window.size_us) * window.size_us + window.size_us, out=ends)
    return ends


@dataclass
class Watermark:
    """Event-time progress of a stream: the largest event time seen, less the allowed lateness.

    A window closes when the watermark reaches its end; an event whose window has closed when it
    arrives is *late*. Lateness is judged event by event against the events before it in stream
    order, so how a stream was cut into batches never changes which events are late.

    >>> wm = Watermark(lateness_us=5)
    >>> late, at_arrival = wm.judge(np.array([100, 90, 120, 112]), np.array([101, 95, 130, 115]))
    >>> late.tolist(), at_arrival.tolist()[1:]
    ([False, True, False, True], [95, 95, 115])
    >>> wm.value
    115
    """

    lateness_us: int
    #: The largest event time seen; ``None`` before the first event.
    max_seen_us: int | None = None
    #: Set by :meth:`end`: the input has ended, every window is closed.
    ended: bool = False

    @property
    def value(self) -> int | None:
        """The watermark (µs), ``END_OF_TIME`` once the input ended, ``None`` before any event."""
        if self.ended:
            return int(END_OF_TIME)
        return None if self.max_seen_us is None else self.max_seen_us - self.lateness_us

    def judge(self, times_us: np.ndarray, window_ends_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of these events, in stream order, are late, and the watermark each one met
        (``None``-less: before any event it is the int64 minimum); then advance past them.

        Args:
            times_us: each event's time.
            window_ends_us: the end of each event's earliest-closing window
                (:func:`first_window_ends`).
        """
        floor = np.iinfo(np.int64).min
        if not len(times_us):
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        start = floor if self.max_seen_us is None else self.max_seen_us
        seen = np.maximum.accumulate(np.concatenate(([start], times_us[:-1].astype(np.int64))))
        known = seen != floor
        at_arrival = np.full(len(times_us), floor, dtype=np.int64)
        at_arrival[known] = seen[known] - self.lateness_us
        late = known & (window_ends_us <= at_arrival)
        if self.ended:
            late[:] = True
            at_arrival[:] = END_OF_TIME
        self.max_seen_us = int(max(start, int(times_us.max())))
        return late, at_arrival

    def end(self) -> None:
        """The input has ended: close every window; anything that still comes is late."""
        self.ended = True


@dataclass
class _Seen:
    fingerprint: bytes
    source: str
    line_no: int
    forget_at_us: int


@dataclass
class DuplicateMemory:
    """The duplicate rule over a stream (``transforms.dedup``): the first copy of an event_id is
    kept, a later identical copy collapses into it, a later differing copy is a
    ``conflicting_duplicate``.

    It remembers each kept event_id until the watermark passes ``forget_at_us`` (its window's
    end plus the allowed lateness: by then its window has been written to the audit trail,
    whose stored fingerprints decide from there on). Folded once over a whole shard, it is
    exactly :func:`~transforms.dedup.collapse_duplicates`.
    """

    seen: dict[str, _Seen] = field(default_factory=dict)

    @staticmethod
    def fold(events: pa.Table) -> Deduplicated:
        """A memory created, one batch added and closed at the end of the input: what a bounded
        run does over a shard holding every copy of its event_ids. What it would remember is
        forgotten at once, so it remembers nothing (a batch run pays for no memory).

        >>> from transforms.event_batch import FINGERPRINT, ORDER, RAW
        >>> t = pa.table({"event_id": ["a", "a"], FINGERPRINT: [b"1", b"1"], ORDER: [0, 0],
        ...               "line_no": [1, 2], "source": ["f", "f"], RAW: [b"", b""],
        ...               "event_time": pa.array([0, 0], pa.timestamp("us"))})
        >>> DuplicateMemory.fold(t).collapsed
        1
        """
        return collapse_duplicates(events)

    def add(self, events: pa.Table, forget_at_us: np.ndarray) -> Deduplicated:
        """Apply the rule to a batch (in stream order) against what came before it.

        Args:
            events: valid events with ``event_id``, the payload fingerprint and input position.
            forget_at_us: per event, when the memory may forget it (µs of watermark).
        """
        events = events.append_column("_forget_at", pa.array(forget_at_us, pa.int64()))
        if not self.seen:
            within = collapse_duplicates(events)
            self._remember(within.events)
            return Deduplicated(
                within.events.drop_columns(["_forget_at"]), within.conflicts, within.collapsed
            )
        # Every copy of an event_id remembered from an earlier batch is judged against that first
        # copy, before the rule runs within this batch: a copy identical to the first collapses and
        # a differing one conflicts, whatever other copies this batch holds.
        ids = events.column("event_id").to_pylist()
        known = np.array([event_id in self.seen for event_id in ids], dtype=bool)
        collapsed, conflicts = 0, []
        if known.any():
            rows = np.flatnonzero(known)
            earlier = events.take(pa.array(rows)).select(
                ["source", "line_no", RAW, "event_id", "event_time", ORDER, FINGERPRINT]
            )
            for row in earlier.to_pylist():
                first = self.seen[row["event_id"]]
                if bytes(row[FINGERPRINT]) == first.fingerprint:
                    collapsed += 1
                    continue
                conflicts.append(conflict_with_first_copy(row, first.source, first.line_no))
            events = events.filter(pa.array(~known))
        within = collapse_duplicates(events)
        self._remember(within.events)
        return Deduplicated(
            within.events.drop_columns(["_forget_at"]),
            within.conflicts + conflicts,
            within.collapsed + collapsed,
        )

    def _remember(self, kept: pa.Table) -> None:
        if not kept.num_rows:
            return
        columns = kept.select(["event_id", FINGERPRINT, "source", "line_no", "_forget_at"]).to_pydict()
        for event_id, fingerprint, source, line_no, forget in zip(*columns.values(), strict=True):
            self.seen[event_id] = _Seen(bytes(fingerprint), source, line_no, forget)

    def merge(self, other: DuplicateMemory) -> DuplicateMemory:
        """One memory holding both; where both hold an event_id, this one's first copy stays."""
        merged = DuplicateMemory(dict(other.seen))
        merged.seen.update(self.seen)
        return merged

    def close(self, watermark_us: int) -> int:
        """Forget the event_ids whose time is up; returns how many were forgotten."""
        stale = [event_id for event_id, seen in self.seen.items() if seen.forget_at_us <= watermark_us]
        for event_id in stale:
            del self.seen[event_id]
        return len(stale)


@dataclass
class OpenWindows:
    """Events waiting for their windows to close: a key's open rate-limit windows.

    ``add`` keeps a batch with the end of each row's window; ``close(watermark)`` hands back,
    as one table, every row whose window ended at or before the watermark, in the order added.
    A bounded run adds its pane and closes everything at once (``close(END_OF_TIME)``), which
    returns the pane as it came, without a copy.
    """

    windows: TumblingWindows
    #: (batch, end of each row's window, the earliest of those ends)
    pending: list[tuple[pa.Table, np.ndarray, int]] = field(default_factory=list)

    def add(self, events: pa.Table, time_column: str = "event_time") -> None:
        """Hold ``events`` until their windows close."""
        if not events.num_rows:
            return
        ends = self.windows.starts(events.column(time_column)) + self.windows.size_us
        self.pending.append((events, ends, int(ends.min())))

    def merge(self, other: OpenWindows) -> OpenWindows:
        """One set of open windows holding both (this one's batches first)."""
        return OpenWindows(self.windows, self.pending + other.pending)

    @property
    def earliest_start(self) -> int | None:
        """The start of the earliest window still open (µs), or ``None`` when none is."""
        if not self.pending:
            return None
        return min(earliest for _, _, earliest in self.pending) - self.windows.size_us

    @property
    def rows(self) -> int:
        """How many events are waiting."""
        return sum(batch.num_rows for batch, _, _ in self.pending)

    def close(self, watermark_us: int) -> pa.Table | None:
        """The rows of every window that ended at or before ``watermark_us``, or ``None``."""
        closed: list[pa.Table] = []
        still: list[tuple[pa.Table, np.ndarray, int]] = []
        for batch, ends, earliest in self.pending:
            if earliest > watermark_us:
                still.append((batch, ends, earliest))
                continue
            done = ends <= watermark_us
            if done.all():
                closed.append(batch)
                continue
            closed.append(batch.filter(pa.array(done)))
            rest = ~done
            still.append((batch.filter(pa.array(rest)), ends[rest], int(ends[rest].min())))
        self.pending = still
        if not closed:
            return None
        return closed[0] if len(closed) == 1 else pa.concat_tables(closed)


def late_rows(events: pa.Table, late: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """``(on time, late)`` rows of ``events`` by the mask ``late``."""
    if not late.any():
        return events, events.schema.empty_table()
    mask = pa.array(late)
    return events.filter(pc.invert(mask)), events.filter(mask)
