"""The first stage never crashes and never loses a record, whatever bytes it is fed."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from tests.conftest import enrich_settings
from transforms.dead_letter import ContractViolation, Reason
from transforms.event_batch import InputRecords, enrich_records, in_flight_schema

SETTINGS = enrich_settings(shards=8)
SCHEMA = in_flight_schema(schemas.arrow_schema("events"))


def no_images(path: str) -> bytes:
    raise ContractViolation(Reason.IMAGE_NOT_FOUND, path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
field_values = {
    "event_id": st.text(max_size=5) | json_values,
    "event_time": st.sampled_from(["2025-07-01T00:00:00Z", "2025-07-01T00:00:00+05:30", "nope", ""])
    | json_values,
    "user_id": st.integers(min_value=-2, max_value=2**64) | json_values,
    "operation_type": st.sampled_from(["chat", ""]) | json_values,
    "model": st.sampled_from(["gpt-4o", "dall-e-3", "unknown"]) | json_values,
    "input": st.fixed_dictionaries({}, optional={"text": st.text(max_size=10) | json_values}) | json_values,
    "output": st.fixed_dictionaries({}, optional={"text": st.text(max_size=10), "image": json_values}),
    "usage": st.fixed_dictionaries(
        {},
        optional={
            k: st.integers(-5, 10**6) | json_values for k in ("input_tokens", "output_tokens", "images")
        },
    ),
    "ai_tier": st.sampled_from(["free", "pro", "enterprise", "gold"]) | json_values,
    "metadata": json_values,
}
events = st.fixed_dictionaries({}, optional=field_values)


def _spliced(event: dict[str, Any], metadata: bytes) -> bytes:
    return json.dumps({**event, "metadata": 0}).encode().replace(b'"metadata": 0', b'"metadata": ' + metadata)


#: Metadata that breaks the parsers' own limits: nesting around orjson's and the contract's depth
#: limits (and past the stdlib's recursion limit), integers of any number of digits, huge exponents.
hostile_metadata = st.one_of(
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 400).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 6000).map(lambda n: b"9" * n),
    st.integers(300, 400).map(lambda n: f"1e{n}".encode()),
    st.integers(-400, -300).map(lambda n: f"-1e{-n}".encode()),
)
lines = st.one_of(
    events.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.builds(_spliced, events, hostile_metadata),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(lines, min_size=1, max_size=30))
def test_every_record_is_either_an_event_or_a_dead_letter(raws: list[bytes]) -> None:
    records = InputRecords("fuzz.jsonl", 0, list(range(1, len(raws) + 1)), raws)
    batch = enrich_records(records, SETTINGS, no_images, SCHEMA)
    assert batch.events.num_rows + len(batch.dead_letters) == len(raws)
    kept = set(batch.events.column("line_no").to_pylist())
    rejected = {d.line_no for d in batch.dead_letters}
    assert kept.isdisjoint(rejected) and kept | rejected == set(records.line_nos)
    for letter in batch.dead_letters:
        assert letter.raw == raws[letter.line_no - 1]
        assert isinstance(letter.reason, Reason)
    assert batch.events.schema == SCHEMA


def _valid(**changes: Any) -> bytes:
    base = {
        "event_id": "v",
        "event_time": "2025-07-01T00:00:00Z",
        "user_id": 1,
        "operation_type": "chat",
        "model": "gpt-4o",
    }
    return orjson.dumps({**base, **changes})


def test_defaults_fill_in_for_absent_optional_fields() -> None:
    batch = enrich_records(InputRecords("f", 0, [1], [_valid()]), SETTINGS, no_images, SCHEMA)
    (row,) = batch.events.to_pylist()
    assert (row["input_tokens"], row["output_tokens"], row["images"]) == (0, 0, 0)
    assert (row["input_hash"], row["output_hash"], row["image_hash"]) == (None, None, None)
    assert (row["ai_tier"], row["modality"]) == (None, "text")  # the tier is resolved later


def test_offset_timestamps_are_stored_in_utc() -> None:
    batch = enrich_records(
        InputRecords("f", 0, [1], [_valid(event_time="2025-07-01T02:30:00+02:00")]),
        SETTINGS,
        no_images,
        SCHEMA,
    )
    assert batch.events.column("event_time").cast(pa.int64())[0].as_py() == 1751329800 * 1_000_000


def test_a_record_larger_than_any_valid_event_is_line_too_long() -> None:
    rules = SETTINGS.rules
    huge = b'{"event_id": "big", "metadata": {"blob": "' + b"x" * rules.max_record_bytes + b'"}}'
    batch = enrich_records(InputRecords("f", 0, [7], [huge]), SETTINGS, no_images, SCHEMA)
    (letter,) = batch.dead_letters
    assert (letter.reason, letter.line_no, letter.raw) == (Reason.LINE_TOO_LONG, 7, huge)


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"x": value}
    return value


def test_a_record_may_nest_exactly_as_deep_as_the_contract_allows() -> None:
    depth = SETTINGS.rules.max_depth  # the event object is the first level
    allowed = _valid(event_id="deep-ok", metadata=_nested(depth - 1))
    too_deep = _valid(event_id="deep-no", metadata=_nested(depth))
    batch = enrich_records(InputRecords("f", 0, [1, 2], [allowed, too_deep]), SETTINGS, no_images, SCHEMA)
    assert batch.events.column("event_id").to_pylist() == ["deep-ok"]
    assert json.loads(batch.events.column("metadata")[0].as_py()) == _nested(depth - 1)
    (letter,) = batch.dead_letters
    assert (letter.line_no, letter.reason) == (2, Reason.NESTING_TOO_DEEP)


def test_an_unexpected_error_on_one_record_is_its_dead_letter_not_the_runs() -> None:
    def broken_loader(path: str) -> bytes:
        raise OSError(5, "Input/output error")  # what a failing disk raises mid-read

    image = _valid(event_id="img", output={"image": {"path": "a.png"}})
    batch = enrich_records(InputRecords("f", 0, [1, 2], [image, _valid()]), SETTINGS, broken_loader, SCHEMA)
    assert batch.events.num_rows == 1
    (letter,) = batch.dead_letters
    assert (letter.reason, letter.event_id) == (Reason.INTERNAL_ERROR, "img")
    assert "OSError" in letter.detail and "Input/output error" in letter.detail
