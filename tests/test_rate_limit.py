"""Rate limits (DESIGN.md, stage 4): per user and event-time tumbling window, events ordered by
(event_time, event_id); those past their tier's quota are flagged, and each window over quota
gets one ``rate_limit_violations`` row."""

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from transforms.rate_limit import RateLimits, apply_rate_limits

QUOTAS = {"free": 2, "pro": 3, "enterprise": 5}
#: 2023-11-14T22:13:20Z: a whole number of minutes and hours, so windows start on it.
BASE_US = 1_700_000_000 * 1_000_000 // 3_600_000_000 * 3_600_000_000
VIOLATIONS = schemas.arrow_schema("rate_limit_violations")


@dataclass(frozen=True)
class Event:
    user_id: int
    time_us: int
    event_id: str
    ai_tier: str


def events_table(events: list[Event], chunks: int = 1) -> pa.Table:
    table = pa.table(
        {
            "user_id": pa.array([e.user_id for e in events], pa.int64()),
            "event_time": pa.array([e.time_us for e in events], pa.timestamp("us", tz="UTC")),
            "event_id": pa.array([e.event_id for e in events], pa.string()),
            "ai_tier": pa.array([e.ai_tier for e in events], pa.string()),
        }
    )
    if chunks <= 1 or table.num_rows < 2:
        return table
    step = max(1, table.num_rows // chunks)
    return pa.concat_tables(table.slice(i, step) for i in range(0, table.num_rows, step))


def at(seconds: float) -> int:
    return BASE_US + round(seconds * 1_000_000)


def windows_of(events: list[Event], window_seconds: int) -> dict[tuple[int, int], list[Event]]:
    """Each (user, window index)'s events in (event_time, event_id) order."""
    window_us = window_seconds * 1_000_000
    groups: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for e in events:
        groups[(e.user_id, e.time_us // window_us)].append(e)
    return {key: sorted(group, key=lambda e: (e.time_us, e.event_id)) for key, group in groups.items()}


def expected_limited(events: list[Event], quotas: dict[str, int], window_seconds: int) -> dict[str, bool]:
    limited = {}
    for group in windows_of(events, window_seconds).values():
        for rank, e in enumerate(group, start=1):
            limited[e.event_id] = rank > quotas[e.ai_tier]
    return limited


def limited_by_id(result_events: pa.Table) -> dict[str, bool]:
    ids = result_events.column("event_id").to_pylist()
    flags = result_events.column("rate_limited").to_pylist()
    return dict(zip(ids, flags, strict=True))


def violation_rows(violations: pa.Table) -> set[tuple]:
    return {tuple(r.values()) for r in violations.to_pylist()}


@st.composite
def event_lists(draw: st.DrawFn, window_seconds: int) -> list[Event]:
    """Events of a few users over a few windows, with ties in time and hits on boundaries."""
    quarter_us = window_seconds * 1_000_000 // 4
    size = draw(st.integers(min_value=0, max_value=40))
    ids = draw(
        st.lists(
            st.text(alphabet="ab\u00e9\U0001f600Z", min_size=1, max_size=3),
            min_size=size,
            max_size=size,
            unique=True,
        )
    )
    events = []
    for event_id in ids:
        step = draw(st.integers(min_value=0, max_value=7))
        nudge = draw(st.sampled_from([-1, 0, 0, 1]))
        events.append(
            Event(
                user_id=draw(st.integers(min_value=1, max_value=2)),
                time_us=BASE_US + step * quarter_us + nudge,
                event_id=event_id,
                ai_tier=draw(st.sampled_from(sorted(QUOTAS))),
            )
        )
    return events


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Event], int]:
    window_seconds = draw(st.sampled_from([1, 60, 3600]))
    return draw(event_lists(window_seconds)), window_seconds


@settings(max_examples=150)
@given(cases(), st.integers(min_value=1, max_value=4))
def test_rate_limited_matches_rank_in_window_past_tier_quota(
    case: tuple[list[Event], int], chunks: int
) -> None:
    events, window_seconds = case
    result = apply_rate_limits(events_table(events, chunks), RateLimits(QUOTAS, window_seconds), VIOLATIONS)
    assert result.events.num_rows == len(events)
    assert limited_by_id(result.events) == expected_limited(events, QUOTAS, window_seconds)


@given(cases())
def test_window_start_is_event_time_floored_to_the_window(case: tuple[list[Event], int]) -> None:
    events, window_seconds = case
    window_us = window_seconds * 1_000_000
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, window_seconds), VIOLATIONS)
    starts = dict(
        zip(
            result.events.column("event_id").to_pylist(),
            result.events.column("window_start").to_pylist(),
            strict=True,
        )
    )
    for e in events:
        expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            microseconds=e.time_us // window_us * window_us
        )
        assert starts[e.event_id] == expected


@given(cases(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_row_order(case: tuple[list[Event], int], rnd: random.Random) -> None:
    events, window_seconds = case
    shuffled = list(events)
    rnd.shuffle(shuffled)
    limits = RateLimits(QUOTAS, window_seconds)
    one = apply_rate_limits(events_table(events), limits, VIOLATIONS)
    other = apply_rate_limits(events_table(shuffled), limits, VIOLATIONS)
    assert limited_by_id(one.events) == limited_by_id(other.events)
    assert violation_rows(one.violations) == violation_rows(other.violations)


@settings(max_examples=150)
@given(cases())
def test_violations_count_each_window_over_quota(case: tuple[list[Event], int]) -> None:
    events, window_seconds = case
    window_us = window_seconds * 1_000_000
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, window_seconds), VIOLATIONS)
    limited = limited_by_id(result.events)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = set()
    for (user_id, index), group in windows_of(events, window_seconds).items():
        limited_count = sum(limited[e.event_id] for e in group)
        if limited_count == 0:
            continue  # a window under quota is no violation
        start = epoch + timedelta(microseconds=index * window_us)
        expected.add(
            (
                user_id,
                group[0].ai_tier,
                start,
                start + timedelta(seconds=window_seconds),
                len(group),
                QUOTAS[group[0].ai_tier],
                limited_count,
            )
        )
    assert result.violations.schema == VIOLATIONS
    assert result.violations.num_rows == len(expected)
    assert violation_rows(result.violations) == expected


