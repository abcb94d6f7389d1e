"""Duplicates (DESIGN.md, "Duplicates"): an identical copy of an event_id collapses, a differing
copy is a ``conflicting_duplicate`` dead letter, and the first copy in input order (input, then
line) is kept. Events read = events kept + dead-lettered + collapsed."""

import json
import random
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from tests.conftest import enrich_settings
from transforms.dead_letter import Reason
from transforms.dedup import (
    Verdict,
    collapse_duplicates,
    judge_against_store,
    stored_conflicts,
)
from transforms.event_batch import FINGERPRINT, InputRecords, enrich_records, in_flight_schema

SETTINGS = enrich_settings(shards=4)
SCHEMA = in_flight_schema(schemas.arrow_schema("events"))


def no_images(path: str) -> bytes:
    raise AssertionError(f"these events carry no image, yet {path!r} was loaded")


def event(event_id: str, prompt: str = "hello", input_tokens: int = 12) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_time": "2025-03-01T12:00:00Z",
        "user_id": 42,
        "operation_type": "text_generation",
        "model": "gpt-4o",
        "input": {"text": prompt},
        "output": {"text": "hi there"},
        "usage": {"input_tokens": input_tokens, "output_tokens": 3},
        "ai_tier": "pro",
    }


def reordered(obj: Any) -> Any:
    """The same JSON value with the keys of every object in reverse order."""
    if isinstance(obj, dict):
        return {key: reordered(obj[key]) for key in reversed(list(obj))}
    return obj


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def enrich(
    lines: list[bytes], source: str = "a.jsonl", source_order: int = 0, first_line: int = 1
) -> pa.Table:
    line_nos = list(range(first_line, first_line + len(lines)))
    batch = enrich_records(InputRecords(source, source_order, line_nos, lines), SETTINGS, no_images, SCHEMA)
    assert batch.dead_letters == []
    return batch.events


def kept_at(events: pa.Table) -> dict[str, tuple[str, int, bytes]]:
    rows = events.select(["event_id", "source", "line_no", "_raw"]).to_pylist()
    return {r["event_id"]: (r["source"], r["line_no"], r["_raw"]) for r in rows}


def test_identical_copy_with_keys_in_another_order_collapses() -> None:
    first = event("e1")
    table = enrich([line(first), line(reordered(first))])
    result = collapse_duplicates(table)
    assert result.collapsed == 1
    assert result.conflicts == []
    assert result.events.num_rows == 1
    assert kept_at(result.events) == {"e1": ("a.jsonl", 1, line(first))}


def test_copies_differing_only_in_how_an_integer_is_written_collapse() -> None:
    first = event("n1")
    second = {**first, "user_id": 42.0, "usage": {"input_tokens": 12.0, "output_tokens": 3}}
    result = collapse_duplicates(enrich([line(first), line(second)]))
    assert (result.events.num_rows, len(result.conflicts), result.collapsed) == (1, 0, 1)


def test_copy_equal_after_parsing_collapses() -> None:
    spelled = (
        b'{"event_id": "e1", "event_time": "2025-03-01T12:00:00Z", "user_id": 42, '
        b'"operation_type": "text_generation", "model": "gpt-4o", "input": {"text": "caf\xc3\xa9"}}'
    )
    escaped = (
        b'{ "model":"gpt-4o","event_id":"e1","user_id":42,"event_time":"2025-03-01T12:00:00Z",'
        b'"input":{"text":"caf\\u00e9"},"operation_type":"text_generation" }'
    )
    result = collapse_duplicates(enrich([spelled, escaped]))
    assert (result.events.num_rows, len(result.conflicts), result.collapsed) == (1, 0, 1)


def test_differing_copy_is_a_conflicting_duplicate_naming_the_first_copy() -> None:
    first, second = event("e1", prompt="hello"), event("e1", prompt="goodbye")
    table = pa.concat_tables(
        [
            enrich([line(event("other")), line(first)], source="in/a.jsonl", source_order=0),
            enrich([line(second)], source="in/b.jsonl", source_order=1, first_line=7),
        ]
    )
    result = collapse_duplicates(table)
    assert result.collapsed == 0
    assert kept_at(result.events)["e1"] == ("in/a.jsonl", 2, line(first))
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.reason == Reason.CONFLICTING_DUPLICATE
    assert str(conflict.reason) == "conflicting_duplicate"
    assert conflict.raw == line(second)
    assert (conflict.source, conflict.line_no) == ("in/b.jsonl", 7)
    assert conflict.event_id == "e1"
    assert conflict.event_time is not None
    assert "in/a.jsonl:2" in conflict.detail


def test_copy_differing_only_in_a_count_conflicts() -> None:
    table = enrich([line(event("e1", input_tokens=12)), line(event("e1", input_tokens=13))])
    result = collapse_duplicates(table)
    assert (result.events.num_rows, len(result.conflicts), result.collapsed) == (1, 1, 0)


def test_first_copy_is_kept_even_when_its_batch_arrives_last() -> None:
    first, later = event("e1", prompt="first"), event("e1", prompt="later")
    early_batch = enrich([line(first)], source="a.jsonl", source_order=0, first_line=9)
    late_batch = enrich([line(later)], source="b.jsonl", source_order=1, first_line=1)
    result = collapse_duplicates(pa.concat_tables([late_batch, early_batch]))
    assert kept_at(result.events) == {"e1": ("a.jsonl", 9, line(first))}
    assert [(d.source, d.line_no) for d in result.conflicts] == [("b.jsonl", 1)]


