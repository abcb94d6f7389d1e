"""The spine's steps as engine-free functions on batches, shared by every engine adapter.

Each step calls ``transforms`` for the logic and ``connectors`` for IO, and returns what it
produced plus counts for the run summary. An engine adapter (``beam.py``) only moves batches
between these steps and turns the counts into its own metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

import schemas
from connectors.audit_store import AuditWriter, open_engine
from connectors.config import PipelineConfig
from connectors.images import FolderImageLoader
from connectors.parquet_sink import held_event_ids, partition_dates, write_partitioned
from connectors.sources import InputSplit, read_split
from connectors.users import UserDirectory
from transforms.cost import PriceBook
from transforms.dead_letter import DeadLetter, dead_letter_table
from transforms.dedup import (
    CONTEXT,
    STORED,
    Verdict,
    collapse_duplicates,
    judge_against_store,
    stored_conflicts,
)
from transforms.event_batch import (
    FINGERPRINT,
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
from transforms.sharding import split_by_shard, user_shard
from transforms.tiers import resolve_tiers
from transforms.validate import EventRules

#: The tier of an event that names none and whose user has none (DESIGN.md, stage 3).
DEFAULT_TIER = "free"

#: Dead letters of one source are written in files of at most this many lines of input.
DEAD_LETTER_BUCKET_LINES = 1_000_000

Counts = dict[str, int]
Keyed = tuple[str, pa.Table]

#: Internal columns events carry to the audit sink and no further: the payload fingerprint (for
#: the audit trail), the raw record and input position (for a conflict found at write time) and
#: the stored flag.
_CARRIED = (FINGERPRINT, RAW, ORDER, STORED)


@dataclass(frozen=True)
class RunPlan:
    """What every worker needs to know about the run; small and picklable."""

    run_id: str
    out_dir: str
    audit_url: str = field(repr=False)  # may hold a password: never in a log or an error
    config: PipelineConfig
    fingerprint: str  # of the inputs' contents: names their output files, marks their audit rows
    base_dirs: tuple[str, ...]  # by input order: where each input's image paths resolve
    staging_dir: str  # spilled batches between stages; removed when the run ends
    # Whether the audit trail held rows when the run began: only then can an event conflict with
    # one an earlier run stored (within a run, each event_id reaches exactly one shard).
    compare_with_store: bool = True


class SpineSteps:
    """The spine's steps for one worker; heavy members are built once, on first use."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.out_dir = Path(plan.out_dir)

    @cached_property
    def _settings(self) -> EnrichSettings:
        config = self.plan.config
        return EnrichSettings(
            rules=EventRules.from_json_schema(schemas.event_json_schema()),
            prices=PriceBook.from_rows(schemas.pricing_rows(config.pricing_path)),
            hasher=ContentHasher(config.hmac_key()),
            shards=config.shards,
        )

    @cached_property
    def _in_flight(self) -> pa.Schema:
        return in_flight_schema(schemas.arrow_schema("events"))

    @cached_property
    def _engine(self) -> sa.Engine:
        return open_engine(self.plan.audit_url)

    @cached_property
    def _audit(self) -> AuditWriter:
        config = self.plan.config
        return AuditWriter(
            self._engine, config.audit_batch_rows, config.audit_retry_attempts, self.plan.fingerprint
        )

    @cached_property
    def _users(self) -> UserDirectory:
        config = self.plan.config
        return UserDirectory(
            self._engine,
            ttl_seconds=config.users_ttl_seconds,
            retry_attempts=config.audit_retry_attempts,
            tiers=frozenset(config.quotas),
        )

    def read(self, split: InputSplit) -> Iterable[InputRecords]:
        """Batches of raw records from one input split."""
        return read_split(split, self.plan.config.batch_size, self._settings.rules)

    def enrich(self, records: InputRecords) -> tuple[list[tuple[int, pa.Table]], list[Keyed], Counts]:
        """Validate, hash and price; split valid events by ``event_id`` shard."""
        loader = FolderImageLoader(
            self.plan.base_dirs[records.source_order], self._settings.rules.image_max_bytes
        )
        batch = enrich_records(records, self._settings, loader, self._in_flight)
        counts = {"events_read": len(records.raws), "blank_lines": records.blank_lines}
        shards = list(split_by_shard(batch.events, batch.events.column(SHARD)))
        return shards, self._dead_letter_groups(batch.dead_letters), counts

    def collapse(self, tables: Iterable[pa.Table]) -> tuple[list[tuple[int, pa.Table]], list[Keyed], Counts]:
        """Apply the duplicate rule to every copy of a shard's event_ids, then against the rows an
        earlier run stored; re-split by user."""
        result = collapse_duplicates(pa.concat_tables(tables))
        events = result.events.drop_columns([SHARD])
        verdicts = np.zeros(events.num_rows, dtype=np.int8)
        held = np.zeros(events.num_rows, dtype=bool)
        if self.plan.compare_with_store:
            stored = self._audit.stored_fingerprints(events.column("event_id").to_pylist())
            verdicts = judge_against_store(events, stored)
            held = self._held_here(events, verdicts)
        conflicts = stored_conflicts(events, np.flatnonzero(verdicts == Verdict.CONFLICT), "an earlier run")
        keep = verdicts != Verdict.CONFLICT
        events = (
            events.filter(pa.array(keep))
            .append_column(STORED, pa.array(verdicts[keep] != Verdict.NEW))
            .append_column(CONTEXT, pa.array(held[keep]))
        )
        by_user = list(split_by_shard(events, user_shard(events, self.plan.config.shards)))
        counts = {"duplicates_collapsed": result.collapsed + int(np.count_nonzero(held))}
        return by_user, self._dead_letter_groups(result.conflicts + conflicts), counts

    def _held_here(self, events: pa.Table, verdicts: np.ndarray) -> np.ndarray:
        """Which stored events this output directory already holds in files of other inputs'
        runs: those are duplicates here. One stored but held nowhere here (its run was killed
        before its Parquet, or wrote into another directory) is written by this run, and one held
        only in this run's own files is rewritten in place."""
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
        found = held_event_ids(self.out_dir, wanted, other_than=self.plan.fingerprint)
        held[rows] = [event_id in found for event_id in ids]
        return held

    def rate_limit(self, tables: Iterable[pa.Table]) -> tuple[pa.Table, pa.Table]:
        """Resolve one user shard's tiers from the users table, then flag events past quota; rows
        come out in a deterministic order, in the events dataset's schema plus the internal
        columns the audit sink needs. Events this output already holds count towards their
        window's quota, then are left out."""
        events = pa.concat_tables(tables)
        untiered = pc.unique(pc.filter(events.column("user_id"), pc.is_null(events.column("ai_tier"))))
        profiles = self._users.profiles(untiered.to_pylist())
        events = resolve_tiers(events, {uid: p.tier for uid, p in profiles.items()}, DEFAULT_TIER)
        limits = RateLimits(self.plan.config.quotas, self.plan.config.window_seconds)
        result = apply_rate_limits(events, limits, schemas.arrow_schema("rate_limit_violations"))
        context = result.events.column(CONTEXT)
        written = result.events.filter(pc.invert(context)) if pc.any(context).as_py() else result.events
        ordered = written.sort_by(
            [("user_id", "ascending"), ("event_time", "ascending"), ("event_id", "ascending")]
        )
        schema = schemas.arrow_schema("events")
        flagged = ordered.select(schema.names).cast(schema)
        for internal in _CARRIED:
            flagged = flagged.append_column(internal, ordered.column(internal))
        return flagged, result.violations

    def write_events(self, shard: int, events: pa.Table) -> tuple[list[Keyed], Counts]:
        """Write one user shard's events to the audit store, then to Parquet.

        The audit store comes first: an event another run stored meanwhile with another payload
        (a concurrent run over other inputs) is then left out of this run's Parquet, as a
        conflicting duplicate.
        """
        outcome = self._audit.write(events)
        conflicts: list[DeadLetter] = []
        if outcome.conflicting:
            clash = pc.is_in(events.column("event_id"), value_set=pa.array(outcome.conflicting, pa.string()))
            rows = np.flatnonzero(clash.to_numpy(zero_copy_only=False))
            conflicts = stored_conflicts(events, rows, "another run at the same time")
            events = events.filter(pc.invert(clash))
        parquet = events.drop_columns(list(_CARRIED))
        write_partitioned(parquet, self.out_dir, "events", self._stem(f"{shard:04d}"), "event_time")
        cost = pc.sum(parquet.column("cost")).as_py()
        counts = {
            "audit_rows_inserted": outcome.inserted,
            "events_processed": parquet.num_rows,
            "rate_limited": pc.sum(parquet.column("rate_limited")).as_py() or 0,
            "unpriced_events": parquet.column("cost").null_count,
            "cost_total_micros": int(cost.scaleb(6)) if cost is not None else 0,
        }
        return self._dead_letter_groups(conflicts), counts

    def write_violations(self, shard: int, violations: pa.Table) -> Counts:
        """Write one user shard's rate-limit violations to Parquet."""
        write_partitioned(
            violations, self.out_dir, "rate_limit_violations", self._stem(f"{shard:04d}"), "window_start"
        )
        return {"rate_limit_violations": violations.num_rows}

    def write_dead_letters(self, key: str, tables: Iterable[pa.Table]) -> Counts:
        """Write one bucket of dead letters, sorted by source position; count them by reason."""
        letters = pa.concat_tables(tables).sort_by([("source", "ascending"), ("line_no", "ascending")])
        write_partitioned(letters, self.out_dir, "dead_letter", self._stem(key), "event_time")
        reasons = Counter(letters.column("reason").to_pylist())
        return {"events_dead_lettered": letters.num_rows} | {
            f"dead_letter.{reason}": n for reason, n in reasons.items()
        }

    def _stem(self, suffix: str) -> str:
        return f"{self.plan.fingerprint}-{suffix}"

    def _dead_letter_groups(self, letters: list[DeadLetter]) -> list[Keyed]:
        """Dead letters keyed by (input position, bucket of lines): each bucket becomes one file."""
        if not letters:
            return []
        groups: dict[str, list[DeadLetter]] = {}
        for letter in letters:
            key = f"{letter.source_order:04d}-{letter.line_no // DEAD_LETTER_BUCKET_LINES:04d}"
            groups.setdefault(key, []).append(letter)
        schema = schemas.arrow_schema("dead_letter")
        return [(key, dead_letter_table(group, schema)) for key, group in sorted(groups.items())]
