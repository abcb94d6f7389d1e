"""The spine's stages: small engine-free objects with one job each, shared by every engine adapter.

A stage calls ``transforms`` for the logic and ``connectors`` for IO, takes and returns Arrow
tables, and reports counts for the run summary. An engine adapter (``beam.py``) only moves tables
between stages, shuffles them by the keys the stages give, and turns the counts into its metrics.
Read them in order to follow one event from its input to the sinks:

1. :class:`ReadInputs`: an input split → batches of raw records.
2. :class:`ValidateHashPrice`: raw records → valid events keyed by ``event_id`` shard, and dead
   letters. *Shuffle 1* brings every copy of an event_id to one worker.
3. :class:`CollapseDuplicates`: the duplicate rule within the run.
4. :class:`CompareWithStore`: the duplicate rule against what earlier runs stored (the same
   event_id shard is at hand, so its lookups batch). Events come out keyed by
   ``(user shard, pane)``: *shuffle 2* brings every event of a user's pane, a span of event time
   holding whole rate-limit windows, to one worker.
5. :class:`ResolveTiers`: the tier of events that name none, from the users table.
6. :class:`ApplyRateLimits`: flag events past their tier's quota per window; violations.
7. :class:`OrderForSinks`: a deterministic order, the events schema plus the internal columns the
   sinks need.
8. :class:`WriteEvents`, :class:`WriteViolations`, :class:`WriteDeadLetters`: the sinks.

:class:`~pipelines.worker.SpineWorker` builds the stages once per worker from a :class:`RunPlan`
and disposes the database engine when the worker ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from connectors.audit_sink import StoredEvents
from connectors.config import PipelineConfig
from connectors.images import image_loader, image_location
from connectors.inputs import InputSplit
from connectors.parquet_sink import FileNaming, partition_dates
from connectors.readers import read_split
from connectors.sinks import Counts, Sink
from connectors.spill import PLACE_AT, PLACE_FILE
from connectors.users import UserDirectory
from transforms.cost import PriceBook
from transforms.dead_letter import DeadLetter, dead_letter_bucket, dead_letter_table, sorted_by_position
from transforms.dedup import (
    CONTEXT,
    STORED,
    Verdict,
    judge_against_store,
    stored_conflicts,
)
from transforms.event_batch import (
    CONTENT,
    FINGERPRINT,
    IMAGE_PATH,
    ORDER,
    RAW,
    SHARD,
    EnrichSettings,
    InputRecords,
    enrich_records,
    in_flight_schema,
)
from transforms.hashing import ContentHasher
from transforms.rate_limit import RateLimits, apply_rate_limits
from transforms.sharding import split_by_shard, split_by_shard_and_window, user_shard
from transforms.stream_state import END_OF_TIME, DuplicateMemory, OpenWindows
from transforms.tiers import resolve_tiers
from transforms.validate import EventRules, is_url
from transforms.windows import TumblingWindows, pane_seconds

#: The tier of an event that names none and whose user has none (DESIGN.md, stage 3).
DEFAULT_TIER = "free"

#: A dead-letter file's key (input position and bucket of lines) and its rows.
Keyed = tuple[str, pa.Table]
#: Shuffle 2's key: the user shard and the start of the pane (µs since the epoch).
PaneKey = tuple[int, int]

#: Internal columns events carry to the sinks and no further: the payload fingerprint (for the
#: audit trail), the raw record, or where it was spilled, and the input position (for a conflict
#: found at write time), the stored flag, and the content itself (texts and image bytes) for the
#: model stages.
CARRIED = (FINGERPRINT, RAW, PLACE_FILE, PLACE_AT, ORDER, STORED, *CONTENT)

#: The raw records (``RAW``) of events that travel without them, read back from where they were
#: left (``pipelines.beam`` leaves them in the first shuffle's spill files).
RawRecords = Callable[[pa.Table], pa.Array]


def build_enrich_settings(config: PipelineConfig) -> EnrichSettings:
    """The first stage's rules, prices, hasher and shard count for ``config``: one builder for the
    pipeline, the tests and the benchmarks."""
    return EnrichSettings(
        rules=EventRules.from_json_schema(schemas.event_json_schema()),
        prices=PriceBook.from_rows(schemas.pricing_rows(config.pricing_path)),
        hasher=ContentHasher(config.hmac_key()),
        shards=config.shards,
    )


def pane_label(key: PaneKey) -> str:
    """The file key of a pane: ``SSSS-YYYYMMDDTHHMMSS`` (user shard, pane start in UTC).

    >>> pane_label((3, 1_751_932_800_000_000))
    '0003-20250708T000000'
    """
    shard, start_us = key
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start_us)
    return (
        f"{shard:04d}-{start.year:04d}{start.month:02d}{start.day:02d}"
        f"T{start.hour:02d}{start.minute:02d}{start.second:02d}"
    )


@dataclass(frozen=True)
class RunPlan:
    """What every worker needs to know about the run; small and picklable.

    Nothing here assumes files: a stream job gives its own outputs id and file naming.
    """

    run_id: str
    out_dir: str  # a local folder, or an object-store URL (connectors.storage.Location)
    audit_url: str = field(repr=False)  # may hold a password: never in a log or an error
    config: PipelineConfig
    #: Names this run's output files (through ``naming``) and marks its audit rows: the inputs'
    #: fingerprint for a bounded run.
    outputs_id: str
    #: How the Parquet sinks name their files (deterministic per bounded run).
    naming: FileNaming
    #: By source position: the folder a source's relative image paths resolve against.
    image_dirs: tuple[str, ...]
    # Whether the audit trail held rows when the run began: only then can an event conflict with
    # one an earlier run stored (within a run, each event_id reaches exactly one shard).
    compare_with_store: bool = True
    #: A stream (Bytewax) rather than a bounded run: an event already stored and held in any file
    #: of this output, its own included, is a duplicate (a bounded rerun replaces its own files).
    stream: bool = False
    #: Input positions are Redis entry ids packed in ``line_no`` (``connectors.redis_stream``):
    #: dead letters then show the entry id as their position and no line number.
    entry_positions: bool = False

    @property
    def panes(self) -> TumblingWindows:
        """Shuffle 2's panes: they hold whole windows of every windowed stage."""
        return TumblingWindows(pane_seconds(self.config.window_seconds, self.config.features_window_seconds))