def test_within_one_input_the_earlier_line_is_kept() -> None:
    first, later = event("e1", prompt="first"), event("e1", prompt="later")
    lines_3_to_4 = enrich([line(event("x")), line(first)], first_line=3)
    lines_1_to_2 = enrich([line(event("y")), line(later)], first_line=1)
    # Line 2 comes before line 4 in the same input, whatever order the batches come in.
    result = collapse_duplicates(pa.concat_tables([lines_3_to_4, lines_1_to_2]))
    assert kept_at(result.events)["e1"] == ("a.jsonl", 2, line(later))


def test_every_later_copy_is_compared_with_the_first() -> None:
    a, b = event("e1", prompt="a"), event("e1", prompt="b")
    result = collapse_duplicates(enrich([line(a), line(b), line(reordered(a)), line(b)]))
    assert kept_at(result.events) == {"e1": ("a.jsonl", 1, line(a))}
    assert sorted(d.line_no for d in result.conflicts) == [2, 4]
    assert result.collapsed == 1


def test_unique_event_ids_pass_through_unchanged() -> None:
    table = enrich([line(event(f"e{i}")) for i in range(5)])
    result = collapse_duplicates(table)
    assert (len(result.conflicts), result.collapsed) == (0, 0)
    assert kept_at(result.events) == kept_at(table)


def test_empty_table_stays_empty() -> None:
    result = collapse_duplicates(enrich([]))
    assert (result.events.num_rows, len(result.conflicts), result.collapsed) == (0, 0, 0)


@dataclass(frozen=True)
class Copy:
    source_order: int
    line_no: int
    payload: dict[str, Any]
    raw: bytes

    @property
    def source(self) -> str:
        return f"input-{self.source_order}.jsonl"


#: One input line: which event_id, which payload variant, keys reordered or not.
copies = st.tuples(st.sampled_from(["e1", "e2", "e3", "\u00e94"]), st.integers(0, 2), st.booleans())


@st.composite
def inputs(draw: st.DrawFn) -> list[list[Copy]]:
    """A few inputs, each a list of lines holding copies of a few event_ids."""
    sources = []
    for source_order in range(draw(st.integers(min_value=1, max_value=3))):
        lines = []
        for line_no, (event_id, variant, shuffled) in enumerate(draw(st.lists(copies, max_size=8)), start=1):
            payload = event(event_id, prompt=f"variant {variant}")
            raw = line(reordered(payload) if shuffled else payload)
            lines.append(Copy(source_order, line_no, payload, raw))
        sources.append(lines)
    return sources


def batches_of(sources: list[list[Copy]], cuts: list[int]) -> list[pa.Table]:
    """Each input enriched in one or two batches (cut at a drawn line)."""
    tables = []
    for lines, cut in zip(sources, cuts, strict=False):
        for part in (lines[:cut], lines[cut:]):
            if part:
                tables.append(
                    enrich(
                        [c.raw for c in part],
                        source=part[0].source,
                        source_order=part[0].source_order,
                        first_line=part[0].line_no,
                    )
                )
    return tables


@settings(max_examples=60, deadline=None)
@given(
    inputs(),
    st.lists(st.integers(min_value=0, max_value=8), min_size=3, max_size=3),
    st.randoms(use_true_random=False),
)
def test_duplicate_rule_holds_whatever_the_batch_order(
    sources: list[list[Copy]], cuts: list[int], rnd: random.Random
) -> None:
    tables = batches_of(sources, cuts)
    rnd.shuffle(tables)
    table = pa.concat_tables(tables, promote_options="none") if tables else enrich([])

    result = collapse_duplicates(table)

    by_id: dict[str, list[Copy]] = {}
    for lines in sources:
        for c in lines:
            by_id.setdefault(c.payload["event_id"], []).append(c)
    expected_kept, expected_conflicts, expected_collapsed = {}, {}, 0
    for event_id, group in by_id.items():
        first = min(group, key=lambda c: (c.source_order, c.line_no))
        expected_kept[event_id] = (first.source, first.line_no, first.raw)
        for c in group:
            if c is first:
                continue
            if c.payload == first.payload:
                expected_collapsed += 1
            else:
                expected_conflicts[(c.source, c.line_no, c.raw)] = f"{first.source}:{first.line_no}"

    assert kept_at(result.events) == expected_kept
    assert result.events.num_rows == len(expected_kept)
    assert sorted((d.source, d.line_no, d.raw) for d in result.conflicts) == sorted(expected_conflicts)
    for d in result.conflicts:
        assert d.reason == Reason.CONFLICTING_DUPLICATE
        assert expected_conflicts[(d.source, d.line_no, d.raw)] in d.detail
    assert result.collapsed == expected_collapsed
    # Conservation: every row read is kept, dead-lettered or collapsed.
    assert table.num_rows == result.events.num_rows + len(result.conflicts) + result.collapsed


def test_against_stored_rows_only_a_differing_payload_conflicts() -> None:
    events = enrich([line(event(i)) for i in ("same", "other", "legacy", "new", "Same")])
    mine = dict(
        zip(events.column("event_id").to_pylist(), events.column(FINGERPRINT).to_pylist(), strict=True)
    )
    stored = {"same": mine["same"], "other": b"\x00" * 16, "legacy": None, "unrelated": b"\x01" * 16}
    verdicts = judge_against_store(events, stored)
    assert [Verdict(v) for v in verdicts] == [
        Verdict.STORED,
        Verdict.CONFLICT,
        Verdict.STORED,  # stored before fingerprints were kept: never a conflict
        Verdict.NEW,
        Verdict.NEW,  # event ids compare exactly: "Same" is not "same"
    ]
    (letter,) = stored_conflicts(events, [1], "an earlier run")
    assert (letter.event_id, letter.reason, letter.line_no) == ("other", Reason.CONFLICTING_DUPLICATE, 2)
    assert letter.raw == line(event("other")) and "earlier run" in letter.detail
    assert not judge_against_store(events, {}).any()
