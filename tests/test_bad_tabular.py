"""CSV and Parquet inputs that broke whole runs: each bad row is now a dead letter of its own, with
the reason of the rule it breaks, and every other row is processed. Only an input that can't be
read as a whole (an ambiguous header) ends the run, with one line."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import read_dataset, run_cli, run_pipeline

COLUMNS = ["event_id", "event_time", "user_id", "operation_type", "model", "input.text"]


def csv_row(event_id: str, **cells: str) -> dict[str, str]:
    row = {
        "event_id": event_id,
        "event_time": "2025-07-01T09:00:00Z",
        "user_id": "7",
        "operation_type": "chat",
        "model": "gpt-4o",
        "input.text": "hello",
    }
    return row | cells


def csv_text(rows: list[dict[str, str]], columns: list[str]) -> str:
    """The rows as CSV, header first."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def outcome(out: Path) -> tuple[list[str], dict[int, tuple[str, str]]]:
    events = [e["event_id"] for e in read_dataset(out, "events", "event_id")]
    dead = {d["line_no"]: (d["reason"], d["detail"]) for d in read_dataset(out, "dead_letter", "line_no")}
    return events, dead


def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path) -> None:
    text = csv_text([csv_row("bom-1"), csv_row("bom-2")], COLUMNS)
    (tmp_path / "plain.csv").write_text(text, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    plain = run_pipeline([tmp_path / "plain.csv"], tmp_path / "o1").summary()
    marked = run_pipeline([tmp_path / "bom.csv"], tmp_path / "o2").summary()
    assert plain["events_processed"] == marked["events_processed"] == 2
    assert marked["events_dead_lettered"] == 0


def test_jsonl_with_a_byte_order_mark_keeps_its_first_event(tmp_path: Path) -> None:
    line = b'{"event_id": "j1", "event_time": "2025-07-01T09:00:00Z", "user_id": 7, '
    line += b'"operation_type": "chat", "model": "gpt-4o"}\n'
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line)
    summary = run_pipeline([tmp_path / "bom.jsonl"], tmp_path / "out").summary()
    assert (summary["events_processed"], summary["events_dead_lettered"]) == (1, 0)


