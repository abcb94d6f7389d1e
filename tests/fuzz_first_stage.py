"""Fuzz the first stage (read, parse, validate, hash, price, collapse duplicates) at scale.

    python tests/fuzz_first_stage.py [--cases 100000] [--seed 0] [--files 100]   # make fuzz

Cases are drawn from the contract's own grammar (``schemas/event.schema.json``: its fields, types
and limits, each at, below and past its bounds), then spoilt at the byte level (cut, flipped,
spliced, wrapped in a byte order mark or a stray carriage return), with deep nesting, integers of
thousands of digits, numbers past a double's range, lone surrogates, NUL bytes and hostile image
paths mixed in. They are written as JSONL and CSV files and read back through the real sources.

For every file it checks that nothing raised, that the columnar fast path and the per-record path
agree on every batch, that the invariant holds (records read = events +
dead letters + duplicates collapsed, blank lines aside), that every dead letter keeps its record's
bytes and a known reason, and, on a sample, that every event it accepted passes the JSON Schema.
It exits 1 on the first broken check, printing the seed and file that reproduce it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402
import pyarrow as pa  # noqa: E402

import schemas  # noqa: E402
from connectors.inputs import InputFile, plan_splits  # noqa: E402
from connectors.readers import read_split  # noqa: E402
from tests.conftest import enrich_settings  # noqa: E402
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, Reason  # noqa: E402
from transforms.dedup import collapse_duplicates  # noqa: E402
from transforms.event_batch import InputRecords, enrich_records, in_flight_schema  # noqa: E402

SCHEMA = schemas.event_json_schema()
PROPS = SCHEMA["properties"]
SETTINGS = enrich_settings(shards=4)
IN_FLIGHT = in_flight_schema(schemas.arrow_schema("events"), content=True)  # every column a stage can build
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
REASONS = {str(reason) for reason in Reason}
PRICED = [row["model"] for row in schemas.pricing_rows()]


def no_images(path: str) -> bytes:
    """Images named by path resolve nowhere here: the loader's own rules are tested elsewhere."""
    raise ContractViolation(Reason.IMAGE_NOT_FOUND, path[:50])


