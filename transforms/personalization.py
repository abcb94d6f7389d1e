"""Personalization features: one ``user_features`` row per user and event-time tumbling window.

:class:`UserFeatureWindows` has the shape of Beam's ``CombineFn`` (create, add, merge, extract),
so Beam (over a user shard's pane) and Bytewax (over a stream) run the very same code. Its
accumulator keeps, per (user, window), counts, the cost in integer micro-dollars (exact) and the
float64 sum of the prompt vectors, so partial accumulators merge in any order to the same
counts and cost, and to vectors equal within rounding.

The interest vector is the normalised mean of a window's prompt vectors. ``drift`` compares it
with the user's previous window that has one (a window without prompts is skipped, not a reset);
``affinity`` compares it with the user's declared preferences (:func:`prefs_vector`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.topics import TopicIndex, row_cosines, unit_rows
from transforms.windows import TumblingWindows

_EVENT_COLUMNS = ("user_id", "event_time", "operation_type", "modality", "cost")
_COUNTS = ("events", "text_events", "image_events", "unpriced_events", "prompts_embedded")


@dataclass(slots=True)
class WindowAggregate:
    """What one user's events in one window add up to so far."""

    events: int = 0
    text_events: int = 0
    image_events: int = 0
    cost_micros: int = 0
    unpriced_events: int = 0
    prompts_embedded: int = 0
    #: Events with a moderation decision, and those flagged or rejected: the flag rate.
    moderated: int = 0
    flagged: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    #: The float64 sum of the prompt vectors; ``None`` while there are none.
    vector_sum: np.ndarray | None = None

    def absorb(self, other: WindowAggregate) -> None:
        """Add ``other``'s counts, cost and vectors to this one (``other`` is left as it was)."""
        self.events += other.events
        for operation, count in other.by_operation.items():
            self.by_operation[operation] = self.by_operation.get(operation, 0) + count
        self.text_events += other.text_events
        self.image_events += other.image_events
        self.cost_micros += other.cost_micros
        self.unpriced_events += other.unpriced_events
        self.prompts_embedded += other.prompts_embedded
        self.moderated += other.moderated
        self.flagged += other.flagged
        if other.vector_sum is not None:
            self.vector_sum = (
                other.vector_sum.copy() if self.vector_sum is None else self.vector_sum + other.vector_sum
            )


@dataclass
class FeatureAccumulator:
    """Partial aggregates keyed by ``(user_id, window_start)``, the start in µs since the epoch."""

    windows: dict[tuple[int, int], WindowAggregate] = field(default_factory=dict)

    def window(self, key: tuple[int, int]) -> WindowAggregate:
        """The aggregate of one (user, window), created empty on first use."""
        aggregate = self.windows.get(key)
        if aggregate is None:
            aggregate = self.windows[key] = WindowAggregate()
        return aggregate

    def pop_closed(self, watermark_us: int, size_us: int) -> FeatureAccumulator:
        """Take out the windows that ended at or before ``watermark_us`` (a stream closing them).

        >>> acc = FeatureAccumulator({(1, 0): WindowAggregate(events=2), (1, 60): WindowAggregate()})
        >>> sorted(acc.pop_closed(60, 60).windows), sorted(acc.windows)
        ([(1, 0)], [(1, 60)])
        """
        closed = {key: agg for key, agg in self.windows.items() if key[1] + size_us <= watermark_us}
        for key in closed:
            del self.windows[key]
        return FeatureAccumulator(closed)