def test_csv_bad_rows_are_dead_letters_and_the_rest_is_processed(tmp_path: Path, png_bytes: bytes) -> None:
    inline = base64.b64encode(png_bytes + bytes(150_000)).decode()  # a cell past csv's 128 KiB limit
    head = "event_id,event_time,user_id,operation_type,model,input.text,output.image.base64,output.image.mime"
    valid = "2025-07-01T09:00:00Z,7,chat,gpt-4o"
    lines = [
        head,
        f"c-1,{valid},hello,,",
        f"c-image,{valid},draw,{inline},image/png",
        f'c-quote,{valid},"a ""quoted"" line\rand another",,',  # a CR inside quotes is text
        "c-short,2025-07-01T09:00:00Z,7",  # too few cells
        "",  # a blank line: no record
        f"c-2,{valid},hello,,",
        f'c-open,{valid},"never closed,,',  # an unclosed quote swallows the rest of the file
        f"c-swallowed,{valid},hello,,",
    ]
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = run_pipeline([path], tmp_path / "out").summary()
    events, dead = outcome(tmp_path / "out")
    assert events == ["c-1", "c-2", "c-image", "c-quote"]
    texts = {e["event_id"]: e["input_hash"] for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert texts["c-quote"] == hashlib.sha256(b'a "quoted" line\rand another').hexdigest()
    # The quoted CR ends a physical line: line numbers count lines, as an editor shows them.
    assert dead[6] == ("malformed_row", "row has 3 cells; the header has 8")
    assert dead[9][0] == "malformed_row" and "quote opened in this record is never closed" in dead[9][1]
    assert summary["blank_lines"] == 1
    assert summary["events_read"] == summary["events_processed"] + summary["events_dead_lettered"] == 6


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_csv_lines_may_end_in_any_of_the_three_ways(tmp_path: Path, newline: str) -> None:
    text = csv_text([csv_row("n-1"), csv_row("n-2")], COLUMNS).replace("\n", newline)
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode())
    run_pipeline([path], tmp_path / "out")
    events = {e["event_id"]: e["line_no"] for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert events == {"n-1": 2, "n-2": 3}


def test_a_csv_record_past_the_size_limit_is_cut_while_read(tmp_path: Path) -> None:
    huge = "x" * (16 << 20)  # past the ~15 MB any valid event can take
    text = csv_text([csv_row("c-1"), csv_row("c-huge", **{"input.text": huge}), csv_row("c-2")], COLUMNS)
    path = tmp_path / "big.csv"
    path.write_text(text, encoding="utf-8")
    run_pipeline([path], tmp_path / "out")
    events, dead = outcome(tmp_path / "out")
    assert events == ["c-1", "c-2"]
    assert dead[3][0] == "line_too_long"
    (letter,) = read_dataset(tmp_path / "out", "dead_letter", "line_no")
    assert letter["raw_truncated"] and len(letter["raw"]) == 1 << 20


def test_a_csv_header_naming_a_column_twice_ends_the_run_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("event_id,event_time,event_id\na,b,c\n")
    result = run_cli("run", "--input", path, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: input {str(path)!r} names column 'event_id' more than once"


def parquet_rows(table: pa.Table, path: Path, **options: Any) -> Path:
    pq.write_table(table, path, **options)
    return path


def base_columns(ids: list[str]) -> dict[str, Any]:
    n = len(ids)
    return {
        "event_id": ids,
        "event_time": ["2025-07-01T09:00:00Z"] * n,
        "user_id": [7] * n,
        "operation_type": ["chat"] * n,
        "model": ["gpt-4o"] * n,
    }


def test_parquet_values_json_cannot_carry_are_dead_letters_of_their_row(tmp_path: Path) -> None:
    ids = ["p-decimal", "p-nan", "p-binary-text", "p-bad-bytes", "p-ok"]
    metadata = pa.array(
        [
            {"price": Decimal("1.50"), "score": 0.5},
            {"price": None, "score": math.nan},
            None,
            None,
            {"price": Decimal("2"), "score": None},
        ],
        pa.struct([("price", pa.decimal128(10, 2)), ("score", pa.float64())]),
    )
    texts = pa.array([None, None, "prompt é".encode(), b"\xff\xfe", None], pa.binary())
    table = pa.table({**base_columns(ids), "metadata": metadata, "input.text": texts})
    run_pipeline([parquet_rows(table, tmp_path / "in.parquet")], tmp_path / "out")
    events = {e["event_id"]: e for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert sorted(events) == ["p-binary-text", "p-decimal", "p-ok"]
    assert events["p-decimal"]["metadata"] == '{"price":1.5,"score":0.5}'
    assert events["p-ok"]["metadata"] == '{"price":2}'
    _, dead = outcome(tmp_path / "out")
    assert dead[2] == ("out_of_range", "metadata.score is nan, which JSON cannot carry")
    assert dead[4] == ("invalid_utf8", "input.text holds bytes that are not UTF-8")


def test_parquet_timestamps_outside_what_python_holds_are_out_of_range(tmp_path: Path) -> None:
    ok = int(datetime(2025, 7, 1, 9, tzinfo=UTC).timestamp())
    beyond_9999 = 253402300800  # 10000-01-01T00:00:00Z in seconds: Arrow holds it, Python does not
    columns = base_columns(["t-ok", "t-far"])
    zoned = pa.table(columns | {"event_time": pa.array([ok, beyond_9999], pa.timestamp("s", tz="UTC"))})
    run_pipeline([parquet_rows(zoned, tmp_path / "zoned.parquet")], tmp_path / "o1")
    events, dead = outcome(tmp_path / "o1")
    assert events == ["t-ok"] and dead[2][0] == "timestamp_out_of_range"

    naive = pa.table(columns | {"event_time": pa.array([ok, ok], pa.timestamp("s"))})  # no zone
    run_pipeline([parquet_rows(naive, tmp_path / "naive.parquet")], tmp_path / "o2")
    events, dead = outcome(tmp_path / "o2")
    assert events == [] and dead[1][0] == dead[2][0] == "invalid_timestamp"


def test_parquet_structs_nested_past_the_contract_are_too_deep(tmp_path: Path) -> None:
    value: Any = 1
    kind: pa.DataType = pa.int64()
    for _ in range(200):
        value, kind = {"x": value}, pa.struct([("x", kind)])
    table = pa.table({**base_columns(["deep", "flat"]), "metadata": pa.array([value, None], kind)})
    # Arrow's own schema record can't nest this deep; readers rebuild it from the Parquet schema.
    run_pipeline([parquet_rows(table, tmp_path / "deep.parquet", store_schema=False)], tmp_path / "out")
    events, dead = outcome(tmp_path / "out")
    assert events == ["flat"] and dead[1][0] == "nesting_too_deep"


def test_a_parquet_input_naming_a_column_twice_ends_the_run_with_one_line(tmp_path: Path) -> None:
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["event_id", "event_id"])
    path = parquet_rows(table, tmp_path / "twice.parquet")
    result = run_cli("run", "--input", path, "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: input {str(path)!r} names column 'event_id' more than once"


@pytest.mark.parametrize("blank", ["\n", "\r\n"])
def test_blank_csv_lines_carry_no_record(tmp_path: Path, blank: str) -> None:
    text = (
        csv_text([csv_row("b-1")], COLUMNS)
        + blank
        + blank
        + csv_text([csv_row("b-2")], COLUMNS).split("\n", 1)[1]
    )
    path = tmp_path / "blank.csv"
    path.write_bytes(text.encode())
    summary = run_pipeline([path], tmp_path / "out").summary()
    assert (summary["events_processed"], summary["events_dead_lettered"], summary["blank_lines"]) == (2, 0, 2)


def test_a_csv_integer_of_thousands_of_digits_is_out_of_range_and_others_stay(tmp_path: Path) -> None:
    text = csv_text(
        [csv_row("c-1"), csv_row("c-big", user_id="9" * 5000), csv_row("c-digits", user_id="١٢٣")], COLUMNS
    )
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    run_pipeline([tmp_path / "in.csv"], tmp_path / "out")
    events, dead = outcome(tmp_path / "out")
    assert events == ["c-1"]
    assert dead[3][0] == "out_of_range"
    assert dead[4] == ("wrong_type", "user_id must be an integer, got string")  # digits, but not ASCII ones


def test_a_csv_header_name_that_is_not_utf8_is_named_in_its_rows_dead_letters(tmp_path: Path) -> None:
    head = ",".join(COLUMNS).encode() + b",x\xff"
    rows = [
        b"c-1,2025-07-01T09:00:00Z,7,chat,gpt-4o,hello,",
        b"c-2,2025-07-01T09:00:00Z,7,chat,gpt-4o,hello,v",
    ]
    (tmp_path / "in.csv").write_bytes(b"\n".join([head, *rows]) + b"\n")
    run_pipeline([tmp_path / "in.csv"], tmp_path / "out")
    events, dead = outcome(tmp_path / "out")
    assert events == ["c-1"]  # its cell in that column is empty: absent
    assert dead[3] == ("unknown_field", "x\\xff is not in the contract")


def test_an_input_whose_path_is_not_utf8_is_read(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/d\xfe"
    os.mkdir(folder)
    with open(folder + b"/in\xff.csv", "wb") as fh:
        fh.write(csv_text([csv_row("c-1")], COLUMNS).encode())
    run_pipeline([os.fsdecode(folder + b"/in\xff.csv")], tmp_path / "out")
    (event,) = read_dataset(tmp_path / "out", "events", "event_id")
    assert event["source"].endswith("/d\\xfe/in\\xff.csv")


def test_a_quoted_csv_cell_past_the_limit_is_one_dead_letter_and_reading_resumes_after_it(
    tmp_path: Path,
) -> None:
    huge = "a\n" * (8 << 20)  # 16 MiB over millions of lines, inside one quoted cell
    text = csv_text([csv_row("c-1"), csv_row("c-huge", **{"input.text": huge}), csv_row("c-2")], COLUMNS)
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    summary = run_pipeline([tmp_path / "in.csv"], tmp_path / "out").summary()
    events, dead = outcome(tmp_path / "out")
    assert events == ["c-1", "c-2"]
    assert list(dead) == [3] and dead[3][0] == "line_too_long"
    assert summary["events_read"] == 3


def test_two_columns_giving_one_field_make_the_row_malformed_and_dots_in_struct_keys_stay(
    tmp_path: Path,
) -> None:
    ids = ["p-both", "p-dotted-key"]
    table = pa.table(
        {
            **base_columns(ids),
            "input": pa.array([{"text": "from the struct"}, None], pa.struct([("text", pa.string())])),
            "input.text": ["from the column", "only here"],
            "metadata": pa.array(
                [None, {"a.b": 1, "a": 2}], pa.struct([("a.b", pa.int64()), ("a", pa.int64())])
            ),
        }
    )
    run_pipeline([parquet_rows(table, tmp_path / "in.parquet")], tmp_path / "out")
    events = {e["event_id"]: e for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert list(events) == ["p-dotted-key"] and events["p-dotted-key"]["metadata"] == '{"a.b":1,"a":2}'
    _, dead = outcome(tmp_path / "out")
    assert dead[1][0] == "malformed_row" and "gives a field another column gives" in dead[1][1]


def test_parquet_values_past_64_bits_or_nested_too_deep_are_dead_letters(tmp_path: Path) -> None:
    big = pa.array(
        [None, {"n": Decimal("1" + "0" * 37)}, None, None], pa.struct([("n", pa.decimal128(38, 0))])
    )
    table = pa.table({**base_columns(["ok", "big", "text", "bad-utf8"]), "metadata": big})
    texts = pa.array([None, None, "fine", None], pa.string())
    bad = pa.array([None, None, None, b"bad\xff"], pa.binary()).view(
        pa.string()
    )  # a string column holding non-UTF-8
    table = table.append_column("input.text", pa.concat_arrays([texts.slice(0, 3), bad.slice(3)]))
    run_pipeline([parquet_rows(table, tmp_path / "in.parquet")], tmp_path / "out")
    events, dead = outcome(tmp_path / "out")
    assert events == ["ok", "text"]
    assert dead[2][0] == "out_of_range" and dead[4][0] == "invalid_utf8"

    value: Any = 1
    kind: pa.DataType = pa.int64()
    for _ in range(300):
        value, kind = [value], pa.list_(kind)
    deep = pa.table({**base_columns(["deep", "flat"]), "metadata.list": pa.array([value, None], kind)})
    run_pipeline([parquet_rows(deep, tmp_path / "deep.parquet", store_schema=False)], tmp_path / "o2")
    events, dead = outcome(tmp_path / "o2")
    assert events == ["flat"] and dead[1][0] == "nesting_too_deep"


def test_parquet_rows_are_read_in_batches_bounded_by_their_decoded_size(tmp_path: Path) -> None:
    import schemas
    from connectors.input_batches import BATCH_BYTES
    from connectors.inputs import discover_inputs, plan_splits
    from connectors.readers import read_split
    from transforms.validate import EventRules

    n, blob = 60, "x" * (4 << 20)  # 240 MiB once decoded, a few hundred KiB in the file
    metadata = pa.StructArray.from_arrays([pa.array([blob] * n).dictionary_encode()], names=["blob"])
    path = parquet_rows(
        pa.table({**base_columns([f"d{i}" for i in range(n)]), "metadata": metadata}), tmp_path / "d.parquet"
    )
    assert path.stat().st_size < 1 << 20
    rules = EventRules.from_json_schema(schemas.event_json_schema())
    (split,) = plan_splits(discover_inputs([str(path)], tmp_path / "spool"), 1 << 25)
    weights = [sum(map(len, records.raws)) for records in read_split(split, 10_000, rules)]
    assert weights and max(weights) <= BATCH_BYTES + (5 << 20)  # a batch, plus the JSON around a row
    assert sum(weights) > n * len(blob)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab," \r\n', max_size=16), st.lists(st.integers(0, 17), max_size=3))
def test_the_quote_tracker_agrees_with_the_csv_module(text: str, cuts: list[int]) -> None:
    from connectors.csv_source import _CellState

    text += "\n"
    try:
        rows = list(csv.reader(io.StringIO(text + "END,END\n", newline=""), strict=True))
    except csv.Error:
        return  # not CSV: the reader dead-letters it whatever the tracker says
    state, start = _CellState(), 0
    for cut in [*sorted(min(c, len(text)) for c in cuts), len(text)]:
        state.feed(text[start:cut])
        start = cut
    assert state.quoted == (rows[-1] != ["END", "END"])


def test_a_long_row_with_a_quote_inside_an_unquoted_cell_is_one_dead_letter(tmp_path: Path) -> None:
    text = csv_text(
        [csv_row("c-1"), csv_row("c-huge", **{"input.text": 'he said "hi ' + "x" * (16 << 20)})], COLUMNS
    )
    text += csv_text([csv_row(f"c-{i}") for i in range(2, 7)], COLUMNS).split("\n", 1)[1]
    (tmp_path / "in.csv").write_text(text, encoding="utf-8")
    summary = run_pipeline([tmp_path / "in.csv"], tmp_path / "out").summary()
    events, dead = outcome(tmp_path / "out")
    assert events == [f"c-{i}" for i in range(1, 7)] and list(dead) == [3]
    assert (summary["events_read"], summary["blank_lines"]) == (7, 0)


def test_a_crlf_row_exactly_at_the_limit_ends_where_it_ends(tmp_path: Path) -> None:
    import schemas
    from transforms.validate import EventRules

    limit = EventRules.from_json_schema(schemas.event_json_schema()).max_record_bytes
    head = ",".join(COLUMNS) + "\r\n"
    prefix = "c-at,2025-07-01T09:00:00Z,7,chat,gpt-4o,"
    at_limit = prefix + "x" * (limit - len(prefix)) + "\r\n"  # a read of limit + 1 ends between CR and LF
    bad = "c-bad,2025-07-01T09:00:00Z,bad,chat,gpt-4o,x\r\n"
    (tmp_path / "in.csv").write_text(head + at_limit + bad, encoding="utf-8", newline="")
    summary = run_pipeline([tmp_path / "in.csv"], tmp_path / "out").summary()
    _, dead = outcome(tmp_path / "out")
    assert summary["blank_lines"] == 0 and dead[3][0] == "wrong_type"  # the bad row is on line 3


def test_parquet_maps_and_fixed_size_lists_are_read_and_sized(tmp_path: Path) -> None:
    table = pa.table(
        {
            **base_columns(["p-map", "p-big-list", "p-list"]),
            "metadata.m": pa.array([[("k", 1)], None, None], pa.map_(pa.string(), pa.int64())),
            "metadata.l": pa.array([["a"], ["y" * (16 << 20)], ["b"]], pa.list_(pa.string(), 1)),
        }
    )
    run_pipeline([parquet_rows(table, tmp_path / "in.parquet")], tmp_path / "out")
    events = {e["event_id"]: e["metadata"] for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert events == {"p-map": '{"m":[["k",1]],"l":["a"]}', "p-list": '{"l":["b"]}'}
    _, dead = outcome(tmp_path / "out")
    assert dead[2][0] == "line_too_long"


def test_reading_parquet_holds_a_batch_not_a_read_of_huge_rows(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    # 24 rows of 12 MiB, a row group each (Arrow decodes a row group's column at once, so one
    # row group is the unit it holds): 288 MiB decoded, a few KiB on disk once compressed.
    rows = 24
    table = pa.table(
        {**base_columns([f"r{i}" for i in range(rows)]), "metadata.note": ["y" * (12 << 20)] * rows}
    )
    path = parquet_rows(table, tmp_path / "big.parquet", row_group_size=1, use_dictionary=False)
    del table
    probe = (
        "import sys, pyarrow as pa, schemas; from pathlib import Path; "
        "from connectors.inputs import discover_inputs, plan_splits; "
        "from connectors.readers import read_split; "
        "from transforms.validate import EventRules; "
        "rules = EventRules.from_json_schema(schemas.event_json_schema()); "
        "(split,) = plan_splits(discover_inputs([sys.argv[1]], Path(sys.argv[2])), 1 << 25); "
        "rows = sum(len(r.raws) for r in read_split(split, 10000, rules)); "
        "print(rows, pa.default_memory_pool().max_memory())"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(path), str(tmp_path / "spool")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    read, peak = map(int, result.stdout.split())
    assert read == rows and peak < 100 << 20  # Arrow held a few rows at a time, not all of them
