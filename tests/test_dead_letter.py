"""Dead letters say where their record was, whether in a file (a line number) or a stream (an entry
id), and are filed and ordered by that position the same way for both."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from transforms.dead_letter import (
    BUCKET_LINES,
    DeadLetter,
    Reason,
    dead_letter_bucket,
    dead_letter_table,
    sorted_by_position,
)

SCHEMA = schemas.arrow_schema("dead_letter")


def letter(position: str, source: str = "in.jsonl", source_order: int = 0) -> DeadLetter:
    return DeadLetter(source, position, b"{", Reason.MALFORMED_JSON, "detail", source_order=source_order)


def test_the_dataset_has_a_position_for_every_letter_and_a_line_number_for_file_records() -> None:
    assert SCHEMA.field("position") == pa.field("position", pa.string(), nullable=False)
    assert SCHEMA.field("line_no") == pa.field("line_no", pa.int64(), nullable=True)
    assert SCHEMA.names.index("position") == SCHEMA.names.index("line_no") + 1


def test_a_file_record_keeps_its_line_number_and_a_stream_entry_its_id() -> None:
    table = dead_letter_table([letter("12"), letter("1700000000000-0", source="events")], SCHEMA)
    rows = table.select(["source", "line_no", "position"]).to_pylist()
    assert rows == [
        {"source": "in.jsonl", "line_no": 12, "position": "12"},
        {"source": "events", "line_no": None, "position": "1700000000000-0"},
    ]


def test_a_stream_entry_has_no_line_number_to_give() -> None:
    assert letter("7").line_no == 7
    with pytest.raises(ValueError, match="stream entry 1700000000000-0 has no line number"):
        _ = letter("1700000000000-0").line_no


@pytest.mark.parametrize("position", ["", "-1", "1.5", "12-", "a-1", "٣", "1-2-3", "1" * 21, str(2**64)])
def test_a_position_that_is_neither_a_line_nor_an_entry_id_is_refused(position: str) -> None:
    with pytest.raises(ValueError, match="neither a line number"):
        letter(position)


lines = st.lists(st.tuples(st.sampled_from(["a.jsonl", "b.csv"]), st.integers(1, 10**9)), max_size=40)


@given(lines)
def test_file_letters_are_written_in_the_order_and_buckets_they_always_were(
    found: list[tuple[str, int]],
) -> None:
    letters = [letter(str(line_no), source) for source, line_no in found]
    table = dead_letter_table(letters, SCHEMA)
    before = table.sort_by([("source", "ascending"), ("line_no", "ascending")])
    assert sorted_by_position(table).equals(before)
    for one in letters:
        assert dead_letter_bucket(one) == f"{one.source_order:04d}-{one.line_no // BUCKET_LINES:04d}"


entries = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=40)


@given(entries)
def test_stream_letters_are_written_in_entry_order(ids: list[tuple[int, int]]) -> None:
    table = dead_letter_table([letter(f"{ms}-{seq}", "events") for ms, seq in ids], SCHEMA)
    written = sorted_by_position(table).column("position").to_pylist()
    assert written == [f"{ms}-{seq}" for ms, seq in sorted(ids)]


def test_a_streams_letters_are_filed_by_the_hour_of_their_entry() -> None:
    hour = 3_600_000
    first, same, next_hour = (
        letter(f"{ms}-{seq}", "events", 2) for ms, seq in ((hour, 0), (2 * hour - 1, 9), (2 * hour, 0))
    )
    assert dead_letter_bucket(first) == dead_letter_bucket(same) == "0002-0001"
    assert dead_letter_bucket(next_hour) == "0002-0002"
