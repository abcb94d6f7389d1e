"""Duplicate rule: one event per ``event_id``.

An ``event_id`` seen again with an identical event (equal after parsing) collapses into the
first copy. A copy that differs is a ``conflicting_duplicate`` dead letter. The first copy in
input order (input position on the command line, then line number) is the one kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

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

    The caller guarantees that (e.g. by grouping on a shard of ``event_id``); which rows are kept
    is then independent of how the copies were batched or ordered on arrival. They keep the order
    they came in (a gather in that order copies about twice as fast as one in event_id order).
    """
    if events.num_rows == 0:
        return Deduplicated(events, [], 0)
    order = pc.sort_indices(
        events, sort_keys=[("event_id", "ascending"), (ORDER, "ascending"), ("line_no", "ascending")]
    ).to_numpy()
    # Only the columns the rule reads are put in that order; the table itself is taken once, for
    # the rows it keeps (every column of a row is copied once, and none when all are kept).
    ids = events.column("event_id").take(order)
    starts = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        starts[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(order) - 1)).to_numpy(zero_copy_only=False)
    if starts.all():
        return Deduplicated(events, [], 0)

    # Index of the first copy of each row's event_id, to compare fingerprints with it.
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    fingerprints = events.column(FINGERPRINT).take(order).combine_chunks()
    same = pc.equal(fingerprints, fingerprints.take(pa.array(first))).to_numpy(zero_copy_only=False)
    conflict_rows = np.flatnonzero(~starts & ~same)
    collapsed = int(np.count_nonzero(~starts & same))

    conflicts = []
    if conflict_rows.size:
        rejected = events.take(order[conflict_rows]).select(
            ["source", "line_no", RAW, "event_id", "event_time", ORDER]
        )
        kept_at = events.take(order[first[conflict_rows]]).select(["source", "line_no"])
        for row, keeper in zip(rejected.to_pylist(), kept_at.to_pylist(), strict=True):
            conflicts.append(conflict_with_first_copy(row, keeper["source"], keeper["line_no"]))
    return Deduplicated(events.take(np.sort(order[starts])), conflicts, collapsed)


def conflict_with_first_copy(row: Mapping[str, Any], first_source: str, first_line_no: int) -> DeadLetter:
    """The ``conflicting_duplicate`` dead letter of ``row`` (a dict of the event columns ``source``,
    ``line_no``, the raw record, ``event_id``, ``event_time`` and the input position), naming
    where the first copy of its event_id was."""
    return DeadLetter(
        source=row["source"],
        position=str(row["line_no"]),
        raw=row[RAW],
        reason=Reason.CONFLICTING_DUPLICATE,
        detail=(
            f"event_id {row['event_id'][:128]!r} was first seen at "
            f"{first_source}:{first_line_no} with a different payload"
        ),
        event_id=row["event_id"],
        event_time=row["event_time"],
        source_order=row[ORDER],
    )


#: The column, added before rate limiting, that says an event's audit row is already stored: the
#: audit sink expects no insert for it.
STORED = "_stored"
#: The column that marks an event this output directory already holds from a run of other
#: inputs: it counts towards its window's rate limit, then goes no further.
CONTEXT = "_context"


class Verdict(IntEnum):
    """What the audit trail says of an event with the same ``event_id``."""

    #: Nothing stored under its event_id.
    NEW = 0
    #: Stored with its payload: the same event. A duplicate where this output already holds it.
    STORED = 1
    #: Stored with another payload: a conflicting_duplicate.
    CONFLICT = 2


def judge_against_store(events: pa.Table, stored: Mapping[str, bytes | None]) -> np.ndarray:
    """The :class:`Verdict` on each event (an int8 array) from the payload fingerprints stored
    under its event_id (``stored``; ``None`` for a row stored before fingerprints were kept, which
    never conflicts). Event ids compare exactly: Arrow compares bytes.

    >>> t = pa.table({"event_id": ["a", "b", "c", "d"], FINGERPRINT: [b"1", b"1", b"1", b"1"]})
    >>> [Verdict(v).name for v in judge_against_store(t, {"b": b"1", "c": b"2", "d": None, "A": b"1"})]
    ['NEW', 'STORED', 'CONFLICT', 'STORED']
    """
    verdicts = np.full(events.num_rows, Verdict.NEW, dtype=np.int8)
    if not stored or events.num_rows == 0:
        return verdicts
    at = pc.index_in(events.column("event_id"), value_set=pa.array(list(stored), pa.string()))
    found = pc.is_valid(at).to_numpy(zero_copy_only=False)
    theirs = pc.take(pa.array(list(stored.values()), pa.binary()), at)
    differs = pc.fill_null(pc.not_equal(theirs, events.column(FINGERPRINT).cast(pa.binary())), False)
    verdicts[found] = Verdict.STORED
    verdicts[differs.to_numpy(zero_copy_only=False)] = Verdict.CONFLICT
    return verdicts


def stored_conflicts(events: pa.Table, rows: np.ndarray, why: str) -> list[DeadLetter]:
    """``conflicting_duplicate`` dead letters for ``rows`` of ``events``; ``why`` completes
    "event_id 'x' was stored by ..."."""
    columns = ["source", "line_no", RAW, "event_id", "event_time", ORDER]
    rejected = events.take(pa.array(rows, pa.int64())).select(columns)
    return [
        DeadLetter(
            source=row["source"],
            position=str(row["line_no"]),
            raw=row[RAW],
            reason=Reason.CONFLICTING_DUPLICATE,
            detail=f"event_id {row['event_id'][:128]!r} was stored by {why} with another payload",
            event_id=row["event_id"],
            event_time=row["event_time"],
            source_order=row[ORDER],
        )
        for row in rejected.to_pylist()
    ]
