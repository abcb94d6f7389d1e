"""Dead letters: input records that broke the contract, kept as data with a stable reason code."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pyarrow as pa

#: Raw bytes kept per dead letter; a longer record is cut and flagged ``raw_truncated``.
RAW_KEEP_BYTES = 1 << 20


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
    IMAGE_URL_NOT_FETCHED = "image_url_not_fetched"
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
    """One rejected input record: where it came from, its bytes, and why it was rejected."""

    source: str
    line_no: int
    raw: bytes
    reason: Reason
    detail: str
    event_id: str | None = None
    event_time: datetime | None = None
    #: The input's position on the command line: dead letters are filed by it, not by its name,
    #: so a rerun of the same inputs spelt differently writes the same files.
    source_order: int = 0


def dead_letter_table(letters: list[DeadLetter], schema: pa.Schema) -> pa.Table:
    """Columnar form of ``letters`` in the ``dead_letter`` dataset's schema.

    Text that quotes bad input (a detail naming a CSV column whose name is not UTF-8, say) is
    made storable: a byte that is not UTF-8 is written as ``\\xNN``, never a reason to fail.

    >>> letter = DeadLetter("in.csv", 2, b"x", Reason.UNKNOWN_FIELD, "x\\udcff is not in the contract")
    >>> dead_letter_table([letter], pa.schema([("detail", pa.string())])).column("detail")[0].as_py()
    'x\\\\xff is not in the contract'
    """
    columns = {
        "source": [storable(d.source) for d in letters],
        "line_no": [d.line_no for d in letters],
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