class UserFeatureWindows:
    """The ``user_features`` rows of each (user, event-time window), as a CombineFn-shaped object.

    >>> from datetime import datetime, timezone
    >>> import schemas
    >>> fn = UserFeatureWindows(3600, schemas.arrow_schema("user_features"))
    >>> events = pa.table({
    ...     "user_id": [7, 7, 7],
    ...     "event_time": pa.array([datetime(2024, 5, 1, 9, m, tzinfo=timezone.utc) for m in (0, 30, 59)],
    ...                            pa.timestamp("us", tz="UTC")),
    ...     "operation_type": ["chat", "chat", "image_gen"],
    ...     "modality": ["text", "text", "image"],
    ...     "cost": pa.array([Decimal("0.0015"), Decimal("0.0025"), None], pa.decimal128(10, 6))})
    >>> prompts = np.full((3, fn.dim), np.nan, dtype=np.float32)
    >>> prompts[0], prompts[1] = np.eye(fn.dim)[0], np.eye(fn.dim)[1]
    >>> acc = fn.add_batch(fn.create_accumulator(), events, prompts)
    >>> topics = TopicIndex(("cooking", "travel"), np.eye(2, fn.dim, dtype=np.float32))
    >>> row = fn.extract_output(acc, topics=topics, prefs={}).to_pylist()[0]
    >>> row["events"], row["events_by_operation"], row["cost"], row["unpriced_events"]
    (3, [('chat', 2), ('image_gen', 1)], Decimal('0.004000'), 1)
    >>> row["prompts_embedded"], [round(x, 4) for x in row["interest_vector"][:3]], row["top_topics"]
    (2, [0.7071, 0.7071, 0.0], ['cooking', 'travel'])

    Args:
        window_seconds: the tumbling windows' length; windows are aligned to the epoch.
        schema: the ``user_features`` dataset's schema; its ``interest_vector`` size is the
            vectors' dimension.
    """

    def __init__(self, window_seconds: int, schema: pa.Schema) -> None:
        self.windows = TumblingWindows(window_seconds)
        self.schema = schema
        vector_type = schema.field("interest_vector").type
        if not isinstance(vector_type, pa.FixedSizeListType):
            raise ValueError(f"user_features.interest_vector must be a fixed-size list, got {vector_type}")
        self.dim: int = vector_type.list_size

    def create_accumulator(self) -> FeatureAccumulator:
        """An accumulator that has seen no event."""
        return FeatureAccumulator()

    def add_batch(
        self, acc: FeatureAccumulator, events: pa.Table, prompt_vectors: np.ndarray
    ) -> FeatureAccumulator:
        """Add a batch of events to ``acc`` (updated in place) and return it; every row counts.

        Grouping is vectorised: Python runs once per (user, window) the batch touches, not per event.

        Args:
            acc: the accumulator to add to.
            events: ``user_id`` int64, ``event_time`` timestamp, ``operation_type`` and
                ``modality`` (``"text"`` or ``"image"``) strings, ``cost`` decimal with at most
                6 places, null when the event is unpriced; an optional ``decision`` (moderation's: the
                flag rate counts flagged and rejected events among those with one); other
                columns are ignored.
            prompt_vectors: ``(events.num_rows, dim)`` floats; a row holding NaN is an event
                without a prompt vector.
        """
        vectors = self._checked(events, prompt_vectors)
        if events.num_rows == 0:
            return acc
        users = events.column("user_id").to_numpy()
        starts = self.windows.starts(events.column("event_time"))
        keys, group = np.unique(np.column_stack([users, starts]), axis=0, return_inverse=True)
        for (user, start), aggregate in zip(
            keys.tolist(), _aggregate(events, vectors, group.reshape(-1), len(keys)), strict=True
        ):
            acc.window((user, start)).absorb(aggregate)
        return acc

    def merge_accumulators(self, accs: Iterable[FeatureAccumulator]) -> FeatureAccumulator:
        """One accumulator holding everything ``accs`` hold; the inputs are left unchanged."""
        merged = FeatureAccumulator()
        for acc in accs:
            for key, aggregate in acc.windows.items():
                merged.window(key).absorb(aggregate)
        return merged

    def extract_output(
        self,
        acc: FeatureAccumulator,
        *,
        topics: TopicIndex,
        prefs: Mapping[int, np.ndarray],
        previous: Mapping[int, np.ndarray] | None = None,
    ) -> pa.Table:
        """The ``user_features`` rows of ``acc``, sorted by ``(user_id, window_start)``.

        Drift and affinity are computed from the interest vectors as written (float32), so a
        window's drift is the same whether its predecessor is in ``acc`` or in ``previous``.

        Args:
            acc: the windows to write out; they should be complete (the pane's watermark passed).
            topics: the index that names each interest vector's top 3 topics.
            prefs: each user's declared preferences vector (:func:`prefs_vector`); a user
                missing here has a NULL ``affinity``.
            previous: each user's last interest vector before ``acc``'s windows (from
                :func:`last_interest_vectors` of an earlier pane); a user missing here starts
                with a NULL ``drift``.
        """
        keys = sorted(acc.windows)
        starts = np.array([start for _, start in keys], dtype=np.int64)
        aggregates = [acc.windows[key] for key in keys]
        timestamp = pa.timestamp("us", tz="UTC")
        columns = {
            "user_id": pa.array([user for user, _ in keys], pa.int64()),
            "window_start": pa.array(starts, timestamp),
            "window_end": pa.array(starts + self.windows.size_us, timestamp),
            **{name: pa.array([getattr(a, name) for a in aggregates], pa.int64()) for name in _COUNTS},
            "events_by_operation": pa.array(
                [sorted(a.by_operation.items()) for a in aggregates], self._type("events_by_operation")
            ),
            "cost": pa.array([Decimal(a.cost_micros).scaleb(-6) for a in aggregates], self._type("cost")),
            "flag_rate": pa.array(
                [a.flagged / a.moderated if a.moderated else None for a in aggregates], pa.float64()
            ),
            **self._vector_columns(keys, aggregates, topics, prefs, previous),
        }
        return pa.Table.from_arrays([columns[name] for name in self.schema.names], schema=self.schema)

    def _vector_columns(
        self,
        keys: list[tuple[int, int]],
        aggregates: list[WindowAggregate],
        topics: TopicIndex,
        prefs: Mapping[int, np.ndarray],
        previous: Mapping[int, np.ndarray] | None,
    ) -> dict[str, pa.Array]:
        """``interest_vector``, ``top_topics``, ``drift`` and ``affinity`` of sorted windows."""
        users = np.array([user for user, _ in keys], dtype=np.int64)
        sums = np.zeros((len(keys), self.dim))
        for row, aggregate in enumerate(aggregates):
            if aggregate.vector_sum is not None:
                sums[row] = aggregate.vector_sum
        unit, has_vector = unit_rows(sums)
        interest = unit.astype(np.float32)  # NaN rows: no interest vector
        drift = 1.0 - row_cosines(interest, _previous_interest(users, interest, previous, self.dim))
        affinity = row_cosines(interest, self._declared(users, prefs))
        return {
            "interest_vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.where(has_vector[:, None], interest, 0).reshape(-1), pa.float32()),
                type=self._type("interest_vector"),
                mask=pa.array(~has_vector),
            ),
            "top_topics": pa.array(topics.top(interest)[0], self._type("top_topics")),
            # from_pandas: NaN (no vector to compare) is written as NULL.
            "drift": pa.array(drift, pa.float64(), from_pandas=True),
            "affinity": pa.array(affinity, pa.float64(), from_pandas=True),
        }

    def _type(self, column: str) -> pa.DataType:
        return self.schema.field(column).type

    def _declared(self, users: np.ndarray, prefs: Mapping[int, np.ndarray]) -> np.ndarray:
        """Each row's user's preferences vector; NaN for a user without one."""
        distinct, which = np.unique(users, return_inverse=True)
        declared = np.full((len(distinct), self.dim), np.nan)
        for i, user in enumerate(distinct.tolist()):
            vector = prefs.get(user)
            if vector is not None:
                declared[i] = self._user_vector(vector, "prefs", user)
        rows: np.ndarray = declared[which.reshape(-1)]
        return rows

    def _user_vector(self, vector: np.ndarray, argument: str, user: int) -> np.ndarray:
        return _user_vector(vector, argument, user, self.dim)

    def _checked(self, events: pa.Table, prompt_vectors: np.ndarray) -> np.ndarray:
        missing = [name for name in _EVENT_COLUMNS if name not in events.column_names]
        if missing:
            raise ValueError(
                f"user features: events lack the column(s) {missing}; have {events.column_names}"
            )
        for name in ("user_id", "operation_type"):
            if events.column(name).null_count:
                raise ValueError(f"user features: {events.column(name).null_count} events have no {name}")
        cost_type = events.schema.field("cost").type
        if not isinstance(cost_type, pa.Decimal128Type) or cost_type.scale > 6:
            raise ValueError(f"user features: cost must be decimal128 with <= 6 places, got {cost_type}")
        vectors = np.asarray(prompt_vectors)
        if vectors.shape != (events.num_rows, self.dim):
            raise ValueError(
                f"user features: expected prompt_vectors of shape ({events.num_rows}, {self.dim}),"
                f" one row per event; got {vectors.shape}"
            )
        return vectors


