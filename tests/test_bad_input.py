"""Every contract rule, broken once in a file among valid events: the violating line becomes a
dead letter with its raw bytes, source, line number and reason, and the rest of the file is
processed (DESIGN.md, "The input event")."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import jsonschema
import pytest

import schemas
from tests.conftest import read_dataset, run_pipeline


def event(_id: str, /, **changes: Any) -> dict[str, Any]:
    """A valid event, with fields replaced (or removed when the value is ``...``)."""
    base: dict[str, Any] = {
        "event_id": _id,
        "event_time": "2025-07-01T12:00:00Z",
        "user_id": 42,
        "operation_type": "chat_completion",
        "model": "gpt-4o",
        "input": {"text": "Summarise this paragraph."},
        "output": {"text": "Here is a summary."},
        "usage": {"input_tokens": 12, "output_tokens": 30},
        "ai_tier": "pro",
    }
    for key, value in changes.items():
        if value is ...:
            base.pop(key)
        else:
            base[key] = value
    return base


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


TEN_MB = 10 * 1024 * 1024


def nested(levels: int) -> Any:
    """A JSON value of ``levels`` nested objects around a number."""
    value: Any = 1
    for _ in range(levels):
        value = {"x": value}
    return value


def with_raw_metadata(event_id: str, metadata_json: bytes) -> bytes:
    """A valid event whose metadata is the given JSON text, spliced in unparsed."""
    return line(event(event_id, metadata=0)).replace(b'"metadata": 0', b'"metadata": ' + metadata_json)


# (case id, raw line, expected reason, is the JSON value checkable by the JSON Schema?)
CASES: list[tuple[str, bytes, str, bool]] = [
    ("truncated_json", b'{"event_id": "b-json", "event_time": ', "malformed_json", False),
    ("trailing_garbage", line(event("b-garbage")) + b" }", "malformed_json", False),
    ("nan_literal", b'{"event_id": "b-nan", "user_id": NaN}', "malformed_json", False),
    ("invalid_utf8", line(event("b-utf8")).replace(b"Summarise", b"Summ\xff\xfeise"), "invalid_utf8", False),
    ("array_not_object", b"[1, 2, 3]", "not_an_object", True),
    ("string_not_object", b'"just text"', "not_an_object", True),
    ("missing_model", line(event("b-missing", model=...)), "missing_field", True),
    ("missing_event_id", line(event("ignored", event_id=...)), "missing_field", True),
    ("user_id_as_string", line(event("b-type1", user_id="42")), "wrong_type", True),
    ("user_id_as_float", line(event("b-type2", user_id=4.5)), "wrong_type", True),
    ("user_id_as_bool", line(event("b-type3", user_id=True)), "wrong_type", True),
    ("tokens_as_string", line(event("b-type4", usage={"input_tokens": "12"})), "wrong_type", True),
    ("input_not_object", line(event("b-type5", input="hello")), "wrong_type", True),
    ("metadata_not_object", line(event("b-type6", metadata=[1])), "wrong_type", True),
    ("null_output_text", line(event("b-type7", output={"text": None})), "wrong_type", True),
    ("empty_event_id", line(event("")), "empty_field", True),
    ("empty_model", line(event("b-empty", model="")), "empty_field", True),
    ("event_id_129_chars", line(event("x" * 129)), "field_too_long", True),
    ("operation_type_51_chars", line(event("b-long1", operation_type="o" * 51)), "field_too_long", True),
    ("model_101_chars", line(event("b-long2", model="m" * 101)), "field_too_long", True),
    ("prompt_over_100k_chars", line(event("b-long3", input={"text": "p" * 100_001})), "field_too_long", True),
    ("user_id_zero", line(event("b-range1", user_id=0)), "out_of_range", True),
    ("user_id_2_pow_63", line(event("b-range2", user_id=2**63)), "out_of_range", True),
    (
        "user_id_beyond_64_bits",
        line(event("b-range3", user_id=...)).replace(
            b'"event_id"', b'"user_id": 123456789012345678901234567890, "event_id"'
        ),
        "out_of_range",
        True,
    ),
    ("escaped_lone_surrogate", line(event("b-utf8-2", input={"text": "\ud800"})), "invalid_utf8", False),
    ("negative_input_tokens", line(event("b-neg1", usage={"input_tokens": -1})), "negative_count", True),
    ("negative_images", line(event("b-neg2", usage={"images": -3})), "negative_count", True),
    ("timestamp_words", line(event("b-time1", event_time="yesterday")), "invalid_timestamp", True),
    (
        "timestamp_without_zone",
        line(event("b-time2", event_time="2025-07-01T12:00:00")),
        "invalid_timestamp",
        True,
    ),
    (
        "timestamp_month_13",
        line(event("b-time3", event_time="2025-13-01T00:00:00Z")),
        "invalid_timestamp",
        False,
    ),
    ("timestamp_as_number", line(event("b-time4", event_time=1751371200)), "wrong_type", True),
    (
        "timestamp_after_2038",
        line(event("b-time5", event_time="2038-01-19T03:14:08Z")),
        "timestamp_out_of_range",
        False,
    ),
    (
        "timestamp_at_epoch",
        line(event("b-time6", event_time="1970-01-01T00:00:00Z")),
        "timestamp_out_of_range",
        False,
    ),
    ("unknown_tier", line(event("b-tier", ai_tier="platinum")), "unknown_tier", True),
    ("tier_as_array", line(event("b-tier2", ai_tier=["pro"])), "wrong_type", True),
    ("unknown_top_level_field", line(event("b-field1", colour="red")), "unknown_field", True),
    ("unknown_usage_field", line(event("b-field2", usage={"cached_tokens": 3})), "unknown_field", True),
    (
        "image_path_climbs_out",
        line(event("b-path1", output={"image": {"path": "../outside.png"}})),
        "path_outside_input",
        False,
    ),
    (
        "image_path_absolute",
        line(event("b-path2", output={"image": {"path": "/etc/passwd"}})),
        "path_outside_input",
        False,
    ),
    (
        "image_symlink_out",
        line(event("b-path3", output={"image": {"path": "images/escape.png"}})),
        "path_outside_input",
        False,
    ),
    (
        "image_missing",
        line(event("b-img1", output={"image": {"path": "images/missing.png"}})),
        "image_not_found",
        False,
    ),
    (
        "image_bad_base64",
        line(event("b-img3", output={"image": {"base64": "not base64!!", "mime": "image/png"}})),
        "invalid_image",
        False,
    ),
    (
        "image_bad_mime",
        line(event("b-img4", output={"image": {"base64": "aGVsbG8=", "mime": "text/plain"}})),
        "invalid_image",
        True,
    ),
    (
        "image_both_forms",
        line(
            event(
                "b-img5",
                output={"image": {"path": "images/ok.png", "base64": "aGVsbG8=", "mime": "image/png"}},
            )
        ),
        "invalid_image",
        True,
    ),
    (
        "image_over_10_mb",
        line(
            event(
                "b-img6",
                output={
                    "image": {"base64": base64.b64encode(b"\0" * (TEN_MB + 1)).decode(), "mime": "image/png"}
                },
            )
        ),
        "image_too_large",
        False,
    ),
    (
        "cost_beyond_decimal_10_6",
        line(event("b-cost", usage={"output_tokens": 10**12})),
        "cost_out_of_range",
        False,
    ),
    # Records that used to raise inside the pipeline and end the whole run: each is now its own
    # dead letter, with the reason of the rule it breaks.
    # The event is the first level: metadata of 128 levels makes a record 129 deep, one past the limit.
    ("record_129_levels_deep", line(event("b-deep1", metadata=nested(128))), "nesting_too_deep", False),
    ("metadata_300_levels_deep", line(event("b-deep2", metadata=nested(300))), "nesting_too_deep", False),
    (
        "metadata_2000_levels_deep",
        with_raw_metadata("b-deep3", b"[" * 2000 + b"]" * 2000),
        "nesting_too_deep",
        False,
    ),
    (
        "metadata_100000_levels_deep",
        with_raw_metadata("b-deep4", b"[" * 100_000 + b"]" * 100_000),
        "nesting_too_deep",
        False,
    ),
    ("integer_of_5000_digits", with_raw_metadata("b-int", b"9" * 5000), "out_of_range", False),
    # orjson would read these as inexact floats: two events differing in them would collapse.
    (
        "integer_2_pow_64",
        with_raw_metadata("b-int2", b'{"order": 18446744073709551616}'),
        "out_of_range",
        False,
    ),
    (
        "integer_below_int64",
        with_raw_metadata("b-int3", b'{"n": -9223372036854775809}'),
        "out_of_range",
        False,
    ),
    ("user_id_1e17_not_exact", line(event("b-range4", user_id=1e17)), "out_of_range", False),
    ("number_beyond_a_double", with_raw_metadata("b-inf", b"1e400"), "out_of_range", False),
    (
        "offset_moves_time_past_year_9999",
        line(event("b-time7", event_time="9999-12-31T23:00:00-05:00")),
        "timestamp_out_of_range",
        False,
    ),
    (
        "offset_moves_time_before_year_1",
        line(event("b-time8", event_time="0001-01-01T00:30:00+01:00")),
        "timestamp_out_of_range",
        False,
    ),
    ("year_zero", line(event("b-time9", event_time="0000-06-01T00:00:00Z")), "timestamp_out_of_range", False),
    (
        "image_symlink_loop",
        line(event("b-img7", output={"image": {"path": "images/loop-a.png"}})),
        "image_unreadable",
        False,
    ),
    (
        "image_name_too_long",
        line(event("b-img8", output={"image": {"path": "images/" + "n" * 300 + ".png"}})),
        "image_unreadable",
        False,
    ),
    (
        "image_is_a_fifo",  # opening a FIFO for reading waits for a writer: the run must not hang
        line(event("b-img9", output={"image": {"path": "images/fifo.png"}})),
        "image_unreadable",
        False,
    ),
    (
        "image_is_a_directory",
        line(event("b-img10", output={"image": {"path": "images/folder.png"}})),
        "image_unreadable",
        False,
    ),
    (
        "image_path_with_nul",
        line(event("b-img11", output={"image": {"path": "images/ok.png\u0000.txt"}})),
        "invalid_image",
        False,
    ),
]

VALID = [
    event("ok-1"),
    event("ok-2", ai_tier=..., metadata={"app": "docs"}),
    event("ok-3", input={"text": ""}, output=..., usage=..., model="unpriced-model"),
    event(
        "ok-4",
        model="dall-e-3",
        operation_type="image_generation",
        output={"image": {"path": "images/ok.png"}},
        usage={"images": 1},
    ),
    event("ok-5", output={"text": "caption", "image": {"base64": "PNG", "mime": "image/png"}}),
    event("ok-dup"),
    event("ok-6", user_id=42.0, usage={"input_tokens": 1e2}),  # numbers with a zero fraction are integers
]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, png_bytes: bytes) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "ok.png").write_bytes(png_bytes)
    (root / "outside.png").write_bytes(png_bytes)
    os.symlink(root / "outside.png", data / "images" / "escape.png")
    os.symlink("loop-b.png", data / "images" / "loop-a.png")
    os.symlink("loop-a.png", data / "images" / "loop-b.png")
    os.mkfifo(data / "images" / "fifo.png")
    (data / "images" / "folder.png").mkdir()
    valid = [dict(v) for v in VALID]
    valid[4]["output"] = {
        "text": "caption",
        "image": {"base64": base64.b64encode(png_bytes).decode(), "mime": "image/png"},
    }
    lines: list[bytes] = []
    where: dict[str, int] = {}
    for i, (case, raw, _, _) in enumerate(CASES):
        lines.append(line(valid[i % len(valid)]) if i < len(valid) else line(event(f"ok-extra-{i}")))
        lines.append(raw)
        where[case] = len(lines)
    lines.append(line(event("ok-dup", usage={"input_tokens": 999})))  # conflicting copy
    where["conflicting_duplicate"] = len(lines)
    lines.append(b"   ")  # blank: not a record
    source = data / "events.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = root / "out"
    result = run_pipeline([source], out)
    dead = {row["line_no"]: row for row in read_dataset(out, "dead_letter", "line_no")}
    events = read_dataset(out, "events", "event_id")
    return {
        "source": str(source),
        "lines": lines,
        "where": where,
        "dead": dead,
        "events": events,
        "summary": result.summary(),
    }


@pytest.mark.parametrize(
    ("case", "raw", "reason"), [(c, r, why) for c, r, why, _ in CASES], ids=[c[0] for c in CASES]
)
def test_violating_line_is_dead_lettered_with_its_reason(
    bad_run: dict[str, Any], case: str, raw: bytes, reason: str
) -> None:
    line_no = bad_run["where"][case]
    row = bad_run["dead"].get(line_no)
    assert row is not None, f"line {line_no} ({case}) was not dead-lettered"
    assert row["reason"] == reason, row["detail"]
    assert row["source"] == bad_run["source"]
    assert bytes(row["raw"]) == raw[: 1 << 20]
    assert row["raw_truncated"] == (len(raw) > 1 << 20)
    assert row["detail"]


def test_conflicting_copy_is_dead_lettered_and_first_copy_kept(bad_run: dict[str, Any]) -> None:
    row = bad_run["dead"][bad_run["where"]["conflicting_duplicate"]]
    assert row["reason"] == "conflicting_duplicate"
    kept = [e for e in bad_run["events"] if e["event_id"] == "ok-dup"]
    assert len(kept) == 1 and kept[0]["input_tokens"] == 12


def test_every_valid_line_is_processed_despite_the_bad_ones(bad_run: dict[str, Any]) -> None:
    expected = {
        json.loads(raw)["event_id"] for raw in bad_run["lines"] if raw.startswith(b'{"event_id": "ok-')
    }
    assert {e["event_id"] for e in bad_run["events"]} == expected


def test_counts_keep_the_invariant_and_blank_lines_are_not_events(bad_run: dict[str, Any]) -> None:
    summary = bad_run["summary"]
    assert (
        summary["events_read"]
        == summary["events_processed"] + summary["events_dead_lettered"] + summary["duplicates_collapsed"]
    )
    assert summary["events_dead_lettered"] == len(CASES) + 1 == len(bad_run["dead"])
    assert summary["blank_lines"] == 1
    expected: dict[str, int] = {}
    for _, _, reason, _ in CASES:
        expected[reason] = expected.get(reason, 0) + 1
    expected["conflicting_duplicate"] = 1
    assert summary["dead_letters_by_reason"] == dict(sorted(expected.items()))


def test_dead_letter_partition_is_the_event_date_or_null(bad_run: dict[str, Any]) -> None:
    dead = bad_run["dead"]
    assert str(dead[bad_run["where"]["unknown_tier"]]["dt"]) == "2025-07-01"
    assert dead[bad_run["where"]["truncated_json"]]["dt"] is None  # __HIVE_DEFAULT_PARTITION__


@pytest.mark.parametrize(
    ("case", "raw"), [(c, r) for c, r, _, checkable in CASES if checkable], ids=[c[0] for c in CASES if c[3]]
)
def test_json_schema_rejects_what_the_fast_path_rejects(case: str, raw: bytes) -> None:
    validator = jsonschema.Draft202012Validator(schemas.event_json_schema())
    assert list(validator.iter_errors(json.loads(raw))), f"{case} passes the JSON Schema"


def test_json_schema_accepts_every_valid_event() -> None:
    validator = jsonschema.Draft202012Validator(schemas.event_json_schema())
    for obj in VALID:
        assert not list(validator.iter_errors(obj)), obj["event_id"]