class Grammar:
    """Draws values for each field of the contract, at and around its limits."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self, max_length: int) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.5:
            return "".join(rng.choice("abcXYZ019 -_.") for _ in range(rng.randint(1, 12)))
        if kind < 0.65:
            return rng.choice([max_length, max_length + 1, max_length - 1, 0, 1]) * rng.choice(
                "x\u00e9\U0001f642"
            )
        pool = [
            "\u0000",
            "\ud800",
            "\udfff",
            "\u00e9",
            "e\u0301",
            "\U0001f642",
            "\u202e",
            "\r",
            "\n",
            "\t",
            '"',
            "\\",
        ]
        return "".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))

    def integer(self) -> Any:
        return self.rng.choice(
            [
                0,
                1,
                -1,
                7,
                2**31,
                2**53 + 1,
                2**63 - 1,
                2**63,
                -(2**63),
                2**64,
                10**30,
                True,
                1.0,
                1.5,
                "12",
                None,
            ]
        )

    def timestamp(self) -> Any:
        rng = self.rng
        if rng.random() < 0.4:
            month, day, hour, second = (
                rng.randint(1, 9),
                rng.randint(10, 19),
                rng.randint(10, 19),
                rng.randint(0, 9),
            )
            return f"2025-0{month}-{day}T{hour}:00:0{second}Z"
        return rng.choice(
            [
                "1970-01-01T00:00:01Z", "1970-01-01T00:00:00Z", "2038-01-19T03:14:07Z",
                "2038-01-19T03:14:08Z", "9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00",
                "0000-01-01T00:00:00Z", "2025-02-29T00:00:00Z", "2025-13-01T00:00:00Z",
                "2025-07-01T24:00:00Z", "2025-07-01T23:59:60Z", "2025-07-01T00:00:00+24:00",
                "2025-07-01t00:00:00z", "2025-07-01 00:00:00+05:30", "2025-07-01T00:00:00.123456789123Z",
                "2025-07-01T00:00:00", "yesterday", "", 1751328000, None,
            ]
        )  # fmt: skip

    def nested(self) -> Any:
        rng = self.rng
        depth = rng.choice([1, 3, 126, 127, 128, 253, 254, 255, 1023, 1025, 5000])
        value: Any = rng.choice([1, "leaf", None, [], {}])
        for _ in range(depth):
            value = {"k": value} if rng.random() < 0.5 else [value]
        return value

    def image(self) -> Any:
        rng = self.rng
        return rng.choice(
            [
                {
                    "path": rng.choice(
                        ["a.png", "../a.png", "/etc/passwd", "a\u0000b", "x" * 5000, "http://h/a.png", ""]
                    )
                },
                {"base64": base64.b64encode(rng.randbytes(rng.randint(0, 64))).decode(), "mime": "image/png"},
                {"base64": "not base64!", "mime": "image/png"},
                {"base64": "aGk=", "mime": rng.choice(["text/plain", "image/webp", ""])},
                {"path": "a.png", "base64": "aGk="},
                "a.png",
                None,
            ]
        )

    def event(self, event_id: str) -> dict[str, Any]:
        rng = self.rng
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_time": self.timestamp() if rng.random() < 0.3 else "2025-07-01T12:00:00Z",
            "user_id": self.integer() if rng.random() < 0.2 else rng.randint(1, 50),
            "operation_type": self.text(PROPS["operation_type"]["maxLength"])
            if rng.random() < 0.2
            else "chat",
            "model": rng.choice([*PRICED, "unpriced-model", self.text(PROPS["model"]["maxLength"])]),
        }
        if rng.random() < 0.5:
            event["input"] = {"text": self.text(200)} if rng.random() < 0.9 else self.text(5)
        if rng.random() < 0.5:
            output: dict[str, Any] = {}
            if rng.random() < 0.7:
                output["text"] = self.text(200)
            if rng.random() < 0.3:
                output["image"] = self.image()
            event["output"] = output
        if rng.random() < 0.5:
            event["usage"] = {
                key: self.integer() if rng.random() < 0.2 else rng.randint(0, 5000)
                for key in ("input_tokens", "output_tokens", "images")
                if rng.random() < 0.7
            }
        if rng.random() < 0.3:
            event["ai_tier"] = rng.choice(["free", "pro", "enterprise", "gold", "", None, 3])
        if rng.random() < 0.3:
            event["metadata"] = (
                self.nested() if rng.random() < 0.2 else {"app": self.text(20), "n": self.integer()}
            )
        for _ in range(rng.choice([0, 0, 0, 1])):  # drop or add a field
            if rng.random() < 0.5 and event:
                event.pop(rng.choice(list(event)))
            else:
                event[rng.choice(["colour", "Event_id", "usage", "input"])] = self.integer()
        return event


def serialise(event: Any, rng: random.Random) -> bytes:
    """JSON text of ``event``, with the freedoms JSON allows and the damage a wire does."""
    try:
        text = json.dumps(
            event, ensure_ascii=rng.random() < 0.5, separators=rng.choice([(",", ":"), (", ", ": ")])
        )
    except RecursionError:
        text = "[" * 3000 + "]" * 3000
    raw = text.encode("utf-8", "surrogatepass")
    roll = rng.random()
    if roll < 0.05:
        raw = raw[: rng.randint(0, len(raw))]  # cut
    elif roll < 0.10:
        at = rng.randint(0, max(0, len(raw) - 1))
        raw = raw[:at] + bytes([rng.randint(0, 255)]) + raw[at + 1 :]  # a flipped byte
    elif roll < 0.13:
        raw = raw.replace(
            b'"event_time"', b'"' + b"9" * rng.choice([20, 400, 5000]) + b'":1, "event_time"', 1
        )
    elif roll < 0.16:
        raw = raw.replace(
            b'"user_id": ', b'"user_id": ' + rng.choice([b"1e400", b"-1e400", b"NaN", b"9" * 5000, b"00"]), 1
        )
    elif roll < 0.18:
        raw = raw + rng.choice([b" }", b"garbage", b"\x00", b"\r"])
    elif roll < 0.20:
        raw = rng.choice([b"\xef\xbb\xbf", b"\r", b" \t", b"\xff"]) + raw
    return raw


def jsonl_file(folder: Path, index: int, lines: list[bytes]) -> InputFile:
    path = folder / f"fuzz-{index}.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b"\\n") for line in lines) + b"\n")
    return InputFile(index, str(path), path.name, "jsonl", False, path.stat().st_size, "-", str(folder))


def csv_file(folder: Path, index: int, events: list[Any], rng: random.Random) -> InputFile:
    columns = [
        "event_id",
        "event_time",
        "user_id",
        "operation_type",
        "model",
        "input.text",
        "usage.input_tokens",
    ]
    if rng.random() < 0.3:
        columns.append(rng.choice(["colour", "input", "metadata"]))  # an unknown or a nesting column
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=rng.choice(["\n", "\r\n"]))
    writer.writerow(columns)
    for event in events:
        flat = event if isinstance(event, dict) else {}
        cells = []
        for column in columns:
            head, _, tail = column.partition(".")
            value = flat.get(head)
            if tail:
                value = value.get(tail) if isinstance(value, dict) else None
            cells.append("" if value is None else "{...}" if isinstance(value, (dict, list)) else str(value))
        if rng.random() < 0.05:
            cells = cells[: rng.randint(0, len(cells))]
        writer.writerow(cells)
    header, _, body = buffer.getvalue().partition("\n")
    if rng.random() < 0.2:
        body = body.replace(",", ',"', 1)  # an unclosed quote in the first row swallows the rest
    text = f"{header}\n{body}"
    path = folder / f"fuzz-{index}.csv"
    # A lone surrogate lands as bytes that are not UTF-8.
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return InputFile(index, str(path), path.name, "csv", False, path.stat().st_size, "-", str(folder))


def check_file(file: InputFile, sample: random.Random) -> int:
    """Run one file through the first stage; return how many records it read. Raises on a breach."""
    read = blank = events = dead = 0
    tables = []
    for split in plan_splits([file], split_bytes=1 << 16):
        for records in read_split(split, batch_lines=257, rules=SETTINGS.rules):
            batch = enrich_records(records, SETTINGS, no_images, IN_FLIGHT)
            check_batch(records, batch.events.num_rows, batch.dead_letters, sample, batch.events)
            # The columnar fast path takes only what the per-record path takes, built the same.
            reference = enrich_records(records, SETTINGS, no_images, IN_FLIGHT, columnar=False)
            assert batch.events.equals(reference.events), "the fast path built another table"
            assert batch.dead_letters == reference.dead_letters, "the fast path changed a dead letter"
            read += len(records.raws)
            blank += records.blank_lines
            events += batch.events.num_rows
            dead += len(batch.dead_letters)
            tables.append(batch.events)
    collapsed = collapse_duplicates(pa.concat_tables(tables) if tables else IN_FLIGHT.empty_table())
    processed = collapsed.events.num_rows
    assert read == processed + dead + len(collapsed.conflicts) + collapsed.collapsed, "invariant broken"
    assert events == processed + len(collapsed.conflicts) + collapsed.collapsed
    return read + blank


def check_batch(
    records: InputRecords, accepted: int, letters: list[Any], sample: random.Random, events: pa.Table
) -> None:
    assert accepted + len(letters) == len(records.raws), "a record was neither an event nor a dead letter"
    by_line = dict(zip(records.line_nos, records.raws, strict=True))
    for letter in letters:
        assert str(letter.reason) in REASONS, letter.reason
        assert letter.reason != Reason.INTERNAL_ERROR, f"no rule named the failure: {letter.detail}"
        assert letter.raw == by_line[letter.line_no][: RAW_KEEP_BYTES + 1]
    if records.parsed is None and accepted and sample.random() < 0.1:  # differential check on JSONL
        accepted_lines = set(events.column("line_no").to_pylist())
        for line_no, raw in by_line.items():
            if line_no in accepted_lines:
                errors = list(VALIDATOR.iter_errors(json.loads(raw.lstrip(b"\xef\xbb\xbf"))))
                assert not errors, (
                    f"line {line_no} was accepted but breaks the JSON Schema: {errors[0].message}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="records to generate (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=100, help="files the cases are spread over")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    grammar = Grammar(rng)
    per_file = max(1, args.cases // args.files)
    started, total = time.perf_counter(), 0
    with tempfile.TemporaryDirectory(prefix="aiep-fuzz-") as tmp:
        folder = Path(tmp)
        for index in range(args.files):
            ids = [f"id-{rng.randint(0, per_file)}" for _ in range(per_file)]  # many duplicates
            events = [
                grammar.event(i) if rng.random() < 0.97 else rng.choice([[1], "s", 3, None]) for i in ids
            ]
            if index % 5 == 4:
                file = csv_file(folder, index, events, rng)
            else:
                lines = [serialise(e, rng) for e in events]
                lines[rng.randrange(len(lines))] = b""  # a blank line
                file = jsonl_file(folder, index, lines)
            try:
                total += check_file(file, rng)
            except Exception:
                kept = (
                    Path(tempfile.gettempdir()) / f"aiep-fuzz-failure-seed{args.seed}-{Path(file.path).name}"
                )
                kept.write_bytes(Path(file.path).read_bytes())
                print(f"FAILED on file {index} (seed {args.seed}); input kept at {kept}", file=sys.stderr)
                raise
            Path(file.path).unlink()
    seconds = time.perf_counter() - started
    print(f"fuzz: {total:,} records in {args.files} files, seed {args.seed}: no uncaught exception, "
          f"invariant held ({seconds:.1f}s, {total / seconds:,.0f} records/s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
