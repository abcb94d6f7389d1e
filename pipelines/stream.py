"""The spine as a stream: the two stateful steps a streaming engine runs, engine-free.

A stream never ends, so the steps that saw a whole bounded shard at once in a batch run hold
incremental state instead (``transforms.stream_state``), and close it as the watermark passes:

1. :class:`StreamGate`, one for the whole stream, sees every validated batch in stream order. It
   judges which events are late (the watermark is global: a quiet user shard's windows still
   close), applies the duplicate rule against what is in flight, writes the dead letters, and
   hands each user shard its events, with the watermark, every time the watermark moves.
2. :class:`ShardWindows`, one per user shard, holds its shard's open rate-limit windows and
   user-feature windows. When the watermark closes windows it runs the same stages as a batch
   run over their events (tiers, rate limits, order, embeddings, moderation) and writes the sinks;
   late events go through the same stages at once, outside any window aggregate, and into
   ``late_events/``.

Both write their files under ``StreamFileNames`` keys numbered by their own write counter, which
their snapshotted state carries: a step restored from a snapshot first deletes what it wrote after
it (``remove_parts_after``), so the input the engine reads again rewrites those files, never
doubles them. The audit trail and the decision store are keyed, so a write made again changes
nothing. Each step returns its outputs: per-shard inputs, counts, and the input positions whose
results every sink has committed (for a source that acknowledges, Redis).
"""

from __future__ import annotations

import pickle
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from connectors.parquet_sink import StreamFileNames, remove_parts_after
from connectors.redis_stream import unpack_entry_id
from connectors.sinks import Counts
from pipelines.semantic import EmbeddedPane
from pipelines.stages import Keyed, dead_letter_files
from pipelines.worker import SpineWorker
from transforms.dedup import CONTEXT
from transforms.event_batch import ORDER
from transforms.personalization import FeatureAccumulator, last_interest_vectors
from transforms.sharding import split_by_shard, user_shard
from transforms.stream_state import (
    END_OF_TIME,
    DuplicateMemory,
    OpenWindows,
    Watermark,
    event_times,
    first_window_ends,
)
from transforms.windows import US, TumblingWindows

#: Internal columns the gate adds: whether an event is late, and the watermark it met.
LATE, ARRIVAL_WATERMARK = "_late", "_arrival_watermark"
GATE = "gate"


@dataclass(frozen=True)
class ValidatedBatch:
    """One source batch after validation: its valid events (any order), its dead letters, its
    counts, every record's position (``line_no``), and whether the input ended after it."""

    events: pa.Table | None
    dead_letters: list[Keyed]
    counts: Counts
    positions: np.ndarray
    end_of_input: bool = False


@dataclass(frozen=True)
class ShardInput:
    """What the gate hands one user shard: its events (``LATE`` marks the late ones), if any, and
    the watermark after them (``None`` before any event)."""

    shard: int
    events: pa.Table | None
    watermark: int | None


@dataclass(frozen=True)
class Committed:
    """Input positions (``line_no``) whose results every sink holding them has committed."""

    positions: np.ndarray


@dataclass(frozen=True)
class Counted:
    """Counts for the run summary and the metrics; seconds a step took, by stage; texts each
    model stage handled in the call."""

    counts: Counts
    timings: dict[str, float] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)


Output = tuple[int, ShardInput] | Committed | Counted


def _window_sizes(worker: SpineWorker) -> list[TumblingWindows]:
    config = worker.plan.config
    sizes = [TumblingWindows(config.window_seconds)]
    if config.embeddings:
        sizes.append(TumblingWindows(config.features_window_seconds))
    return sizes


class _Writer:
    """A step's numbered writes: ``<writer>-<n>`` keys, the count restored with its state."""

    def __init__(self, worker: SpineWorker, writer: str, next_write: int) -> None:
        plan = worker.plan
        if not isinstance(plan.naming, StreamFileNames):
            raise TypeError(f"a stream writes with StreamFileNames, got {type(plan.naming).__name__}")
        self.writer = writer
        self.next_write = next_write
        # What was written after the snapshot this state comes from is written again.
        remove_parts_after(Path(plan.out_dir), plan.naming, writer, next_write)

    def key(self) -> str:
        key = StreamFileNames.key(self.writer, self.next_write)
        self.next_write += 1
        return key


@dataclass
class GateState:
    """What the gate snapshots."""

    watermark: Watermark
    memory: DuplicateMemory = field(default_factory=DuplicateMemory)
    next_write: int = 0


