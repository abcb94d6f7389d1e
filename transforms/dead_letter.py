"""Dead letters: input records that broke the contract, kept as data with a stable reason code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc

#: Raw bytes kept per dead letter; a longer record is cut and flagged ``raw_truncated``.
RAW_KEEP_BYTES = 1 << 20

#: A record's position in its source, as text: a file record's line (or row) number in decimal
#: (``"12"``), or a stream entry's id, ``<milliseconds>-<sequence>`` as Redis Streams write it
#: (``"1700000000000-0"``). Each number is below 2**64.
POSITION = re.compile(r"(?P<major>[0-9]{1,20})(?:-(?P<minor>[0-9]{1,20}))?")

#: Dead letters of one file input are written in files of at most this many lines of input.
BUCKET_LINES = 1_000_000
#: Dead letters of one stream are written in files of the entries of this many milliseconds.
BUCKET_MILLISECONDS = 3_600_000


class Reason(StrEnum):
    """Stable, machine-readable reason codes: one per contract rule. Never rename one."""

    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_ROW = "malformed_row"
    LINE_TOO_LONG = "line_too_long"
    NOT_AN_OBJECT = "not_an_object"
    NESTING_TOO_DEEP = "nesting_too_deep"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_FIELD = "empty_field"
    FIELD_TOO_LONG = "field_too_long"
    OUT_OF_RANGE = "out_of_range"
    NEGATIVE_COUNT = "negative_count"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    UNKNOWN_TIER = "unknown_tier"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    PATH_OUTSIDE_INPUT = "path_outside_input"
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_UNREADABLE = "image_unreadable"
    COST_OUT_OF_RANGE = "cost_out_of_range"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    #: No rule names the failure: the pipeline met an error of its own on this record (a bug to
    #: report). The record is kept as a dead letter, never dropped, and the run goes on.
    INTERNAL_ERROR = "internal_error"


class ContractViolation(Exception):
    """Raised inside a batch transform when one record breaks a rule; becomes a dead letter."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected input record: where it came from, its bytes, and why it was rejected.

    ``position`` says where in its source the record was (see :data:`POSITION`): ``"12"`` for
    line 12 of a file (the CSV line, the Parquet row), ``"1700000000000-0"`` for a stream entry.
    """

    source: str
    position: str
    raw: bytes
    reason: Reason
    detail: str
    event_id: str | None = None
    event_time: datetime | None = None
    #: The input's position on the command line: dead letters are filed by it, not by its name,
    #: so a rerun of the same inputs spelt differently writes the same files.
    source_order: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.position, str)
            or POSITION.fullmatch(self.position) is None
            or max(position_key(self.position)) >> 64
        ):
            raise ValueError(
                f"dead letter of {self.source!r}: position {self.position!r} is neither a line number"
                " ('12') nor a stream entry id ('1700000000000-0')"
            )

    @property
    def line_no(self) -> int:
        """The line (or row) number of a file record, for code that reads files only.

        Raises:
            ValueError: the record is a stream entry, which has no line number.
        """
        line_no = line_number(self.position)
        if line_no is None:
            raise ValueError(f"{self.source}: stream entry {self.position} has no line number")
        return line_no


def line_number(position: str) -> int | None:
    """The line number a position stands for; ``None`` for a stream entry id.

    >>> line_number("12"), line_number("1700000000000-0")
    (12, None)
    """
    return None if "-" in position else int(position)


def position_key(position: str) -> tuple[int, int]:
    """The order of positions within one source: line numbers as numbers, stream entry ids by
    their time, then their sequence (as text, ``"9"`` would follow ``"10"``).

    >>> sorted(["10", "9", "2"], key=position_key)
    ['2', '9', '10']
    >>> sorted(["1700000000000-10", "1700000000000-9", "999999999999-0"], key=position_key)
    ['999999999999-0', '1700000000000-9', '1700000000000-10']
    """
    major, _, minor = position.partition("-")
    return int(major), int(minor or 0)


def dead_letter_bucket(letter: DeadLetter) -> str:
    """The key of the file a dead letter is written to: its input's position among the run's
    inputs, then its bucket in that input (:data:`BUCKET_LINES` lines of a file, or
    :data:`BUCKET_MILLISECONDS` of a stream's entries).

    >>> dead_letter_bucket(DeadLetter("a.jsonl", "2500000", b"", Reason.MALFORMED_JSON, "", source_order=1))
    '0001-0002'
    >>> dead_letter_bucket(DeadLetter("events", "1700000000000-3", b"", Reason.MALFORMED_JSON, ""))
    '0000-472222'
    """
    major, _ = position_key(letter.position)
    span = BUCKET_LINES if line_number(letter.position) is not None else BUCKET_MILLISECONDS
    return f"{letter.source_order:04d}-{major // span:04d}"


def sorted_by_position(letters: pa.Table) -> pa.Table:
    """Rows of the ``dead_letter`` dataset in the order they are written: by source, then by
    position in it (:func:`position_key`'s order). Stable: letters at one position keep their order.

    >>> t = pa.table({"source": ["f", "f", "s", "s"], "position": ["10", "9", "7-10", "7-9"]})
    >>> sorted_by_position(t).column("position").to_pylist()
    ['9', '10', '7-9', '7-10']
    """
    parts = pc.extract_regex(letters.column("position"), f"^{POSITION.pattern}$")
    major = pc.cast(pc.struct_field(parts, "major"), pa.uint64())
    minor_text = pc.struct_field(parts, "minor")
    minor = pc.cast(pc.if_else(pc.equal(minor_text, ""), "0", minor_text), pa.uint64())
    keys = pa.table({"source": letters.column("source"), "major": major, "minor": minor})
    order = pc.sort_indices(
        keys, sort_keys=[("source", "ascending"), ("major", "ascending"), ("minor", "ascending")]
    )
    return letters.take(order)


def dead_letter_table(letters: list[DeadLetter], schema: pa.Schema) -> pa.Table:
    """Columnar form of ``letters`` in the ``dead_letter`` dataset's schema.

    Text that quotes bad input (a detail naming a CSV column whose name is not UTF-8, say) is
    made storable: a byte that is not UTF-8 is written as ``\\xNN``, never a reason to fail.

    >>> letter = DeadLetter("in.csv", "2", b"x", Reason.UNKNOWN_FIELD, "x\\udcff is not in the contract")
    >>> dead_letter_table([letter], pa.schema([("detail", pa.string())])).column("detail")[0].as_py()
    'x\\\\xff is not in the contract'
    """
    columns = {
        "source": [storable(d.source) for d in letters],
        "line_no": [line_number(d.position) for d in letters],
        "position": [d.position for d in letters],
        "raw": [d.raw[:RAW_KEEP_BYTES] for d in letters],
        "raw_truncated": [len(d.raw) > RAW_KEEP_BYTES for d in letters],
        "reason": [str(d.reason) for d in letters],
        "detail": [storable(d.detail) for d in letters],
        "event_id": [None if d.event_id is None else storable(d.event_id) for d in letters],
        "event_time": [d.event_time for d in letters],
    }
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)


def storable(text: str) -> str:
    """``text`` as valid UTF-8: bytes that were not (carried as surrogates) become ``\\xNN``."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