def with_drift(features: pa.Table, previous: Mapping[int, np.ndarray] | None = None) -> pa.Table:
    """``features`` (``user_features`` rows of several panes) sorted by (user_id, window_start),
    with drift recomputed across all of them; ``previous`` as for ``extract_output``.

    Panes extracted one by one know nothing of a user's windows in earlier panes; a batch engine
    gathers a user shard's rows and calls this, a stream carries ``last_interest_vectors`` instead.
    Both give the drift of one pass.
    """
    ordered = features.sort_by([("user_id", "ascending"), ("window_start", "ascending")])
    size = ordered.schema.field("interest_vector").type.list_size
    column = ordered.column("interest_vector").combine_chunks()
    filled = pc.fill_null(column, pa.scalar([np.nan] * size, column.type))
    interest = filled.flatten().to_numpy(zero_copy_only=False).reshape(-1, size).astype(np.float64)
    users = ordered.column("user_id").to_numpy()
    drift = 1.0 - row_cosines(interest, _previous_interest(users, interest, previous, size))
    index = ordered.schema.get_field_index("drift")
    return ordered.set_column(index, "drift", pa.array(drift, pa.float64(), from_pandas=True))


def _previous_interest(
    users: np.ndarray, interest: np.ndarray, previous: Mapping[int, np.ndarray] | None, dim: int
) -> np.ndarray:
    """For each row (sorted by user, then time), the interest vector of the user's previous
    window that has one: within these rows, else ``previous``; NaN when there is none."""
    rows = np.arange(len(users))
    with_vector = np.where(~np.isnan(interest).any(axis=1), rows, -1)
    before = np.roll(np.maximum.accumulate(with_vector), 1) if len(rows) else rows
    before[:1] = -1
    first_of_user = np.ones(len(users), dtype=bool)
    first_of_user[1:] = users[1:] != users[:-1]
    first_of_user = np.maximum.accumulate(np.where(first_of_user, rows, 0))
    found = before >= first_of_user
    earlier = np.full(interest.shape, np.nan)
    earlier[found] = interest[before[found]]
    for row in np.flatnonzero(~found & (with_vector >= 0)).tolist():  # at most one per user
        vector = (previous or {}).get(int(users[row]))
        if vector is not None:
            earlier[row] = _user_vector(vector, "previous", int(users[row]), dim)
    return earlier