@dataclass
class StageOutput:
    """What a stage produced: keyed tables for the next stage, dead letters, counts."""

    tables: list[tuple[int, pa.Table]] | list[tuple[PaneKey, pa.Table]] = field(default_factory=list)
    dead_letters: list[Keyed] = field(default_factory=list)
    counts: Counts = field(default_factory=dict)


def dead_letter_files(letters: Sequence[DeadLetter]) -> list[Keyed]:
    """Dead letters keyed by (input position, bucket of positions): each key becomes one file."""
    if not letters:
        return []
    groups: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(dead_letter_bucket(letter), []).append(letter)
    schema = schemas.arrow_schema("dead_letter")
    return [(key, dead_letter_table(group, schema)) for key, group in sorted(groups.items())]


class ReadInputs:
    """Stage 1: an input split → batches of at most ``batch_size`` raw records, in order."""

    def __init__(self, batch_size: int, rules: EventRules) -> None:
        self.batch_size = batch_size
        self.rules = rules

    def __call__(self, split: InputSplit) -> Iterable[InputRecords]:
        return read_split(split, self.batch_size, self.rules)


class ValidateHashPrice:
    """Stage 2: validate, resolve images, hash and price; key valid events by event_id shard.

    With ``carry_content`` the events keep their texts and images in internal columns for the
    stages after rate limiting (the model stages); without, only hashes leave this stage.
    """

    def __init__(
        self, settings: EnrichSettings, image_dirs: Sequence[str], carry_content: bool = False
    ) -> None:
        self.settings = settings
        self.image_dirs = image_dirs
        self.schema = in_flight_schema(schemas.arrow_schema("events"), content=carry_content)

    def __call__(self, records: InputRecords) -> StageOutput:
        loader = image_loader(self.image_dirs[records.source_order], self.settings.rules.image_max_bytes)
        batch = enrich_records(records, self.settings, loader, self.schema)
        events = batch.events
        if IMAGE_PATH in events.column_names:
            events = _resolved_image_paths(events, self.image_dirs[records.source_order])
        return StageOutput(
            list(split_by_shard(events, events.column(SHARD))),
            dead_letter_files(batch.dead_letters),
            {"events_read": len(records.raws), "blank_lines": records.blank_lines},
        )


