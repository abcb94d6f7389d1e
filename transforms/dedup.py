"""Duplicate rule: one event per ``event_id``.

An ``event_id`` seen again with an identical event (equal after parsing) collapses into the
first copy. A copy that differs is a ``conflicting_duplicate`` dead letter. The first copy in
input order (input position on the command line, then line number) is the one kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dead_letter import DeadLetter, Reason
from transforms.event_batch import FINGERPRINT, ORDER, RAW


@dataclass
class Deduplicated:
    """Events with one row per ``event_id``, what was rejected, and how many copies collapsed."""

    events: pa.Table
    conflicts: list[DeadLetter]
    collapsed: int


def collapse_duplicates(events: pa.Table) -> Deduplicated:
    """Apply the duplicate rule to a table holding *every* copy of each of its event_ids.

    The caller guarantees that (e.g. by grouping on a shard of ``event_id``); the result is
    then independent of how the copies were batched or ordered on arrival.
    """
    if events.num_rows == 0:
        return Deduplicated(events, [], 0)
    order = pc.sort_indices(
        events, sort_keys=[("event_id", "ascending"), (ORDER, "ascending"), ("line_no", "ascending")]
    )
    ordered = events.take(order)
    ids = ordered.column("event_id")
    starts = np.ones(ordered.num_rows, dtype=bool)
    if ordered.num_rows > 1:
        starts[1:] = pc.not_equal(ids.slice(1), ids.slice(0, ordered.num_rows - 1)).to_numpy(
            zero_copy_only=False
        )
    if starts.all():
        return Deduplicated(ordered, [], 0)

    # Index of the first copy of each row's event_id, to compare fingerprints with it.
    first = np.maximum.accumulate(np.where(starts, np.arange(ordered.num_rows), 0))
    fingerprints = ordered.column(FINGERPRINT).combine_chunks()
    same = pc.equal(fingerprints, fingerprints.take(pa.array(first))).to_numpy(zero_copy_only=False)
    conflict_rows = np.flatnonzero(~starts & ~same)
    collapsed = int(np.count_nonzero(~starts & same))

    conflicts = []
    if conflict_rows.size:
        rejected = ordered.take(pa.array(conflict_rows)).select(
            ["source", "line_no", RAW, "event_id", "event_time"]
        )
        kept_at = ordered.take(pa.array(first[conflict_rows])).select(["source", "line_no"])
        for row, keeper in zip(rejected.to_pylist(), kept_at.to_pylist(), strict=True):
            conflicts.append(
                DeadLetter(
                    source=row["source"],
                    line_no=row["line_no"],
                    raw=row[RAW],
                    reason=Reason.CONFLICTING_DUPLICATE,
                    detail=(
                        f"event_id {row['event_id'][:128]!r} was first seen at "
                        f"{keeper['source']}:{keeper['line_no']} with a different payload"
                    ),
                    event_id=row["event_id"],
                    event_time=row["event_time"],
                )
            )
    return Deduplicated(ordered.filter(pa.array(starts)), conflicts, collapsed)


def split_stored_conflicts(
    events: pa.Table, stored: Mapping[str, bytes | None]
) -> tuple[pa.Table, list[DeadLetter]]:
    """Apply the duplicate rule against rows an earlier run stored.

    ``stored`` maps event ids already in the audit trail to their payload fingerprints. An event
    whose stored fingerprint equals its own is an identical replay and stays (the keyed sinks
    change nothing); one whose fingerprint differs is a ``conflicting_duplicate``. A stored row
    without a fingerprint (written before fingerprints were kept) is never called conflicting.
    """
    if not stored or events.num_rows == 0:
        return events, []
    stored_ids = pa.array(list(stored), pa.string())
    stored_fingerprints = pa.array(list(stored.values()), pa.binary(16))
    # The stored fingerprint of each event's id: NULL where not stored, or stored without one.
    theirs = pc.take(stored_fingerprints, pc.index_in(events.column("event_id"), value_set=stored_ids))
    mask = pc.fill_null(pc.not_equal(theirs, events.column(FINGERPRINT)), False)
    if not pc.any(mask).as_py():
        return events, []
    rejected = events.filter(mask).select(["source", "line_no", RAW, "event_id", "event_time"])
    letters = [
        DeadLetter(
            source=row["source"],
            line_no=row["line_no"],
            raw=row[RAW],
            reason=Reason.CONFLICTING_DUPLICATE,
            detail=f"event_id {row['event_id'][:128]!r} was stored by an earlier run with another payload",
            event_id=row["event_id"],
            event_time=row["event_time"],
        )
        for row in rejected.to_pylist()
    ]
    return events.filter(pc.invert(mask)), letters