class StreamGate:
    """The stream's single gate: lateness, the duplicate rule in flight, dead letters."""

    def __init__(self, worker: SpineWorker, snapshot: bytes | None = None) -> None:
        config = worker.plan.config
        self.worker = worker
        self.shards = config.shards
        self.windows = _window_sizes(worker)
        self.lateness_us = config.allowed_lateness_seconds * US
        self.state: GateState = pickle.loads(snapshot) if snapshot else GateState(Watermark(self.lateness_us))
        # An input that ended closed every window of its execution; a restart's input goes on
        # from the latest event time seen, not from the end of time.
        self.state.watermark.ended = False
        self.writes = _Writer(worker, GATE, self.state.next_write)

    def snapshot(self) -> bytes:
        self.state.next_write = self.writes.next_write
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    def __call__(self, batches: list[ValidatedBatch]) -> list[Output]:
        began = time.perf_counter()
        counts: Counter[str] = Counter()
        letters: list[pa.Table] = []
        passed: list[pa.Table] = []
        positions: list[np.ndarray] = []
        watermark = self.state.watermark
        before = watermark.value
        for batch in batches:
            counts.update(batch.counts)
            letters.extend(table for _, table in batch.dead_letters)
            positions.append(batch.positions)
            if batch.events is not None and batch.events.num_rows:
                kept, conflicts, collapsed = self._judge(batch.events)
                letters.extend(table for _, table in conflicts)
                counts["duplicates_collapsed"] += collapsed
                passed.append(kept)
            if batch.end_of_input:
                watermark.end()
        if watermark.value is not None:
            self.state.memory.close(watermark.value)
        outputs: list[Output] = []
        if letters:
            counts.update(write_dead_letters(self.worker, self.writes.key(), letters))
        events = pa.concat_tables(passed) if passed else None
        forwarded = np.zeros(0, dtype=np.int64)
        if events is not None and events.num_rows:
            forwarded = events.column("line_no").to_numpy()
            for shard, part in split_by_shard(events, user_shard(events, self.shards)):
                outputs.append((shard, ShardInput(shard, part, watermark.value)))
        moved = watermark.value != before
        if moved:  # every shard hears of it: its windows may close without events of its own
            given = {shard for shard, _ in (o for o in outputs if isinstance(o, tuple))}
            outputs.extend(
                (shard, ShardInput(shard, None, watermark.value))
                for shard in range(self.shards)
                if shard not in given
            )
        if positions:
            done = np.setdiff1d(np.concatenate(positions), forwarded)
            if done.size:
                outputs.append(Committed(done))
        outputs.append(Counted(dict(counts), {"gate": time.perf_counter() - began}))
        return outputs

    def _judge(self, events: pa.Table) -> tuple[pa.Table, list[Keyed], int]:
        events = events.sort_by([(ORDER, "ascending"), ("line_no", "ascending")])  # stream order
        times = event_times(events)
        ends = first_window_ends(times, self.windows)
        late, at_arrival = self.state.watermark.judge(times, ends)
        events = events.append_column(LATE, pa.array(late)).append_column(
            ARRIVAL_WATERMARK, pa.array(at_arrival, pa.int64())
        )
        result = self.state.memory.add(events, ends + self.lateness_us)
        return result.events, dead_letter_files(result.conflicts), result.collapsed


@dataclass
class ShardState:
    """What one user shard snapshots."""

    open: OpenWindows
    features: FeatureAccumulator = field(default_factory=FeatureAccumulator)
    #: Each user's last interest vector, for drift.
    last_vectors: dict[int, np.ndarray] = field(default_factory=dict)
    #: Positions written but held in a feature window still open: (that window's end, positions).
    unacknowledged: list[tuple[int, np.ndarray]] = field(default_factory=list)
    watermark: int | None = None
    next_write: int = 0


