"""The stream's window state (``transforms.stream_state``): the watermark, the duplicate memory and
the open rate-limit windows give the same answers however a stream is cut into batches, and the
same answers as the bounded run's one-shot code (``collapse_duplicates``, ``close(END_OF_TIME)``).

Expected results are recomputed here independently, event by event in plain Python."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_dedup import Copy, enrich, event, inputs, kept_at, line, reordered
from transforms.dead_letter import Reason
from transforms.dedup import collapse_duplicates
from transforms.personalization import FeatureAccumulator, WindowAggregate
from transforms.stream_state import (
    END_OF_TIME,
    DuplicateMemory,
    OpenWindows,
    Watermark,
    event_times,
    first_window_ends,
    late_rows,
)
from transforms.windows import US, TumblingWindows

INT64_MIN = int(np.iinfo(np.int64).min)
EOT = int(END_OF_TIME)


# --- helpers ---------------------------------------------------------------------------------------


def cut(items: list[Any], cuts: list[int]) -> list[list[Any]]:
    """``items`` cut into consecutive batches at the given indices (empty batches included)."""
    bounds = [0, *sorted(min(max(c, 0), len(items)) for c in cuts), len(items)]
    return [items[a:b] for a, b in pairwise(bounds)]


def first_end_us(time_us: int, sizes_s: list[int]) -> int:
    """The end of the earliest-closing window holding ``time_us``, in Python integers."""
    return min((time_us // (s * US)) * (s * US) + s * US for s in sizes_s)


def judge_by_hand(
    times: list[int], ends: list[int], lateness: int, end_before: int | None
) -> tuple[list[bool], list[int], int | None]:
    """Late mask, watermark at arrival and final watermark, one event at a time; the input ends
    just before event ``end_before`` (``len(times)``: after the last; ``None``: never)."""
    max_seen: int | None = None
    ended = False
    late, at_arrival = [], []
    for i, (t, end) in enumerate(zip(times, ends, strict=True)):
        if i == end_before:
            ended = True
        if ended:
            late.append(True)
            at_arrival.append(EOT)
        elif max_seen is None:
            late.append(False)
            at_arrival.append(INT64_MIN)
        else:
            late.append(end <= max_seen - lateness)
            at_arrival.append(max_seen - lateness)
        max_seen = t if max_seen is None else max(max_seen, t)
    if end_before == len(times):
        ended = True
    final = EOT if ended else (None if max_seen is None else max_seen - lateness)
    return late, at_arrival, final


# --- first_window_ends, Watermark --------------------------------------------------------------------

WINDOW_SIZES = st.lists(st.sampled_from([1, 7, 60, 3600, 86_400]), min_size=1, max_size=3, unique=True)
TIMES_US = st.integers(min_value=-(10**13), max_value=10**13)


@given(st.lists(TIMES_US, max_size=30), WINDOW_SIZES)
def test_first_window_ends_is_the_earliest_end_of_the_windows_holding_each_time(
    times: list[int], sizes: list[int]
) -> None:
    ends = first_window_ends(np.array(times, dtype=np.int64), [TumblingWindows(s) for s in sizes])
    assert ends.dtype == np.int64
    assert ends.tolist() == [first_end_us(t, sizes) for t in times]
    for t, end in zip(times, ends.tolist(), strict=True):
        assert t < end  # a time is inside its window: before its end ...
        assert any(end - s * US <= t for s in sizes)  # ... and at or after the start of one of them


def test_first_window_ends_at_a_boundary_and_before_1970() -> None:
    minute, hour = TumblingWindows(60), TumblingWindows(3600)
    times = np.array([0, 59_999_999, 60_000_000, -1, 3_599_999_999], dtype=np.int64)
    assert first_window_ends(times, [hour, minute]).tolist() == [
        60_000_000,
        60_000_000,
        120_000_000,
        0,  # the minute before the epoch ends at it
        3_600_000_000,
    ]
    assert first_window_ends(times, []).tolist() == [EOT] * 5


@settings(max_examples=150, deadline=None)
@given(
    st.lists(TIMES_US, max_size=40),
    st.integers(min_value=0, max_value=10**9),
    WINDOW_SIZES,
    st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    st.one_of(st.none(), st.integers(min_value=0, max_value=40)),
)
def test_watermark_judges_every_event_against_the_events_before_it_however_batched(
    times: list[int], lateness: int, sizes: list[int], cuts: list[int], end_at: int | None
) -> None:
    ends = [first_end_us(t, sizes) for t in times]
    if end_at is not None:
        end_at = min(end_at, len(times))
        cuts = [*cuts, end_at]  # the input ends between two batches
    expected_late, expected_at, expected_value = judge_by_hand(times, ends, lateness, end_at)

    def run(batches: list[list[int]]) -> tuple[list[bool], list[int], Watermark]:
        watermark = Watermark(lateness_us=lateness)
        late: list[bool] = []
        at: list[int] = []
        done = 0
        for batch in batches:
            if done == end_at:
                watermark.end()
            mask, arrival = watermark.judge(
                np.array(times[done : done + len(batch)], dtype=np.int64),
                first_window_ends(np.array(batch, dtype=np.int64), [TumblingWindows(s) for s in sizes]),
            )
            assert mask.dtype == bool and arrival.dtype == np.int64
            assert len(mask) == len(arrival) == len(batch)
            late += mask.tolist()
            at += arrival.tolist()
            done += len(batch)
        if done == end_at:
            watermark.end()
        return late, at, watermark

    batched = run(cut(times, cuts))
    # One batch, or two when the input ends in the middle.
    whole = run(cut(times, [] if end_at is None else [end_at]))
    for late, at, watermark in (batched, whole):
        assert late == expected_late
        assert at == expected_at
        assert watermark.value == expected_value
        assert watermark.ended == (end_at is not None)
        assert watermark.max_seen_us == (max(times) if times else None)


def test_watermark_worked_example() -> None:
    watermark = Watermark(lateness_us=10)
    assert watermark.value is None
    late, at = watermark.judge(np.array([100, 50]), np.array([150, 95]))
    # The first event meets no watermark; the second meets 100 - 10 = 90 < 95: on time.
    assert (late.tolist(), at.tolist()) == ([False, False], [INT64_MIN, 90])
    assert watermark.value == 90  # the max seen, 100, less the lateness
    late, at = watermark.judge(np.array([200, 80, 300]), np.array([250, 90, 400]))
    # 80's window ends at 90 <= 90: late; 300 meets 200 - 10 after 200 arrived.
    assert (late.tolist(), at.tolist()) == ([False, True, False], [90, 190, 190])
    assert watermark.value == 290
    empty_late, empty_at = watermark.judge(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert len(empty_late) == len(empty_at) == 0 and watermark.value == 290
    watermark.end()
    assert watermark.value == EOT
    late, at = watermark.judge(np.array([10**12]), np.array([10**12 + 1]))
    assert late.tolist() == [True] and at.tolist() == [EOT]  # after the end, everything is late


# --- late_rows -----------------------------------------------------------------------------------------


def test_late_rows_splits_by_the_mask_keeping_order() -> None:
    table = pa.table({"n": list(range(6)), "s": list("abcdef")})
    on_time, late = late_rows(table, np.array([False, True, False, True, True, False]))
    assert on_time.column("n").to_pylist() == [0, 2, 5]
    assert late.column("n").to_pylist() == [1, 3, 4]
    assert on_time.schema == late.schema == table.schema
    on_time, late = late_rows(table, np.zeros(6, dtype=bool))
    assert on_time is table and late.num_rows == 0 and late.schema == table.schema
    on_time, late = late_rows(table, np.ones(6, dtype=bool))
    assert on_time.num_rows == 0 and late.column("n").to_pylist() == list(range(6))


# --- DuplicateMemory -----------------------------------------------------------------------------------


def stream_of(sources: list[list[Copy]]) -> list[Copy]:
    """Every copy in stream order: input by input, line by line."""
    return [c for lines in sources for c in lines]


def enrich_batch(copies: list[Copy]) -> pa.Table:
    """One stream batch: consecutive copies, enriched input by input (``tests.test_dedup``)."""
    parts = []
    start = 0
    while start < len(copies):
        stop = start
        while stop < len(copies) and copies[stop].source_order == copies[start].source_order:
            stop += 1
        run = copies[start:stop]
        parts.append(
            enrich([c.raw for c in run], run[0].source, run[0].source_order, first_line=run[0].line_no)
        )
        start = stop
    return pa.concat_tables(parts) if parts else enrich([])


def letters(conflicts: list[Any]) -> list[tuple[str, int | None, bytes, str, str]]:
    return sorted((d.source, d.line_no, d.raw, d.event_id, d.detail) for d in conflicts)


def expected_rule(copies: list[Copy]) -> tuple[dict[str, tuple[str, int, bytes]], dict[Any, str], int]:
    """The duplicate rule by hand: kept (first copy in stream order), conflicts naming the first
    copy, and how many collapsed."""
    kept: dict[str, Copy] = {}
    conflicts: dict[Any, str] = {}
    collapsed = 0
    for c in copies:
        first = kept.setdefault(c.payload["event_id"], c)
        if first is c:
            continue
        if c.payload == first.payload:
            collapsed += 1
        else:
            conflicts[(c.source, c.line_no, c.raw)] = f"{first.source}:{first.line_no}"
    return {i: (c.source, c.line_no, c.raw) for i, c in kept.items()}, conflicts, collapsed


@settings(max_examples=60, deadline=None)
@given(inputs())
def test_duplicate_memory_in_one_add_is_collapse_duplicates(sources: list[list[Copy]]) -> None:
    table = enrich_batch(stream_of(sources))
    forget = np.arange(table.num_rows, dtype=np.int64) * 1_000
    memory = DuplicateMemory()
    result = memory.add(table, forget)
    reference = collapse_duplicates(table)
    assert result.events.equals(reference.events)
    assert result.events.schema == table.schema  # the forget column does not leak
    assert result.conflicts == reference.conflicts
    assert result.collapsed == reference.collapsed
    # It remembers every kept event_id, with the first copy's place and its forget time.
    rows = table.select(["event_id", "source", "line_no"]).to_pylist()
    first_row = {}
    for n, row in enumerate(rows):
        first_row.setdefault(row["event_id"], (row["source"], row["line_no"], n * 1_000))
    assert {i: (s.source, s.line_no, s.forget_at_us) for i, s in memory.seen.items()} == first_row


@settings(max_examples=100, deadline=None)
@given(inputs(), st.lists(st.integers(min_value=0, max_value=24), max_size=5))
def test_duplicate_memory_gives_the_same_result_however_the_stream_is_batched(
    sources: list[list[Copy]], cuts: list[int]
) -> None:
    copies = stream_of(sources)
    expected_kept, expected_conflicts, expected_collapsed = expected_rule(copies)

    memory = DuplicateMemory()
    kept, conflicts, collapsed = [], [], 0
    for batch in cut(copies, cuts):
        table = enrich_batch(batch)
        result = memory.add(table, np.zeros(table.num_rows, dtype=np.int64))
        assert result.events.schema == table.schema
        kept.append(result.events)
        conflicts += result.conflicts
        collapsed += result.collapsed

    kept_table = pa.concat_tables(kept)
    assert kept_table.num_rows == len(expected_kept)  # one row per event_id
    assert kept_at(kept_table) == expected_kept
    # Every copy after the first is judged against the first copy, whichever batch holds it.
    assert collapsed == expected_collapsed
    assert sorted((d.source, d.line_no, d.raw) for d in conflicts) == sorted(expected_conflicts)
    for d in conflicts:
        assert d.reason == Reason.CONFLICTING_DUPLICATE
        assert f"first seen at {expected_conflicts[(d.source, d.line_no, d.raw)]} " in d.detail
    assert len(copies) == kept_table.num_rows + len(conflicts) + collapsed
    # The same as the whole stream in one add.
    whole = collapse_duplicates(enrich_batch(copies))
    assert letters(conflicts) == letters(whole.conflicts) and collapsed == whole.collapsed


def test_a_copy_identical_to_the_first_collapses_even_after_a_differing_copy_in_its_batch() -> None:
    a, b = event("x", prompt="a"), event("x", prompt="b")
    table = enrich([line(a), line(b), line(reordered(a)), line(b)])
    memory = DuplicateMemory()
    first = memory.add(table.slice(0, 1), np.zeros(1, dtype=np.int64))
    later = memory.add(table.slice(1), np.zeros(3, dtype=np.int64))
    assert kept_at(first.events) == {"x": ("a.jsonl", 1, line(a))} and later.events.num_rows == 0
    # Line 3 is line 1 again: it collapses; lines 2 and 4 differ from line 1: both conflict.
    assert later.collapsed == 1
    assert sorted(d.line_no for d in later.conflicts) == [2, 4]
    assert all("first seen at a.jsonl:1 " in d.detail for d in later.conflicts)


def test_duplicate_memory_close_forgets_only_what_the_watermark_passed() -> None:
    ids = ["a", "b", "c", "d"]
    table = enrich([line(event(i)) for i in ids])
    memory = DuplicateMemory()
    memory.add(table, np.array([100, 200, 200, 300], dtype=np.int64))
    assert memory.close(99) == 0 and sorted(memory.seen) == ids
    assert memory.close(200) == 3 and sorted(memory.seen) == ["d"]  # forget time <= watermark
    assert memory.close(299) == 0 and sorted(memory.seen) == ["d"]
    assert memory.close(300) == 1 and memory.seen == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=1_000), min_size=1, max_size=8),
    st.integers(min_value=-10, max_value=1_010),
)
def test_after_close_a_repeat_of_a_forgotten_id_is_new_and_of_a_remembered_one_is_not(
    forget: list[int], watermark: int
) -> None:
    ids = [f"e{i}" for i in range(len(forget))]
    table = enrich([line(event(i, prompt="first")) for i in ids])
    memory = DuplicateMemory()
    memory.add(table, np.array(forget, dtype=np.int64))
    forgotten = {i for i, f in zip(ids, forget, strict=True) if f <= watermark}
    assert memory.close(watermark) == len(forgotten)
    assert set(memory.seen) == set(ids) - forgotten
    assert memory.close(watermark) == 0  # nothing left to forget at the same watermark

    # The same events again (identical) and differing copies, from a later input.
    again = enrich(
        [line(event(i, prompt="first")) for i in ids] + [line(event(i, prompt="other")) for i in ids],
        source="b.jsonl",
        source_order=1,
    )
    result = memory.add(again, np.full(again.num_rows, 5_000, dtype=np.int64))
    # A forgotten id is new again: its first copy here is kept, its differing copy conflicts with it.
    assert kept_at(result.events) == {
        i: ("b.jsonl", ids.index(i) + 1, line(event(i, prompt="first"))) for i in forgotten
    }
    remembered = len(ids) - len(forgotten)
    assert result.collapsed == remembered  # identical repeats of what is still remembered
    by_first = {d.event_id: d.detail for d in result.conflicts}
    assert sorted(by_first) == sorted(ids) and len(result.conflicts) == len(ids)
    for i in ids:
        where = f"b.jsonl:{ids.index(i) + 1}" if i in forgotten else f"a.jsonl:{ids.index(i) + 1}"
        assert f"first seen at {where} " in by_first[i]
    assert {i: s.forget_at_us for i, s in memory.seen.items() if i in forgotten} == dict.fromkeys(
        forgotten, 5_000
    )


def test_duplicate_memory_merge_keeps_this_ones_first_copy() -> None:
    mine = DuplicateMemory()
    mine.add(enrich([line(event("a", prompt="mine")), line(event("b"))]), np.array([1, 2]))
    theirs = DuplicateMemory()
    theirs.add(
        enrich([line(event("a", prompt="theirs")), line(event("c"))], source="t.jsonl", source_order=1),
        np.array([3, 4]),
    )
    merged = mine.merge(theirs)
    assert sorted(merged.seen) == ["a", "b", "c"]
    assert (merged.seen["a"].source, merged.seen["a"].forget_at_us) == ("a.jsonl", 1)
    assert (merged.seen["c"].source, merged.seen["c"].forget_at_us) == ("t.jsonl", 4)
    assert sorted(mine.seen) == ["a", "b"] and sorted(theirs.seen) == ["a", "c"]  # left unchanged
    repeat = merged.add(
        enrich([line(event("a", prompt="mine")), line(event("c"))], source="z.jsonl", source_order=2),
        np.zeros(2, dtype=np.int64),
    )
    assert (repeat.events.num_rows, repeat.collapsed, repeat.conflicts) == (0, 2, [])


# --- OpenWindows -------------------------------------------------------------------------------------

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BASE_US = int(BASE.timestamp()) * US
WINDOW = TumblingWindows(60)
#: A pool of real events (``tests.test_dedup``), 7 s apart over four minutes, lines 1..35.
POOL = enrich(
    [
        json.dumps({**event(f"w{n}"), "event_time": (BASE + timedelta(seconds=7 * n)).isoformat()}).encode()
        for n in range(35)
    ]
)


def window_end(row: dict[str, Any]) -> int:
    """The end (µs) of a row's 60 s window, from its datetime, in Python integers."""
    t = row["event_time"]
    us = (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (us // (60 * US)) * 60 * US + 60 * US


END_OF = {row["line_no"]: window_end(row) for row in POOL.select(["line_no", "event_time"]).to_pylist()}


@settings(max_examples=120, deadline=None)
@given(
    st.permutations(range(35)).flatmap(
        lambda order: st.integers(min_value=0, max_value=35).map(lambda n: order[:n])
    ),
    st.lists(st.integers(min_value=0, max_value=35), max_size=6),
    st.lists(st.integers(min_value=0, max_value=80 * US), min_size=7, max_size=7),
)
def test_open_windows_hand_back_every_row_once_and_never_before_its_window_ends(
    rows: list[int], cuts: list[int], steps: list[int]
) -> None:
    batches = [POOL.take(pa.array(part, pa.int64())) for part in cut(rows, cuts)]
    open_windows = OpenWindows(WINDOW)
    added: list[int] = []
    handed: list[int] = []
    watermark = BASE_US - 60 * US
    for batch, step in zip(batches, steps, strict=False):
        open_windows.add(batch)
        added += batch.column("line_no").to_pylist()
        watermark += step
        closed = open_windows.close(watermark)
        got = [] if closed is None else closed.column("line_no").to_pylist()
        if closed is not None:
            assert closed.schema == POOL.schema and got
        assert all(END_OF[n] <= watermark for n in got)  # never before its window's end
        handed += got
        # Exactly the rows whose windows the watermark passed are out, each once, in the order added.
        assert sorted(handed) == sorted(n for n in added if END_OF[n] <= watermark)
        assert got == [n for n in added if n in set(got)]
        waiting = [n for n in added if n not in set(handed)]
        assert open_windows.rows == len(waiting)
        assert open_windows.earliest_start == (min(END_OF[n] for n in waiting) - 60 * US if waiting else None)
    for batch in batches[len(steps) :]:
        open_windows.add(batch)
        added += batch.column("line_no").to_pylist()
    rest = open_windows.close(int(END_OF_TIME))
    handed += [] if rest is None else rest.column("line_no").to_pylist()
    assert sorted(handed) == sorted(added) == sorted(r + 1 for r in rows)  # everything, once
    assert open_windows.rows == 0 and open_windows.earliest_start is None
    assert open_windows.close(int(END_OF_TIME)) is None


def test_closing_a_single_batch_at_the_end_of_time_returns_that_very_table() -> None:
    open_windows = OpenWindows(WINDOW)
    open_windows.add(POOL)
    assert open_windows.rows == POOL.num_rows
    assert open_windows.earliest_start == BASE_US
    assert open_windows.close(int(END_OF_TIME)) is POOL
    empty = OpenWindows(WINDOW)
    empty.add(POOL.slice(0, 0))  # an empty batch is not held
    assert empty.rows == 0 and empty.pending == [] and empty.close(int(END_OF_TIME)) is None


def test_open_windows_close_at_a_window_end_exactly() -> None:
    open_windows = OpenWindows(WINDOW)
    open_windows.add(POOL)
    # Lines 1..9 (0..56 s) are in the 12:00 minute, which ends at BASE + 60 s.
    assert open_windows.close(BASE_US + 60 * US - 1) is None
    closed = open_windows.close(BASE_US + 60 * US)
    assert closed is not None and closed.column("line_no").to_pylist() == list(range(1, 10))
    assert open_windows.earliest_start == BASE_US + 60 * US
    assert open_windows.rows == 35 - 9


def test_open_windows_merge_holds_both_this_ones_first() -> None:
    mine, theirs = OpenWindows(WINDOW), OpenWindows(WINDOW)
    mine.add(POOL.slice(20, 5))
    theirs.add(POOL.slice(0, 5))
    merged = mine.merge(theirs)
    assert merged.rows == 10 and merged.earliest_start == BASE_US
    assert (mine.rows, theirs.rows) == (5, 5)
    closed = merged.close(int(END_OF_TIME))
    assert closed is not None
    assert closed.column("line_no").to_pylist() == [21, 22, 23, 24, 25, 1, 2, 3, 4, 5]


def test_event_times_are_int64_microseconds() -> None:
    times = event_times(POOL)
    assert times.dtype == np.int64
    assert times.tolist() == [BASE_US + 7 * n * US for n in range(35)]
    chunked = pa.concat_tables([POOL.slice(0, 3), POOL.slice(3, 2)])
    assert event_times(chunked).tolist() == times[:5].tolist()


# --- FeatureAccumulator.pop_closed ---------------------------------------------------------------------


@pytest.mark.parametrize("watermark", [-1, 0, 59, 60, 119, 120, 10**6])
def test_pop_closed_takes_out_exactly_the_windows_that_ended(watermark: int) -> None:
    size = 60
    keys = [(1, 0), (2, 0), (1, 60), (3, -60), (2, 120)]
    aggregates = {key: WindowAggregate(events=n + 1) for n, key in enumerate(keys)}
    acc = FeatureAccumulator(dict(aggregates))
    closed = acc.pop_closed(watermark, size)
    due = {key for key in keys if key[1] + size <= watermark}
    assert set(closed.windows) == due
    assert set(acc.windows) == set(keys) - due
    for key in keys:  # the same aggregates, moved, not copied
        holder = closed if key in due else acc
        assert holder.windows[key] is aggregates[key]
    assert acc.pop_closed(watermark, size).windows == {}  # nothing twice
