"""Personalization features: one ``user_features`` row per user and event-time window.

Vectors are hand-made from the unit vectors ``e(i)``, so every cosine has a known value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from transforms.personalization import FeatureAccumulator, UserFeatureWindows, last_interest_vectors
from transforms.topics import TopicIndex, prefs_topics, prefs_vector

SCHEMA = schemas.arrow_schema("user_features")
DIM = 384
T0 = datetime(2024, 5, 1, tzinfo=UTC)  # an hour boundary
HOUR = timedelta(hours=1)
TOPICS = TopicIndex(("cooking", "travel", "music", "sport"), np.eye(4, DIM, dtype=np.float32))
COS_45 = 1 / math.sqrt(2)


def e(*weights: float) -> np.ndarray:
    """The vector whose first coordinates are ``weights``: ``e(0, 1)`` is the second unit vector."""
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector


@dataclass
class Event:
    user_id: int
    at: datetime
    operation_type: str = "chat"
    modality: str = "text"
    cost: str | None = "0.001000"
    prompt: np.ndarray | None = None
    decision: str | None = None


def batch(*events: Event) -> tuple[pa.Table, np.ndarray]:
    """The events as ``add_batch`` takes them, with a column it must ignore."""
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(len(events))],
            "user_id": pa.array([ev.user_id for ev in events], pa.int64()),
            "event_time": pa.array([ev.at for ev in events], pa.timestamp("us", tz="UTC")),
            "operation_type": [ev.operation_type for ev in events],
            "modality": [ev.modality for ev in events],
            "cost": pa.array(
                [None if ev.cost is None else Decimal(ev.cost) for ev in events], pa.decimal128(10, 6)
            ),
            "decision": pa.array([ev.decision for ev in events], pa.string()),
        }
    )
    vectors = np.full((len(events), DIM), np.nan, dtype=np.float32)
    for row, ev in enumerate(events):
        if ev.prompt is not None:
            vectors[row] = ev.prompt
    return table, vectors


def features(*events: Event, window_seconds: int = 3600, **extract: Any) -> list[dict[str, Any]]:
    fn = UserFeatureWindows(window_seconds, SCHEMA)
    acc = fn.add_batch(fn.create_accumulator(), *batch(*events))
    table = fn.extract_output(acc, **{"topics": TOPICS, "prefs": {}, **extract})
    assert table.schema == SCHEMA
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def test_a_window_counts_its_events_by_operation_and_by_modality() -> None:
    (row,) = features(
        Event(1, T0, "chat", "text"),
        Event(1, T0 + timedelta(minutes=10), "chat", "text"),
        Event(1, T0 + timedelta(minutes=20), "image_gen", "image"),
        Event(1, T0 + timedelta(minutes=59, seconds=59), "embed", "text"),
    )
    assert (row["user_id"], row["window_start"], row["window_end"]) == (1, T0, T0 + HOUR)
    assert row["events"] == 4
    assert dict(row["events_by_operation"]) == {"chat": 2, "image_gen": 1, "embed": 1}
    assert (row["text_events"], row["image_events"]) == (3, 1)
    assert row["flag_rate"] is None  # no decisions: moderation was off


def test_cost_is_the_exact_sum_of_priced_costs_and_null_costs_count_as_unpriced() -> None:
    costs = ["0.100000", "0.200000", "9999.999999", "0.000001", None, "0.333333", None] * 7
    (row,) = features(*(Event(1, T0 + timedelta(seconds=i), cost=c) for i, c in enumerate(costs)))
    assert row["cost"] == sum(Decimal(c) for c in costs if c is not None)
    assert row["cost"] == Decimal("70004.433331")
    assert row["unpriced_events"] == 14


def test_the_interest_vector_is_the_normalised_mean_of_the_windows_prompt_vectors() -> None:
    (row,) = features(
        Event(1, T0, prompt=e(4, 0)),
        Event(1, T0 + timedelta(minutes=1), prompt=e(0, 1)),
        Event(1, T0 + timedelta(minutes=2), prompt=e(0, 1)),
        Event(1, T0 + timedelta(minutes=3)),  # no prompt vector: counts as an event, not a prompt
    )
    assert (row["events"], row["prompts_embedded"]) == (4, 3)
    # mean (4/3, 2/3) points along (2, 1)
    assert row["interest_vector"][:3] == pytest.approx([2 / math.sqrt(5), 1 / math.sqrt(5), 0], abs=1e-7)
    assert len(row["interest_vector"]) == DIM


def test_an_event_exactly_at_window_end_belongs_to_the_next_window() -> None:
    first, second = features(Event(1, T0 + HOUR - timedelta(microseconds=1)), Event(1, T0 + HOUR))
    assert (first["window_start"], first["window_end"], first["events"]) == (T0, T0 + HOUR, 1)
    assert (second["window_start"], second["window_end"], second["events"]) == (T0 + HOUR, T0 + 2 * HOUR, 1)


def test_windows_are_aligned_to_the_epoch_and_their_length_is_configurable() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    (row,) = features(Event(1, epoch + timedelta(seconds=1000)), window_seconds=420)
    assert (row["window_start"], row["window_end"]) == (
        epoch + timedelta(seconds=840),
        epoch + timedelta(seconds=1260),
    )


def test_rows_are_sorted_by_user_then_window_start() -> None:
    rows = features(Event(2, T0 + HOUR), Event(1, T0 + HOUR), Event(2, T0), Event(1, T0 + 3 * HOUR))
    assert [(r["user_id"], r["window_start"]) for r in rows] == [
        (1, T0 + HOUR),
        (1, T0 + 3 * HOUR),
        (2, T0),
        (2, T0 + HOUR),
    ]


def test_top_topics_are_the_interest_vectors_three_nearest_topics_best_first() -> None:
    (row,) = features(Event(1, T0, prompt=e(2, 3, 1, 0)))
    assert row["top_topics"] == ["travel", "cooking", "music"]


def test_top_ranks_every_row_in_one_call_and_gives_none_where_a_row_has_no_direction() -> None:
    rows = np.stack([e(0, 0, 1, 5), e(), np.full(DIM, np.nan, dtype=np.float32), e(1, 1)])
    labels, cosines = TOPICS.top(rows, k=2)
    assert labels == [["sport", "music"], None, None, ["cooking", "travel"]]  # a tie keeps label order
    assert cosines[0] == pytest.approx([5 / math.sqrt(26), 1 / math.sqrt(26)])
    assert cosines[1] is None and cosines[2] is None
    assert cosines[3] == pytest.approx([COS_45, COS_45])


def test_top_ranks_every_topic_when_there_are_fewer_than_k() -> None:
    labels, _ = TOPICS.top(e(1, 2, 3, 4)[None, :], k=10)
    assert labels == [["sport", "music", "travel", "cooking"]]


def test_a_topic_index_stores_its_vectors_normalised_and_rejects_a_zero_vector() -> None:
    index = TopicIndex(("a", "b"), np.stack([e(3, 4), e(0, 0, 2)]))
    assert np.linalg.norm(index.vectors, axis=1) == pytest.approx([1, 1])
    with pytest.raises(ValueError, match=r"\['b'\] are zero"):
        TopicIndex(("a", "b"), np.stack([e(1), e()]))


def test_drift_is_one_minus_the_cosine_to_the_users_previous_window_and_null_for_the_first() -> None:
    rows = features(Event(1, T0, prompt=e(1, 0)), Event(1, T0 + HOUR, prompt=e(1, 1)))
    assert rows[0]["drift"] is None
    assert rows[1]["drift"] == pytest.approx(1 - COS_45, abs=1e-6)


def test_drift_compares_windows_of_the_same_user_only() -> None:
    rows = features(Event(1, T0, prompt=e(1, 0)), Event(2, T0 + HOUR, prompt=e(0, 1)))
    assert [r["drift"] for r in rows] == [None, None]


def test_a_window_without_prompt_vectors_has_no_interest_and_does_not_reset_drift() -> None:
    rows = features(
        Event(1, T0, prompt=e(1, 0)),
        Event(1, T0 + HOUR),
        Event(1, T0 + 2 * HOUR, prompt=e(0, 1)),
    )
    quiet = rows[1]
    assert (quiet["prompts_embedded"], quiet["interest_vector"], quiet["top_topics"]) == (0, None, None)
    assert quiet["drift"] is None and quiet["affinity"] is None
    assert rows[2]["drift"] == pytest.approx(1.0, abs=1e-6)  # orthogonal to the window before the gap


def test_drift_starts_from_the_previous_panes_last_vector() -> None:
    (row,) = features(Event(1, T0, prompt=e(1, 1)), previous={1: e(1, 0), 2: e(0, 1)})
    assert row["drift"] == pytest.approx(1 - COS_45, abs=1e-6)


def test_panes_carried_by_last_interest_vectors_give_the_drift_of_one_pass() -> None:
    events = [
        Event(1, T0, prompt=e(1, 0)),
        Event(2, T0, prompt=e(0, 1)),
        Event(1, T0 + HOUR, prompt=e(1, 2)),
        Event(1, T0 + 2 * HOUR),  # pane 2 begins with a window without vector
        Event(1, T0 + 3 * HOUR, prompt=e(0, 1, 1)),
        Event(2, T0 + 3 * HOUR, prompt=e(0, 1, 1)),
    ]
    whole = features(*events)
    fn = UserFeatureWindows(3600, SCHEMA)
    pane_1 = fn.extract_output(
        fn.add_batch(fn.create_accumulator(), *batch(*events[:3])), topics=TOPICS, prefs={}
    )
    carried = last_interest_vectors(pane_1, previous={3: e(1)})
    assert sorted(carried) == [1, 2, 3]
    assert carried[1][:2] == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)])
    pane_2 = fn.add_batch(fn.create_accumulator(), *batch(*events[3:]))
    rows = (
        pane_1.to_pylist() + fn.extract_output(pane_2, topics=TOPICS, prefs={}, previous=carried).to_pylist()
    )
    rows.sort(key=lambda r: (r["user_id"], r["window_start"]))
    assert [r["drift"] for r in rows] == [r["drift"] for r in whole]
    assert whole[3]["drift"] == pytest.approx(1 - 2 / math.sqrt(10), abs=1e-6)


def test_last_interest_vectors_keeps_the_earlier_vector_of_a_user_without_one_now() -> None:
    fn = UserFeatureWindows(3600, SCHEMA)
    table = fn.extract_output(
        fn.add_batch(fn.create_accumulator(), *batch(Event(1, T0))), topics=TOPICS, prefs={}
    )
    carried = last_interest_vectors(table, previous={1: e(0, 1)})
    assert list(carried) == [1] and carried[1][:2].tolist() == [0, 1]


def test_affinity_is_the_cosine_to_the_declared_prefs_and_null_without_them() -> None:
    prefs = {1: prefs_vector(TOPICS.vectors[[0, 1]])}  # cooking and travel
    user_with_prefs, user_without = features(
        Event(1, T0, prompt=e(1, 0)), Event(2, T0, prompt=e(1, 0)), prefs=prefs
    )
    assert user_with_prefs["affinity"] == pytest.approx(COS_45, abs=1e-6)
    assert user_without["affinity"] is None


def test_flag_rate_is_the_share_of_decided_events_flagged_or_rejected() -> None:
    decisions = ["approved", "flagged", "rejected", "approved", None]
    rows = features(
        *(Event(1, T0 + timedelta(minutes=i), decision=d) for i, d in enumerate(decisions)), Event(2, T0)
    )
    assert [r["flag_rate"] for r in rows] == [0.5, None]  # 2 of the 4 with a decision; user 2: none


def test_an_accumulator_without_events_extracts_no_rows() -> None:
    fn = UserFeatureWindows(3600, SCHEMA)
    acc = fn.add_batch(fn.create_accumulator(), *batch())
    table = fn.extract_output(acc, topics=TOPICS, prefs={}, previous={1: e(1)})
    assert table.num_rows == 0 and table.schema == SCHEMA
    assert last_interest_vectors(table) == {}


def test_prompt_vectors_of_the_wrong_shape_are_refused_with_the_shape_expected() -> None:
    fn = UserFeatureWindows(3600, SCHEMA)
    table, _ = batch(Event(1, T0), Event(1, T0))
    with pytest.raises(ValueError, match=r"expected prompt_vectors of shape \(2, 384\).*got \(2, 3\)"):
        fn.add_batch(fn.create_accumulator(), table, np.zeros((2, 3), dtype=np.float32))


def test_events_without_a_needed_column_are_refused_naming_it() -> None:
    fn = UserFeatureWindows(3600, SCHEMA)
    table, vectors = batch(Event(1, T0))
    with pytest.raises(ValueError, match=r"lack the column\(s\) \['modality'\]"):
        fn.add_batch(fn.create_accumulator(), table.drop_columns(["modality"]), vectors)


@pytest.mark.parametrize(
    ("prefs", "topics"),
    [
        ({"topics": ["cooking", "travel"]}, ["cooking", "travel"]),
        ({"topics": ["travel", "travel", "cooking"], "lang": "fr"}, ["travel", "cooking"]),
        ({"topics": []}, []),
        ({"topics": "cooking"}, []),
        ({"topics": ["cooking", 7]}, []),
        ({"topics": ["cooking", ""]}, []),
        ({"topics": {"cooking": 1}}, []),
        ({"interests": ["cooking"]}, []),
        ({}, []),
        (None, []),
        (["cooking"], []),
        ("cooking", []),
    ],
)
def test_prefs_topics_reads_only_a_list_of_topic_names(prefs: Any, topics: list[str]) -> None:
    assert prefs_topics(prefs) == topics


def test_prefs_vector_is_the_normalised_mean_of_the_topic_vectors_and_none_without_topics() -> None:
    vector = prefs_vector(np.stack([e(1), e(0, 1), e(0, 1)]))
    assert vector is not None and vector[:3] == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5), 0])
    assert prefs_vector(np.zeros((0, DIM))) is None


# --- merge = one pass ------------------------------------------------------------------------


def random_batch(seed: int, n: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    events = [
        Event(
            user_id=int(rng.integers(1, 4)),
            at=T0 + timedelta(microseconds=int(rng.integers(0, 3 * 3600 * 10**6))),
            operation_type=str(rng.choice(["chat", "embed", "image_gen"])),
            modality=str(rng.choice(["text", "image"])),
            cost=None if rng.random() < 0.2 else str(Decimal(int(rng.integers(0, 10**10))).scaleb(-6)),
            prompt=None if rng.random() < 0.3 else rng.normal(size=DIM).astype(np.float32),
        )
        for _ in range(n)
    ]
    return batch(*events)


def assert_same_accumulators(merged: FeatureAccumulator, single: FeatureAccumulator) -> None:
    assert merged.windows.keys() == single.windows.keys()
    for key, one in single.windows.items():
        other = merged.windows[key]
        exact = ("events", "by_operation", "text_events", "image_events", "cost_micros", "unpriced_events")
        assert [getattr(other, f) for f in exact] == [getattr(one, f) for f in exact], key
        assert other.prompts_embedded == one.prompts_embedded
        if one.vector_sum is None:
            assert other.vector_sum is None
        else:
            assert other.vector_sum is not None
            np.testing.assert_allclose(other.vector_sum, one.vector_sum, rtol=0, atol=1e-9)


def assert_same_rows(merged: Sequence[dict[str, Any]], single: Sequence[dict[str, Any]]) -> None:
    approximate = ("interest_vector", "drift", "affinity")
    assert len(merged) == len(single)
    for other, one in zip(merged, single, strict=True):
        assert {k: v for k, v in other.items() if k not in approximate} == {
            k: v for k, v in one.items() if k not in approximate
        }
        for column in approximate:
            if one[column] is None:
                assert other[column] is None
            else:
                assert other[column] == pytest.approx(one[column], abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 40),
    parts=st.integers(1, 5),
    data=st.data(),
)
def test_adding_random_parts_and_merging_them_in_any_order_equals_one_pass(
    seed: int, n: int, parts: int, data: st.DataObject
) -> None:
    fn = UserFeatureWindows(3600, SCHEMA)
    table, vectors = random_batch(seed, n)
    single = fn.add_batch(fn.create_accumulator(), table, vectors)

    part_of = np.array(data.draw(st.lists(st.integers(0, parts - 1), min_size=n, max_size=n)), dtype=int)
    accs = []
    for part in range(parts):
        rows = np.flatnonzero(part_of == part)
        accs.append(fn.add_batch(fn.create_accumulator(), table.take(rows), vectors[rows]))
    order = data.draw(st.permutations(range(parts)))
    split = data.draw(st.integers(0, parts))  # a partial merge first, as an engine may do
    ordered = [accs[i] for i in order]
    merged = fn.merge_accumulators([fn.merge_accumulators(ordered[:split]), *ordered[split:]])

    assert_same_accumulators(merged, single)
    prefs = {1: prefs_vector(TOPICS.vectors[[0, 2]])}
    extract = {"topics": TOPICS, "prefs": prefs, "previous": {2: e(1, 1)}}
    assert_same_rows(
        fn.extract_output(merged, **extract).to_pylist(), fn.extract_output(single, **extract).to_pylist()
    )