def _resolved_image_paths(events: pa.Table, image_dir: str) -> pa.Table:
    """Path images as paths the moderation stage can read again (the input's folder joined to the
    relative path validation checked); http(s) URLs as they are."""
    paths = events.column(IMAGE_PATH)
    if paths.null_count == len(paths):
        return events
    resolved = [p if p is None or is_url(p) else image_location(image_dir, p) for p in paths.to_pylist()]
    return events.set_column(
        events.schema.get_field_index(IMAGE_PATH), IMAGE_PATH, pa.array(resolved, pa.string())
    )


class CollapseDuplicates:
    """Stage 3: one event per event_id among the copies of one shard: the stream's duplicate
    memory (``transforms.stream_state``) folded over the whole shard at once."""

    def __call__(self, tables: Iterable[pa.Table]) -> tuple[pa.Table, StageOutput]:
        events = pa.concat_tables(tables)
        result = DuplicateMemory.fold(events)
        return result.events.drop_columns([SHARD]), StageOutput(
            dead_letters=dead_letter_files(result.conflicts),
            counts={"duplicates_collapsed": result.collapsed},
        )


class CompareWithStore:
    """Stage 4: the duplicate rule against the audit trail, then key events by (user shard, pane).

    An event stored with another payload is a conflicting duplicate; one stored with the same
    payload is marked ``STORED`` (its audit row stays as it is). Of those, one this output already
    holds in files of another run (``held_elsewhere``) is a duplicate here: it keeps a ``CONTEXT``
    mark, counts towards its window's quota, and goes no further. One stored but held nowhere
    here (its run was killed before its Parquet, or wrote elsewhere) is written again.
    """

    def __init__(
        self,
        stored: StoredEvents | None,
        held_elsewhere: Callable[[Mapping[str, Sequence[str]]], set[str]],
        shards: int,
        panes: TumblingWindows,
        keep_raw: bool = True,
    ) -> None:
        self.stored = stored  # None: the store was empty when the run began, nothing to compare
        self.held_elsewhere = held_elsewhere
        self.shards = shards
        self.panes = panes
        # False: the raw records go no further than this stage's own dead letters (an engine that
        # can read them back where they were spilled, see ``WriteEvents``).
        self.keep_raw = keep_raw

    def __call__(self, events: pa.Table) -> StageOutput:
        verdicts = np.zeros(events.num_rows, dtype=np.int8)
        held = np.zeros(events.num_rows, dtype=bool)
        if self.stored is not None and events.num_rows:
            verdicts = judge_against_store(
                events, self.stored.fingerprints(events.column("event_id").to_pylist())
            )
            held = self._held_here(events, verdicts)
        conflicts = stored_conflicts(events, np.flatnonzero(verdicts == Verdict.CONFLICT), "an earlier run")
        keep = verdicts != Verdict.CONFLICT
        if not self.keep_raw:
            events = events.drop_columns([RAW])  # before any copy below
        if not keep.all():  # a filter copies every column, even when it keeps every row
            events = events.filter(pa.array(keep))
        events = events.append_column(STORED, pa.array(verdicts[keep] != Verdict.NEW)).append_column(
            CONTEXT, pa.array(held[keep])
        )
        keyed = list(
            split_by_shard_and_window(events, user_shard(events, self.shards), self.panes, "event_time")
        )
        return StageOutput(
            keyed, dead_letter_files(conflicts), {"duplicates_collapsed": int(np.count_nonzero(held))}
        )

    def _held_here(self, events: pa.Table, verdicts: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(verdicts == Verdict.STORED)
        held = np.zeros(events.num_rows, dtype=bool)
        if not rows.size:
            return held
        stored = events.take(pa.array(rows))
        days = partition_dates(stored.column("event_time")).to_pylist()
        ids = stored.column("event_id").to_pylist()
        wanted: dict[str, list[str]] = {}
        for day, event_id in zip(days, ids, strict=True):
            wanted.setdefault(day, []).append(event_id)
        found = self.held_elsewhere(wanted)
        held[rows] = [event_id in found for event_id in ids]
        return held


class ResolveTiers:
    """Stage 5: the tier of each event that names none: its user's, else ``DEFAULT_TIER``."""

    def __init__(self, users: UserDirectory) -> None:
        self.users = users

    def __call__(self, events: pa.Table) -> pa.Table:
        untiered = pc.unique(pc.filter(events.column("user_id"), pc.is_null(events.column("ai_tier"))))
        profiles = self.users.profiles(untiered.to_pylist())
        return resolve_tiers(events, {uid: p.tier for uid, p in profiles.items()}, DEFAULT_TIER)


class ApplyRateLimits:
    """Stage 6: flag events past their tier's quota in each window; the windows over quota.

    The table must hold every event of its users' windows: shuffle 2's panes guarantee it.
    """

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.violations_schema = schemas.arrow_schema("rate_limit_violations")

    def __call__(self, events: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Rate-limit a bounded pane: its open windows (the stream's state) closed at once."""
        windows = OpenWindows(TumblingWindows(self.limits.window_seconds))
        windows.add(events)
        return self.closed(windows.close(END_OF_TIME) or events)

    def closed(self, events: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Rate-limit the events of closed windows (every event of each of them)."""
        result = apply_rate_limits(events, self.limits, self.violations_schema)
        return result.events, result.violations


class OrderForSinks:
    """Stage 7: leave out the events this output already holds, order the rest by (user_id,
    event_time, event_id), in the events schema (``decision`` still NULL) plus the internal
    columns sinks may use."""

    def __init__(self) -> None:
        self.schema = schemas.arrow_schema("events")

    def __call__(self, events: pa.Table) -> pa.Table:
        context = events.column(CONTEXT)
        written = events.filter(pc.invert(context)) if pc.any(context).as_py() else events
        ordered = written.sort_by(
            [("user_id", "ascending"), ("event_time", "ascending"), ("event_id", "ascending")]
        )
        # Moderation, when on, decides each event after this stage.
        ordered = ordered.append_column("decision", pa.nulls(ordered.num_rows, pa.string()))
        flagged = ordered.select(self.schema.names).cast(self.schema)
        for internal in CARRIED:
            if internal in ordered.column_names:
                flagged = flagged.append_column(internal, ordered.column(internal))
        return flagged


#: ``WriteEvents`` gathers this many audit batches of rows (``audit_batch_rows``; 50,000 rows by
#: default, ~75 MB at about 1.5 KB in flight per event), from several panes, before it writes
#: them: the audit trail gets fewer, larger writes whose batches each cover a narrow range of
#: event ids (an embedded store's commit costs about the index pages it touches).
WRITE_BUFFER_BATCHES = 5


class WriteEvents:
    """Stage 8: the audit trail first, then the events dataset.

    The audit trail comes first: an event another run stored meanwhile with another payload (a
    concurrent run over other inputs) is refused there, and then left out of this run's Parquet as
    a conflicting duplicate.

    ``add`` gathers tables until they hold ``buffer_rows`` rows, then writes them all: one audit
    write, then one Parquet write per key. ``flush`` writes what is gathered; an engine calls it at
    the end of a bundle (an epoch, for a stream), and nothing gathered counts as written before.
    Calling the stage writes one table at once.
    """

    def __init__(self, audit: Sink, events: Sink, buffer_rows: int, raws: RawRecords | None = None) -> None:
        self.audit = audit
        self.events = events
        self.buffer_rows = buffer_rows
        self.raws = raws  # for events without their raw records; None: they keep them
        self._pending: list[tuple[str, pa.Table]] = []
        self._pending_rows = 0

    def __call__(self, key: str, events: pa.Table) -> tuple[list[Keyed], Counts]:
        written = self.add(key, events) + self.flush()
        letters = [letter for _, keyed, _ in written for letter in keyed]
        counts: Counts = {}
        for _, _, more in written:
            for name, value in more.items():
                counts[name] = counts.get(name, 0) + value
        return letters, counts

    def add(self, key: str, events: pa.Table) -> list[tuple[str, list[Keyed], Counts]]:
        """Gather ``events`` under ``key``; write everything gathered once it is enough rows.
        Returns, for each key written, its dead letters and counts (empty until a write)."""
        self._pending.append((key, events))
        self._pending_rows += events.num_rows
        return self.flush() if self._pending_rows >= self.buffer_rows else []

    def flush(self) -> list[tuple[str, list[Keyed], Counts]]:
        """Write everything gathered: the audit trail, then each key's Parquet."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return []
        audited = self.audit.write(pending[0][0], pa.concat_tables(table for _, table in pending))
        refused = pa.array(audited.refused, pa.string())
        results = []
        for i, (key, events) in enumerate(pending):
            conflicts: list[DeadLetter] = []
            if len(refused):
                clash = pc.is_in(events.column("event_id"), value_set=refused)
                rows = np.flatnonzero(clash.to_numpy(zero_copy_only=False))
                conflicts = self._conflicts(events.take(pa.array(rows, pa.int64())))
                events = events.filter(pc.invert(clash))
            self.events.write(key, events)
            cost = pc.sum(events.column("cost")).as_py()
            counts = (audited.counts if i == 0 else {}) | {
                "events_processed": events.num_rows,
                "rate_limited": pc.sum(events.column("rate_limited")).as_py() or 0,
                "unpriced_events": events.column("cost").null_count,
                "cost_total_micros": int(cost.scaleb(6)) if cost is not None else 0,
            }
            results.append((key, dead_letter_files(conflicts), counts))
        return results

    def _conflicts(self, clashing: pa.Table) -> list[DeadLetter]:
        """The dead letters of events another run stored meanwhile with another payload, their
        raw records read back first if they travel without them."""
        if RAW not in clashing.column_names:
            if self.raws is None:
                raise RuntimeError(
                    "events reached the sinks without their raw records, and no way to read them back"
                )
            clashing = clashing.append_column(RAW, self.raws(clashing))
        return stored_conflicts(clashing, np.arange(clashing.num_rows), "another run at the same time")


class WriteViolations:
    """Stage 8: rate-limit violations to their dataset."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __call__(self, key: str, violations: pa.Table) -> Counts:
        self.sink.write(key, violations)
        return {"rate_limit_violations": violations.num_rows}


class WriteDeadLetters:
    """Stage 8: one file of dead letters, sorted by source position; counts by reason."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __call__(self, key: str, tables: Iterable[pa.Table]) -> Counts:
        letters = sorted_by_position(pa.concat_tables(tables))
        self.sink.write(key, letters)
        reasons = Counter(letters.column("reason").to_pylist())
        return {"events_dead_lettered": letters.num_rows} | {
            f"dead_letter.{reason}": n for reason, n in reasons.items()
        }
