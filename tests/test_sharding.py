"""Sharding (DESIGN.md, "Performance rules"): batches are keyed by a shard of ``event_id`` (dedup)
or ``user_id`` (rate limits, features), so an engine shuffles a few tables, not single events."""

import json
import os
import subprocess
import sys
import zlib
from collections import Counter

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from connectors.config import PipelineConfig
from pipelines.stages import build_enrich_settings
from transforms.cost import PriceBook
from transforms.event_batch import InputRecords, enrich_records, in_flight_schema
from transforms.sharding import split_by_shard, user_shard
from transforms.validate import EventRules

RULES = EventRules.from_json_schema(schemas.event_json_schema())
PRICES = PriceBook.from_rows(schemas.pricing_rows())
SCHEMA = in_flight_schema(schemas.arrow_schema("events"))


def no_images(path: str) -> bytes:
    raise AssertionError(f"these events carry no image, yet {path!r} was loaded")


def event_line(event_id: str, user_id: int = 42) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "event_time": "2025-03-01T12:00:00Z",
            "user_id": user_id,
            "operation_type": "text_generation",
            "model": "gpt-4o",
        }
    ).encode()


def enriched_shards(event_ids: list[str], shards: int) -> dict[str, int]:
    settings_ = build_enrich_settings(PipelineConfig(shards=shards))
    records = InputRecords(
        "a.jsonl", 0, list(range(1, len(event_ids) + 1)), [event_line(e) for e in event_ids]
    )
    batch = enrich_records(records, settings_, no_images, SCHEMA)
    assert batch.dead_letters == []
    return dict(
        zip(
            batch.events.column("event_id").to_pylist(),
            batch.events.column("_shard").to_pylist(),
            strict=True,
        )
    )


shard_keys = st.lists(st.integers(min_value=0, max_value=6), max_size=60)


@given(shard_keys, st.integers(min_value=1, max_value=4))
def test_split_returns_every_row_once_grouped_by_shard_in_ascending_order(
    keys: list[int], chunks: int
) -> None:
    table = pa.table({"row": list(range(len(keys)))})
    step = max(1, len(keys) // chunks)
    shard = pa.chunked_array([keys[i : i + step] for i in range(0, len(keys), step)] or [[]], pa.int64())

    parts = list(split_by_shard(table, shard))

    seen = [shard_no for shard_no, _ in parts]
    assert seen == sorted(set(keys))  # ascending, each shard present once, no empty parts
    rows = [row for _, part in parts for row in part.column("row").to_pylist()]
    assert sorted(rows) == list(range(len(keys)))  # every row exactly once
    for shard_no, part in parts:
        assert part.num_rows > 0
        assert {keys[row] for row in part.column("row").to_pylist()} == {shard_no}


@given(shard_keys)
def test_rows_of_one_shard_keep_their_input_order(keys: list[int]) -> None:
    table = pa.table({"row": list(range(len(keys)))})
    for shard_no, part in split_by_shard(table, pa.array(keys, pa.int64())):
        expected = [row for row, key in enumerate(keys) if key == shard_no]
        assert part.column("row").to_pylist() == expected


def test_split_keeps_every_column() -> None:
    table = pa.table({"event_id": ["a", "b", "c"], "user_id": [1, 2, 3]})
    parts = dict(split_by_shard(table, pa.array([1, 0, 1])))
    assert parts[0].to_pylist() == [{"event_id": "b", "user_id": 2}]
    assert parts[1].to_pylist() == [
        {"event_id": "a", "user_id": 1},
        {"event_id": "c", "user_id": 3},
    ]
    assert parts[0].schema == table.schema


def test_split_of_an_empty_table_yields_nothing() -> None:
    table = pa.table({"row": pa.array([], pa.int64())})
    assert list(split_by_shard(table, pa.array([], pa.int64()))) == []


@given(
    st.lists(st.integers(min_value=1, max_value=2**63 - 1), max_size=40),
    st.integers(min_value=1, max_value=64),
)
def test_user_shard_is_user_id_modulo_shards(user_ids: list[int], shards: int) -> None:
    table = pa.table({"user_id": pa.array(user_ids, pa.int64())})
    assert user_shard(table, shards).to_pylist() == [u % shards for u in user_ids]


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
)
def test_all_of_one_users_rows_land_in_one_shard(user_ids: list[int], shards: int) -> None:
    table = pa.table({"user_id": pa.array(user_ids, pa.int64()), "row": list(range(len(user_ids)))})
    parts = list(split_by_shard(table, user_shard(table, shards)))
    shards_of_user: dict[int, set[int]] = {}
    for shard_no, part in parts:
        assert 0 <= shard_no < shards
        for user_id in part.column("user_id").to_pylist():
            shards_of_user.setdefault(user_id, set()).add(shard_no)
    assert all(len(found) == 1 for found in shards_of_user.values())
    assert Counter(u for _, p in parts for u in p.column("user_id").to_pylist()) == Counter(user_ids)


event_ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=128)


@settings(deadline=None)
@given(st.lists(event_ids, min_size=1, max_size=20, unique=True), st.integers(1, 64))
def test_event_shard_is_crc32_of_event_id_modulo_shards(ids: list[str], shards: int) -> None:
    found = enriched_shards(ids, shards)
    assert found == {e: zlib.crc32(e.encode("utf-8")) % shards for e in ids}


def test_event_shard_is_the_same_in_every_process() -> None:
    ids = ["evt-1", "evt-2", "\u00e9v\u00e9nement", "\U0001f600", "x" * 128]
    here = enriched_shards(ids, 16)
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_sharding import enriched_shards\n"
        "print(json.dumps(enriched_shards(json.loads(sys.argv[2]), 16)))\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script, os.path.dirname(__file__), json.dumps(ids)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(done.stdout) == here
