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
    """Columnar form of ``letters`` in the ``dead_letter`` dataset's schema."""
    return pa.Table.from_pydict(
        {
            "source": [d.source for d in letters],
            "line_no": [d.line_no for d in letters],
            "raw": [d.raw[:RAW_KEEP_BYTES] for d in letters],
            "raw_truncated": [len(d.raw) > RAW_KEEP_BYTES for d in letters],
            "reason": [str(d.reason) for d in letters],
            "detail": [d.detail for d in letters],
            "event_id": [d.event_id for d in letters],
            "event_time": [d.event_time for d in letters],
        },
        schema=schema,
    )
