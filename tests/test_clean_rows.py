"""The columnar fast path only ever takes what the per-record rules take, and builds the same row.

Every test compares ``enrich_records`` (fast path first, the rest one at a time) with
``enrich_records(columnar=False)`` (every record one at a time, the reference): the events table,
column by column and row by row, and every dead letter, must be equal.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from loadgen.generate import generate_events
from tests.conftest import enrich_settings
from transforms.clean_rows import _micros, clean_rows
from transforms.cost import Price, event_cost
from transforms.dead_letter import ContractViolation, Reason
from transforms.event_batch import EnrichSettings, InputRecords, enrich_records, in_flight_schema
from transforms.hashing import ContentHasher

SETTINGS = enrich_settings(shards=16)
KEYED = EnrichSettings(SETTINGS.rules, SETTINGS.prices, ContentHasher(b"a secret key"), 16)
SCHEMA = in_flight_schema(schemas.arrow_schema("events"), content=True)


def no_images(path: str) -> bytes:
    raise ContractViolation(Reason.IMAGE_NOT_FOUND, path)


def both_ways(raws: list[bytes], settings: EnrichSettings = SETTINGS) -> int:
    """Enrich ``raws`` both ways, assert the results are equal; how many the fast path took."""
    records = InputRecords("t.jsonl", 0, list(range(1, len(raws) + 1)), raws)
    fast = enrich_records(records, settings, no_images, SCHEMA)
    reference = enrich_records(records, settings, no_images, SCHEMA, columnar=False)
    for name in SCHEMA.names:
        assert fast.events.column(name).to_pylist() == reference.events.column(name).to_pylist(), name
    assert fast.events.schema == reference.events.schema
    assert fast.dead_letters == reference.dead_letters
    rules = settings.rules
    taken = clean_rows(raws, records.line_nos, {}, rules, settings.prices, settings.hasher, settings.shards)
    return len(taken.positions)


# A valid event (every field drawn from its valid domain), then, in most examples, one field set
# to a value at, inside or past one of its rule's edges, or of another JSON type.
any_json = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def plain_times(draw: st.DrawFn) -> str:
    """RFC 3339 as producers write it: a fraction of 0 to 6 digits, ``Z`` or an offset."""
    when = draw(st.datetimes(datetime(1970, 1, 2), datetime(2038, 1, 18)))
    digits = draw(st.integers(0, 6))
    fraction = f".{when.microsecond:06d}"[: digits + 1] if digits else ""
    zone = draw(st.sampled_from(["Z", "+00:00", "+05:30", "-08:00", "+23:59", "-23:59"]))
    return when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


counts = st.integers(0, 10**6) | st.sampled_from([2**31 - 1, 2**31, 2**40])
valid_event = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=40),
        "event_time": plain_times(),
        "user_id": st.integers(1, 2**63 - 1),
        "operation_type": st.text(min_size=1, max_size=12),
        "model": st.sampled_from(
            ["gpt-4o", "gpt-4o-mini", "o3", "dall-e-3", "text-embedding-3-small", "unknown"]
        ),
    },
    optional={
        "ai_tier": st.sampled_from(["free", "pro", "enterprise"]),
        "input": st.fixed_dictionaries({}, optional={"text": st.text(max_size=30)}),
        "output": st.fixed_dictionaries({}, optional={"text": st.text(max_size=30)}),
        "usage": st.fixed_dictionaries(
            {}, optional={k: counts for k in ("input_tokens", "output_tokens", "images")}
        ),
        "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    },
)
LONG = ["x" * n for n in (50, 51, 100, 101, 128, 129)] + ["x" * 100_000, "x" * 100_001]
OTHER_TYPES = [None, True, 0, 7, -1.5, 1e300, "7", [], {}, [1], {"a": 1}]
COUNTS = [0, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 1.0, 2.5, 1e17, True, "3", None, [], {}]
#: Per field: values at, inside and past each of its rules' edges, and of other JSON types.
EDGES: dict[str, list[Any]] = {
    "event_id": ["", "é", "e\u0301", *LONG, *OTHER_TYPES],
    "event_time": [
        "2025-07-01T00:00:00.1234567Z", "2025-07-01t00:00:00z", "2025-07-01 00:00:00Z",
        "2025-02-29T00:00:00Z", "2024-02-29T12:00:00-23:59", "2025-07-01T24:00:00Z",
        "2025-07-01T23:60:00Z", "2025-07-01T23:59:60Z", "1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z",
        "2038-01-19T03:14:07Z", "2038-01-19T03:14:07.000001Z", "1970-01-01T01:00:00+01:00",
        "1970-01-01T00:59:59+01:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59",
        "2025-07-01T00:00:00+24:00", "2025-07-01T00:00:00+23:60", "2025-13-01T00:00:00Z",
        "2025-04-31T00:00:00Z", "2025-07-01T00:00:00", "2025-07-01T00:00:00+0530", "", *OTHER_TYPES,
    ],
    "user_id": [0, 1, -1, 2**63 - 1, 2**63, 2**64, 7.0, 7.5, 1e19, True, "7", None, [], {}],
    "operation_type": ["", *LONG, *OTHER_TYPES],
    "model": ["", "GPT-4O", *LONG, *OTHER_TYPES],
    "ai_tier": ["gold", "Free", "", *OTHER_TYPES],
    "input": [{}, {"text": ""}, {"text": None}, {"extra": 1}, *({"text": t} for t in LONG), *OTHER_TYPES],
    "output": [
        {}, {"text": None}, {"image": {"path": "a.png"}}, {"text": "a", "image": 1},
        *({"text": t} for t in LONG), *OTHER_TYPES,
    ],
    "usage": [
        {}, {"x": 1}, *({key: c} for key in ("input_tokens", "output_tokens", "images") for c in COUNTS),
        *OTHER_TYPES,
    ],
    "metadata": [{}, {"a": 1e300}, {"a": 1.5e19}, {"a": 18446744073709551615}, {"a": [[[]]]}, *OTHER_TYPES],
    "unknown": OTHER_TYPES,
}  # fmt: skip
perturbed = st.builds(
    lambda event, field_and_value: {**event, field_and_value[0]: field_and_value[1]},
    valid_event,
    st.sampled_from([(name, value) for name, values in EDGES.items() for value in values]),
)
deep = st.integers(120, 140).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
exponent = st.sampled_from([b"1e300", b"18446744073709551616", b"1.5e19", b"9223372036854775808"])


def _with_metadata(event: dict[str, Any], raw_metadata: bytes) -> bytes:
    text = json.dumps({**event, "metadata": 0})
    return text.replace('"metadata": 0', '"metadata": {"m": ' + raw_metadata.decode() + "}").encode()


def compact(event: dict[str, Any]) -> bytes:
    """As a producer would write it; orjson cannot write integers past 64 bits, json can."""
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:
        return json.dumps(event, separators=(",", ":")).encode()


lines = st.one_of(
    valid_event.map(compact),
    perturbed.map(compact),
    perturbed.map(lambda e: json.dumps(e).encode()),  # spaces, and escapes orjson would not write
    st.builds(_with_metadata, valid_event, deep | exponent),
    st.binary(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(lines, min_size=1, max_size=25))
def test_the_fast_path_builds_what_the_per_record_path_builds(raws: list[bytes]) -> None:
    both_ways(raws)


@settings(max_examples=60, deadline=None)
@given(st.lists(valid_event.map(compact) | perturbed.map(compact), min_size=1, max_size=10))
def test_so_it_does_with_a_keyed_hash(raws: list[bytes]) -> None:
    both_ways(raws, KEYED)


BASE = {"event_id": "e", "event_time": "2025-07-01T12:00:00Z", "user_id": 5, "operation_type": "chat",
        "model": "gpt-4o", "input": {"text": "hi"}, "output": {"text": "hello"},
        "usage": {"input_tokens": 3, "output_tokens": 4}}  # fmt: skip


@pytest.mark.parametrize("field", sorted(EDGES))
def test_every_edge_of_every_field_agrees(field: str) -> None:
    """Each edge value in a record otherwise valid, alone in its batch and beside valid records."""
    raws = [compact({**BASE, field: value}) for value in EDGES[field]]
    for raw in raws:
        both_ways([raw])
    both_ways([compact(BASE), *raws, compact({**BASE, "event_id": "f"})])


def test_the_fast_path_takes_nearly_every_valid_generated_event(tmp_path: Path) -> None:
    """Generated traffic (every kind of bad line mixed in, images too): the fast path takes the
    valid events without an image (all but the few whose metadata needs a closer look), and the
    two paths agree on every record."""
    generate_events(3000, tmp_path / "e.jsonl", seed=3, bad_rate=0.05, images=True)
    raws = (tmp_path / "e.jsonl").read_bytes().splitlines()
    taken = both_ways(raws)
    records = InputRecords("t.jsonl", 0, list(range(1, len(raws) + 1)), raws)
    valid = enrich_records(records, SETTINGS, no_images, SCHEMA, columnar=False).events
    without_image = valid.column("modality").to_pylist().count("text")
    assert 0.97 * without_image <= taken <= without_image


def test_a_batch_with_nothing_plain_or_nothing_else_still_agrees() -> None:
    assert both_ways([b"{", b"[]", b'"x"']) == 0
    good = orjson.dumps({"event_id": "a", "event_time": "2025-07-01T00:00:00Z", "user_id": 1,
                         "operation_type": "chat", "model": "gpt-4o"})  # fmt: skip
    assert both_ways([good]) == 1


#: Forms of JSON a producer may write that a decoder could read otherwise than orjson does (the
#: fast path decodes with msgspec, the per-record path with orjson): a repeated key (the last
#: wins), escaped keys and texts, whitespace, metadata with keys out of order at every level or
#: written twice, and a deep, a wide or a non-object metadata.
#: A valid record's fields, less its closing brace.
HEAD = rb'{"event_id":"a","event_time":"2025-07-01T00:00:00Z","user_id":1,"operation_type":"c","model":"o3"'
RAW_FORMS = [
    rb'{"event_id":"a","event_id":"b"' + HEAD[len(rb'{"event_id":"a"') :] + b"}",
    rb'{"event\u005fid":"\u00e9\u0301"' + HEAD[len(rb'{"event_id":"a"') :] + b"}",
    rb' { "event_id" : "a" , ' + HEAD[len(rb'{"event_id":"a",') :] + b" } ",
    HEAD + rb',"input":{"text":"x","text":"\ud83d\ude00\t\"\\\/\u2028"},"usage":{"images":1,"images":2}}',
    HEAD + rb',"metadata":{"z":{"b":1,"a":[{"d":null,"c":true}]},"\u00e9":2,"a":-0,'
    rb'"\uffff":3,"\ud83d\ude00":4}}',
    HEAD + rb',"metadata":{"a":1},"metadata":{"b":2.5}}',
    HEAD + rb',"metadata":{"a":1},"metadata":[1]}',
    HEAD + rb',"metadata":' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
    HEAD + rb',"metadata":{"a":"' + b"x" * 5000 + b'","n":1e5,"m":1E+2}}',
    HEAD + rb',"output":{"text":"y","image":{"path":"a.png"}}}',
    HEAD + rb',"usage":{"input_tokens":1,"input_tokens":-1}}',
    HEAD + rb',"user_id":2,"ai_tier":"pro","ai_tier":"gold"}',
]


@pytest.mark.parametrize("raw", RAW_FORMS)
def test_every_raw_form_agrees(raw: bytes) -> None:
    both_ways([raw])


@pytest.mark.parametrize("scale", [0, 3, 6, 9, 18])
@settings(max_examples=80, deadline=None)
@given(
    tokens=st.lists(st.tuples(*[st.integers(0, 2**31 - 1)] * 3), min_size=1, max_size=20),
    units=st.tuples(*[st.integers(0, 10**7)] * 3),
)
def test_costs_over_arrays_equal_event_cost_row_by_row(
    scale: int, tokens: list[tuple[int, int, int]], units: tuple[int, int, int]
) -> None:
    price = Price("m", date(2024, 1, 1), *(Decimal(u).scaleb(-scale) for u in units))
    columns = [np.asarray(column, dtype=np.int64) for column in zip(*tokens, strict=True)]
    micros = _micros(price, *columns)
    expected = [int(event_cost(price, *row).scaleb(6)) for row in tokens]
    if micros is None:  # too large for 64 bits: the per-record path prices these
        assert max(units) * 1000 * 2**31 * 10 ** max(0, 3 - scale) >= 2**61
    else:
        assert micros.tolist() == expected