@given(cases())
def test_limited_events_total_equals_violations_limited_count(
    case: tuple[list[Event], int],
) -> None:
    events, window_seconds = case
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, window_seconds), VIOLATIONS)
    flagged = sum(result.events.column("rate_limited").to_pylist())
    assert flagged == sum(result.violations.column("limited_count").to_pylist())
    for v in result.violations.to_pylist():
        assert v["window_end"] - v["window_start"] == timedelta(seconds=window_seconds)
        assert v["request_count"] > v["limited_count"] > 0


def test_event_past_quota_in_one_window_is_limited() -> None:
    events = [Event(1, at(i), f"e{i}", "free") for i in range(3)]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert limited_by_id(result.events) == {"e0": False, "e1": False, "e2": True}
    assert result.violations.to_pylist() == [
        {
            "user_id": 1,
            "ai_tier": "free",
            "window_start": datetime(2023, 11, 14, 22, 0, tzinfo=UTC),
            "window_end": datetime(2023, 11, 14, 22, 1, tzinfo=UTC),
            "request_count": 3,
            "quota": 2,
            "limited_count": 1,
        }
    ]


def test_window_under_quota_produces_no_violation() -> None:
    events = [Event(1, at(i), f"e{i}", "free") for i in range(2)]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert not any(limited_by_id(result.events).values())
    assert result.violations.num_rows == 0


def test_event_on_a_window_boundary_belongs_to_the_later_window() -> None:
    # With a quota of 2, a third event would be limited if the boundary one counted as early.
    events = [
        Event(1, at(58), "a", "free"),
        Event(1, at(59.999999), "b", "free"),
        Event(1, at(60), "c", "free"),
    ]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert limited_by_id(result.events) == {"a": False, "b": False, "c": False}
    starts = dict(
        zip(
            result.events.column("event_id").to_pylist(),
            result.events.column("window_start").to_pylist(),
            strict=True,
        )
    )
    assert starts["b"] == datetime(2023, 11, 14, 22, 0, tzinfo=UTC)
    assert starts["c"] == datetime(2023, 11, 14, 22, 1, tzinfo=UTC)


def test_same_time_events_are_ranked_by_event_id() -> None:
    events = [Event(1, at(5), eid, "free") for eid in ("c", "a", "b")]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert limited_by_id(result.events) == {"a": False, "b": False, "c": True}


def test_users_are_limited_separately() -> None:
    events = [Event(user, at(i), f"u{user}-{i}", "free") for user in (1, 2) for i in range(2)]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert not any(limited_by_id(result.events).values())


def test_each_event_is_judged_by_its_own_tier_quota() -> None:
    events = [
        Event(1, at(1), "a", "free"),
        Event(1, at(2), "b", "free"),
        Event(1, at(3), "c", "enterprise"),  # rank 3 <= 5
        Event(1, at(4), "d", "free"),  # rank 4 > 2
    ]
    result = apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert limited_by_id(result.events) == {"a": False, "b": False, "c": False, "d": True}


def test_quota_of_zero_limits_every_event() -> None:
    events = [Event(1, at(i), f"e{i}", "free") for i in range(2)]
    result = apply_rate_limits(events_table(events), RateLimits({"free": 0}, 60), VIOLATIONS)
    assert all(limited_by_id(result.events).values())


def test_empty_table_gives_no_events_and_no_violations() -> None:
    result = apply_rate_limits(events_table([]), RateLimits(QUOTAS, 60), VIOLATIONS)
    assert result.events.num_rows == 0
    assert result.violations.num_rows == 0
    assert result.violations.schema == VIOLATIONS


def test_shipped_defaults_are_free_20_pro_200_enterprise_2000_per_minute() -> None:
    tiers = schemas.tier_table()
    assert tiers["window_seconds"] == 60
    assert tiers["quotas"] == {"free": 20, "pro": 200, "enterprise": 2000}


def test_shipped_defaults_limit_the_21st_free_request_in_a_minute() -> None:
    tiers = schemas.tier_table()
    limits = RateLimits(tiers["quotas"], tiers["window_seconds"])
    events = [Event(1, at(i), f"e{i:02d}", "free") for i in range(21)]
    result = apply_rate_limits(events_table(events), limits, VIOLATIONS)
    limited = limited_by_id(result.events)
    assert [eid for eid, flag in limited.items() if flag] == ["e20"]
    assert result.violations.column("quota").to_pylist() == [20]


def test_tier_without_quota_raises() -> None:
    events = [Event(1, at(0), "a", "free"), Event(1, at(1), "b", "platinum")]
    with pytest.raises(ValueError, match="platinum"):
        apply_rate_limits(events_table(events), RateLimits(QUOTAS, 60), VIOLATIONS)


@pytest.mark.parametrize("window_seconds", [0, -60])
def test_window_must_be_positive(window_seconds: int) -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        RateLimits(QUOTAS, window_seconds)


@pytest.mark.parametrize("quota", [-1, 2.5, "20"])
def test_quota_must_be_a_non_negative_integer(quota: object) -> None:
    with pytest.raises(ValueError, match="quotas"):
        RateLimits({"free": quota}, 60)  # type: ignore[dict-item]