def _user_vector(vector: np.ndarray, argument: str, user: int, dim: int) -> np.ndarray:
    if np.shape(vector) != (dim,):
        raise ValueError(f"{argument}[{user}]: expected shape ({dim},), got {np.shape(vector)}")
    return np.asarray(vector, dtype=np.float64)


def last_interest_vectors(
    features: pa.Table, previous: Mapping[int, np.ndarray] | None = None
) -> dict[int, np.ndarray]:
    """Each user's latest interest vector: from ``features`` (``user_features`` rows), else
    ``previous``; pass the result as ``previous`` to the next pane's ``extract_output``.

    A user whose windows in ``features`` have no interest vector keeps the one in ``previous``.
    """
    size = features.schema.field("interest_vector").type.list_size
    ordered = features.filter(pc.is_valid(features.column("interest_vector"))).sort_by(
        [("user_id", "ascending"), ("window_start", "ascending")]
    )
    users = ordered.column("user_id").to_numpy()
    vectors = ordered.column("interest_vector").combine_chunks().flatten().to_numpy()
    last = np.flatnonzero(np.append(users[1:] != users[:-1], True)) if len(users) else users
    latest = vectors.reshape(len(users), size)[last].copy()
    return {**(previous or {}), **dict(zip(users[last].tolist(), latest, strict=True))}


def _aggregate(events: pa.Table, vectors: np.ndarray, group: np.ndarray, n: int) -> list[WindowAggregate]:
    """The aggregates of ``n`` windows from one batch; ``group`` holds each event's window."""

    def count(mask: np.ndarray) -> list[int]:
        counts: list[int] = np.bincount(group[mask], minlength=n).tolist()
        return counts

    def is_modality(name: str) -> np.ndarray:
        matches = pc.fill_null(pc.equal(events.column("modality"), name), False)
        return np.asarray(matches.to_numpy(zero_copy_only=False), dtype=bool)

    costs = events.column("cost")
    priced = np.asarray(costs.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    micros = pc.cast(pc.multiply(costs, pa.scalar(Decimal(10**6), pa.decimal128(7, 0))), pa.int64())
    # int64 is exact here: a batch would need ~10**9 events at the highest cost to overflow.
    cost_micros = np.zeros(n, dtype=np.int64)
    np.add.at(cost_micros, group[priced], np.asarray(pc.fill_null(micros, 0).to_numpy())[priced])
    embedded = ~np.isnan(vectors).any(axis=1)
    moderated, flagged = _moderated(events)
    vector_sums = np.zeros((n, vectors.shape[1]))
    np.add.at(vector_sums, group[embedded], vectors[embedded].astype(np.float64))
    counts = (  # in the order of WindowAggregate's fields
        count(np.ones(len(group), dtype=bool)),
        count(is_modality("text")),
        count(is_modality("image")),
        cost_micros.tolist(),
        count(~priced),
        count(embedded),
        count(moderated),
        count(flagged),
    )
    batch = [WindowAggregate(*window) for window in zip(*counts, strict=True)]
    for aggregate, vector_sum in zip(batch, vector_sums, strict=True):
        aggregate.vector_sum = vector_sum if aggregate.prompts_embedded else None
    pairs = (
        pa.table({"window": group, "operation": events.column("operation_type")})
        .group_by(["window", "operation"])
        .aggregate([([], "count_all")])
    )
    for window, operation, count_all in zip(*(pairs.column(i).to_pylist() for i in range(3)), strict=True):
        batch[window].by_operation[operation] = count_all
    return batch


def _moderated(events: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per event: whether it has a moderation decision, and whether that is flagged or rejected
    (no ``decision`` column, or a null one: moderation was off)."""
    if "decision" not in events.column_names:
        none = np.zeros(events.num_rows, dtype=bool)
        return none, none
    decision = events.column("decision")
    moderated = np.asarray(decision.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    approved = pc.fill_null(pc.equal(decision, "approved"), True).to_numpy(zero_copy_only=False)
    return moderated, moderated & ~np.asarray(approved, dtype=bool)