class ShardWindows:
    """One user shard's open windows, closed as the watermark passes, and its sinks."""

    def __init__(self, worker: SpineWorker, shard: int, snapshot: bytes | None = None) -> None:
        config = worker.plan.config
        self.worker = worker
        self.config = config
        self.rate_windows = TumblingWindows(config.window_seconds)
        self.feature_windows = TumblingWindows(config.features_window_seconds)
        self.state: ShardState = (
            pickle.loads(snapshot) if snapshot else ShardState(OpenWindows(self.rate_windows))
        )
        if self.state.watermark == int(END_OF_TIME):
            self.state.watermark = None  # the gate sends the restarted stream's watermark
        self.writes = _Writer(worker, f"{shard:04d}", self.state.next_write)
        self.late_schema = schemas.arrow_schema("late_events")

    def snapshot(self) -> bytes:
        self.state.next_write = self.writes.next_write
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    def __call__(self, inputs: list[ShardInput]) -> list[Output]:
        began = time.perf_counter()
        self._timings: defaultdict[str, float] = defaultdict(float)
        self._batches: Counter[str] = Counter()
        state, worker = self.state, self.worker
        counts: Counter[str] = Counter()
        letters: list[pa.Table] = []
        committed: list[np.ndarray] = []
        arrived_late: list[pa.Table] = []
        for item in inputs:
            if item.watermark is not None:
                state.watermark = max(state.watermark or item.watermark, item.watermark)
            if item.events is None or not item.events.num_rows:
                continue
            is_late = item.events.column(LATE)
            if pc.any(is_late).as_py():
                arrived_late.append(item.events.filter(is_late))
            on_time = item.events.filter(pc.invert(is_late))
            if on_time.num_rows:
                # An on-time copy of an event is caught by the gate's memory, which forgets an
                # event only once its window has closed: so these are compared now.
                events = self._compare(on_time, counts, letters, committed)
                if events is not None:
                    state.open.add(events)
                    counts["events_in_windows_change"] += _waiting(events)
        if state.watermark is not None:
            closed = state.open.close(state.watermark)
            if closed is not None:
                counts["events_in_windows_change"] -= _waiting(closed)
                committed.extend(self._write(closed, counts, letters, late=False))
        if arrived_late:
            # Late events are compared once the windows this call closed are written: a late copy
            # of an event the gate has forgotten then finds it in the audit trail and its files.
            # Copies among themselves follow the duplicate rule first.
            together = pa.concat_tables(arrived_late)
            within = DuplicateMemory.fold(together)
            counts["duplicates_collapsed"] += within.collapsed
            letters.extend(table for _, table in dead_letter_files(within.conflicts))
            dropped = np.setdiff1d(
                together.column("line_no").to_numpy(), within.events.column("line_no").to_numpy()
            )
            if dropped.size:
                committed.append(dropped)  # collapsed or dead-lettered: nothing else holds them
            survivors = self._compare(within.events, counts, letters, committed)
            if survivors is not None:
                committed.extend(self._write(survivors, counts, letters, late=True))
        committed.extend(self._close_features(counts))
        if letters:
            counts.update(write_dead_letters(worker, self.writes.key(), letters))
        self._timings["windows"] += time.perf_counter() - began
        outputs: list[Output] = [Counted(dict(counts), dict(self._timings), dict(self._batches))]
        if committed:
            outputs.append(Committed(np.concatenate(committed)))
        return outputs

    def _compare(
        self, events: pa.Table, counts: Counter[str], letters: list[pa.Table], committed: list[np.ndarray]
    ) -> pa.Table | None:
        """The duplicate rule against the audit trail (``CompareWithStore``); conflicts become
        dead letters. Returns the events that go on, or ``None``."""
        compared = self.worker.compare(events)
        counts.update(compared.counts)
        for _, table in compared.dead_letters:
            letters.append(table)
            committed.append(table.column("line_no").to_numpy())
        if not compared.tables:
            return None
        return pa.concat_tables(table for _, table in compared.tables)

    def _write(
        self, events: pa.Table, counts: Counter[str], letters: list[pa.Table], *, late: bool
    ) -> list[np.ndarray]:
        """Run the stages after the windows on ``events`` and write every sink; returns the
        positions whose results are all committed now."""
        worker, config = self.worker, self.config
        events = worker.tiers(events)
        violations = None
        late_rows = None
        if late:
            # A copy of an event this output already holds is a duplicate, not a late event.
            late_rows = self._late_rows(events.filter(pc.invert(events.column(CONTEXT))))
            starts = self.rate_windows.starts(events.column("event_time"))
            events = events.append_column(
                "rate_limited", pa.array(np.zeros(events.num_rows, dtype=bool))
            ).append_column("window_start", pa.array(starts, pa.timestamp("us", tz="UTC")))
        else:
            events, violations = worker.rate_limits.closed(events)
        positions = events.column("line_no").to_numpy()
        ends = self.feature_windows.starts(events.column("event_time")) + self.feature_windows.size_us
        ready = worker.order(events)
        key = self.writes.key()
        pane: EmbeddedPane | None = None
        if config.needs_vectors:
            began = time.perf_counter()
            panes, hits = worker.embed_texts.add(key, ready)
            more, more_hits = worker.embed_texts.flush()
            (pane,) = panes + more
            counts.update(hits)
            counts.update(more_hits)
            ready = pane.events
            self._timings["embed"] += time.perf_counter() - began
            self._batches["embedder"] += hits.get("embedding_cache_misses", 0) + more_hits.get(
                "embedding_cache_misses", 0
            )
        if config.moderation and pane is not None:
            began = time.perf_counter()
            ready, moderation_rows, decided = worker.moderate(ready, pane.texts, pane.vectors)
            counts.update(decided)
            self._timings["moderate"] += time.perf_counter() - began
            self._batches["moderation"] += ready.num_rows
            if moderation_rows:
                counts.update(worker.write_moderation(key, [table for _, table in moderation_rows]))
        began = time.perf_counter()
        refused, written = worker.write_events(key, ready)
        counts.update(written)
        letters.extend(table for _, table in refused)
        if violations is not None and violations.num_rows:
            counts.update(worker.write_violations(key, violations))
        if pane is not None and pane.rows.num_rows:
            counts.update(worker.write_embeddings(key, pane.rows))
        if late_rows is not None:
            worker.late_events.write(key, late_rows)
            counts["late_events"] += late_rows.num_rows // len(self._aggregates())
        self._timings["write"] += time.perf_counter() - began
        if late or not config.embeddings:
            return [positions]
        self.state.features = worker.profile.add(self.state.features, ready)
        self.state.unacknowledged.append((int(ends.max()), positions))
        return []

    def _aggregates(self) -> list[tuple[str, TumblingWindows]]:
        """The window aggregates a late event is left out of."""
        sizes = [("rate_limit", self.rate_windows)]
        if self.config.embeddings:
            sizes.append(("user_features", self.feature_windows))
        return sizes

    def _late_rows(self, events: pa.Table) -> pa.Table:
        """``late_events/`` rows: one per event and window aggregate that left it out."""
        sizes = self._aggregates()
        parts = []
        timestamp = pa.timestamp("us", tz="UTC")
        for aggregate, windows in sizes:
            parts.append(
                pa.table(
                    {
                        "event_id": events.column("event_id"),
                        "event_time": events.column("event_time"),
                        "user_id": events.column("user_id"),
                        "aggregate": pa.array([aggregate] * events.num_rows, pa.string()),
                        "window_start": pa.array(windows.starts(events.column("event_time")), timestamp),
                        "watermark": events.column(ARRIVAL_WATERMARK).cast(timestamp),
                        "source": events.column("source"),
                        "line_no": events.column("line_no"),
                    }
                ).cast(self.late_schema)
            )
        return pa.concat_tables(parts)

    def _close_features(self, counts: Counter[str]) -> list[np.ndarray]:
        """Write the user-feature windows the watermark closed (none while an event of theirs may
        still wait in a rate-limit window); returns the positions that completes."""
        state = self.state
        if state.watermark is None or not self.config.embeddings:
            return []
        until = state.watermark
        waiting = state.open.earliest_start
        if waiting is not None:
            until = min(until, waiting)
        done = [positions for end, positions in state.unacknowledged if end <= until]
        state.unacknowledged = [(end, p) for end, p in state.unacknowledged if end > until]
        closed = state.features.pop_closed(until, self.feature_windows.size_us)
        if closed.windows:
            rows = self.worker.profile.extract(closed, previous=state.last_vectors)
            state.last_vectors = last_interest_vectors(rows, state.last_vectors)
            self.worker.write_user_features.sink.write(self.writes.key(), rows)
            counts["user_features_written"] += rows.num_rows
        return done


def _waiting(events: pa.Table) -> int:
    """Events of a window that the summary counts as waiting: not those already counted as
    duplicates (held in this output's files), which only count towards their window's quota."""
    return events.num_rows - int(pc.sum(events.column(CONTEXT)).as_py() or 0)


def write_dead_letters(worker: SpineWorker, key: str, letters: list[pa.Table]) -> Counts:
    """Write dead letters; a Redis stream's show their entry id as position, no line number."""
    if worker.plan.entry_positions:
        letters = [_entry_positions(table) for table in letters]
    return worker.write_dead_letters(key, letters)


def _entry_positions(letters: pa.Table) -> pa.Table:
    packed = letters.column("line_no").to_pylist()
    ids = [
        position if number is None else unpack_entry_id(number)
        for number, position in zip(packed, letters.column("position").to_pylist(), strict=True)
    ]
    letters = letters.set_column(
        letters.schema.get_field_index("position"), "position", pa.array(ids, pa.string())
    )
    index = letters.schema.get_field_index("line_no")
    return letters.set_column(index, "line_no", pa.nulls(letters.num_rows, pa.int64()))
