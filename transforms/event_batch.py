"""Turn a batch of raw input records into a table of validated, hashed, priced events.

This is the first stage of every engine: parse, validate against the contract, resolve the
output image, hash, price. Rejected records come back as dead letters beside the table; the
rest of the batch is unaffected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.clean_rows import clean_rows
from transforms.cost import COST_MAX, COST_PLACES, PriceBook, event_cost
from transforms.dead_letter import RAW_KEEP_BYTES, ContractViolation, DeadLetter, Reason
from transforms.hashing import ContentHasher
from transforms.validate import (
    EventRules,
    ImageRef,
    ValidEvent,
    is_url,
    json_bytes,
    metadata_json,
    parse_record,
    salvage_identity,
    validate_event,
)

log = logging.getLogger("aiep.enrich")

#: Reads a path image relative to the input's folder; raises ContractViolation when it may not.
ImageLoader = Callable[[str], bytes]

#: Columns that travel with events between stages but are never written to ``events/``.
ORDER, RAW, FINGERPRINT, SHARD = "_order", "_raw", "_fingerprint", "_shard"
#: The content itself, for the model stages (moderation, embeddings): the prompt and output texts
#: as the event gave them (their hashes are of the NFC form); an inline image's decoded bytes; a
#: path image's path as the event gave it (relative to its source's folder, found by ``ORDER``).
#: A path image is read again where it is needed rather than carried: its bytes are not part of
#: the input, so carrying them would break the bound on what a batch holds (its input bytes),
#: while everything else carried came from those bytes. Only hashes are ever written.
INPUT_TEXT, OUTPUT_TEXT, IMAGE, IMAGE_PATH = "_input_text", "_output_text", "_image", "_image_path"
CONTENT = (INPUT_TEXT, OUTPUT_TEXT, IMAGE, IMAGE_PATH)


@dataclass(frozen=True)
class InputRecords:
    """One batch of input records from one source, in input order.

    ``parsed`` is set by tabular sources (CSV, Parquet) that parse rows themselves; JSONL leaves it
    ``None``. ``rejected`` maps the index of a record the source could not even read as a record
    (a line past the size limit, a row that does not decode) to its violation; its ``raws`` entry
    holds what was kept of it (at most ``RAW_KEEP_BYTES + 1`` bytes, so a reader never holds more).
    ``bytes_read`` is how much of the input's content (as read: inflated, for a gzip input) the
    batch covers, line ends, blank lines and headers included: what a progress bar advances by.
    """

    source: str
    source_order: int
    line_nos: list[int]
    raws: list[bytes]
    parsed: list[Any] | None = None
    blank_lines: int = 0
    rejected: Mapping[int, ContractViolation] = field(default_factory=dict)
    bytes_read: int = 0


@dataclass(frozen=True)
class EnrichSettings:
    """Everything the first stage needs, built once per worker."""

    rules: EventRules
    prices: PriceBook
    hasher: ContentHasher
    shards: int


@dataclass
class EnrichedBatch:
    """The stage's result: valid events as Arrow, and the records it rejected."""

    events: pa.Table
    dead_letters: list[DeadLetter] = field(default_factory=list)


def in_flight_schema(events_schema: pa.Schema, content: bool = False) -> pa.Schema:
    """Schema of the table between stages: the events dataset's columns, less those later
    stages add, plus the internal ordering, raw-record, fingerprint and shard columns, and (with
    ``content``) the texts and image bytes."""
    later = {"rate_limited", "window_start", "tier_source", "decision"}
    # ai_tier stays NULL until the user's tier is looked up (transforms.tiers.resolve_tiers).
    fields = [
        f.with_nullable(True) if f.name == "ai_tier" else f for f in events_schema if f.name not in later
    ]
    return pa.schema(
        [
            *fields,
            pa.field(ORDER, pa.int32(), nullable=False),
            pa.field(RAW, pa.binary(), nullable=False),
            pa.field(FINGERPRINT, pa.binary(16), nullable=False),
            pa.field(SHARD, pa.int32(), nullable=False),
            *(
                [
                    pa.field(INPUT_TEXT, pa.string()),
                    pa.field(OUTPUT_TEXT, pa.string()),
                    pa.field(IMAGE, pa.binary()),
                    pa.field(IMAGE_PATH, pa.string()),
                ]
                if content
                else []
            ),
        ]
    )


def enrich_records(
    records: InputRecords,
    settings: EnrichSettings,
    load_image: ImageLoader,
    schema: pa.Schema,
    columnar: bool = True,
) -> EnrichedBatch:
    """Validate, hash and price a batch of records.

    Args:
        records: the raw batch, in input order.
        settings: rules, prices, hasher and shard count.
        load_image: reads a path image for this batch's source (a connector supplies it).
        schema: :func:`in_flight_schema` of the events dataset.
        columnar: take the batch's plain JSONL records through the columnar fast path
            (:mod:`transforms.clean_rows`) and only the rest one at a time; ``False`` judges
            every record one at a time (the reference the fast path is tested against).

    Returns:
        The events that passed, in input order, and a dead letter for each record that did not.
    """
    rules = settings.rules
    clean = None
    if columnar and records.parsed is None and records.raws:
        clean = clean_rows(
            records.raws, records.line_nos, records.rejected, rules,
            settings.prices, settings.hasher, settings.shards,
        )  # fmt: skip
    rows: list[tuple[Any, ...]] = []  # one tuple per event, in _ROW_COLUMNS order
    positions: list[int] = []
    dead: list[DeadLetter] = []
    parsed, rejected = records.parsed, records.rejected
    taken = set(clean.positions.tolist()) if clean is not None else ()
    for i, raw in enumerate(records.raws):
        if i in taken:
            continue
        obj: Any = None
        try:
            if i in rejected:
                raise rejected[i]
            obj = parsed[i] if parsed is not None else parse_record(raw, rules)
            rows.append(_event_row(obj, raw, records.line_nos[i], settings, load_image, parsed is None))
            positions.append(i)
        except ContractViolation as violation:
            dead.append(_dead_letter(records, i, obj, violation.reason, violation.detail, rules))
        except Exception as exc:  # no rule names it: keep the record as a dead letter, go on
            log.warning("%s:%d: %s", records.source, records.line_nos[i], _describe(exc))
            dead.append(_dead_letter(records, i, obj, Reason.INTERNAL_ERROR, _describe(exc), rules))
    one_by_one = _as_table(_row_columns(rows), len(rows), records, settings, schema)
    if clean is None or not len(clean.positions):
        return EnrichedBatch(one_by_one, dead)
    columnar_rows = _as_table(clean.columns, len(clean.positions), records, settings, schema)
    if not rows:
        return EnrichedBatch(columnar_rows, dead)
    order = np.argsort(
        np.concatenate([clean.positions, np.asarray(positions, dtype=np.int64)]), kind="stable"
    )
    return EnrichedBatch(pa.concat_tables([columnar_rows, one_by_one]).take(pa.array(order)), dead)


def _event_row(
    obj: Any, raw: bytes, line_no: int, settings: EnrichSettings, load_image: ImageLoader, from_json: bool
) -> tuple[Any, ...]:
    """Validate, resolve the image, price and hash one parsed record: its row in ``_ROW_COLUMNS``."""
    rules, hasher = settings.rules, settings.hasher
    event = validate_event(obj, rules)
    image_bytes = _image_bytes(event.image, load_image, rules)
    price = settings.prices.price_in_force(event.model, event.event_time.date())
    cost = None
    if price is not None:
        cost = event_cost(price, event.input_tokens, event.output_tokens, event.images)
        if cost > COST_MAX:
            raise ContractViolation(
                Reason.COST_OUT_OF_RANGE, f"cost {cost} exceeds DECIMAL(10,6) ({COST_MAX})"
            )
    metadata = metadata_json(event.metadata, rules, raw if from_json else None)
    fingerprint = hashlib.blake2b(json_bytes(_canonical(obj, event), rules, sort_keys=True), digest_size=16)
    output_hash = hasher.text(event.output_text)
    image_hash = None
    if event.image is not None:
        # An http(s) image is never fetched: it is known by its URL (moderation flags it unscanned).
        digest = hasher.data(image_bytes) if image_bytes is not None else hasher.text(event.image.path)
        if output_hash is None:
            output_hash = digest
        else:
            image_hash = digest
    return (
        event.event_id,
        event.event_time,
        event.user_id,
        event.operation_type,
        event.model,
        event.ai_tier,
        event.image is not None,
        hasher.text(event.input_text),
        output_hash,
        image_hash,
        event.input_tokens,
        event.output_tokens,
        event.images,
        cost,
        metadata,
        line_no,
        # A dead letter keeps at most RAW_KEEP_BYTES of a record: carrying more (a 13 MB inline
        # image) through the shuffles would only cost memory. One byte more says "it was cut".
        raw[: RAW_KEEP_BYTES + 1],
        fingerprint.digest(),
        zlib.crc32(event.event_id.encode("utf-8")) % settings.shards,
        event.input_text,
        event.output_text,
        image_bytes if event.image is not None and event.image.path is None else None,
        event.image.path if event.image is not None else None,
    )


def _canonical(obj: dict[str, Any], event: ValidEvent) -> dict[str, Any]:
    """The record as its fingerprint sees it: integer fields as integers, so that ``7`` and
    ``7.0`` (one JSON number) are one payload."""
    usage = obj.get("usage")
    if type(obj["user_id"]) is int and not (usage and any(type(v) is not int for v in usage.values())):
        return obj
    canonical = {**obj, "user_id": event.user_id}
    if usage:
        canonical["usage"] = {key: int(value) for key, value in usage.items()}
    return canonical


def _dead_letter(
    records: InputRecords, i: int, obj: Any, reason: Reason, detail: str, rules: EventRules
) -> DeadLetter:
    event_id, event_time = salvage_identity(obj, rules)
    return DeadLetter(
        source=records.source,
        position=str(records.line_nos[i]),
        raw=records.raws[i],
        reason=reason,
        detail=detail,
        event_id=event_id,
        event_time=event_time,
        source_order=records.source_order,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


_ROW_COLUMNS = (
    "event_id", "event_time", "user_id", "operation_type", "model", "ai_tier", "_has_image",
    "input_hash", "output_hash", "image_hash", "input_tokens", "output_tokens", "images", "cost",
    "metadata", "line_no", RAW, FINGERPRINT, SHARD, INPUT_TEXT, OUTPUT_TEXT, IMAGE, IMAGE_PATH,
)  # fmt: skip


def _row_columns(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The per-record path's row tuples as columns, its costs as micro-USD and a priced flag."""
    if not rows:
        return {name: () for name in _ROW_COLUMNS} | {"cost_micros": (), "priced": ()}
    columns: dict[str, Any] = dict(zip(_ROW_COLUMNS, zip(*rows, strict=True), strict=True))
    costs = columns.pop("cost")
    columns["priced"] = [cost is not None for cost in costs]
    columns["cost_micros"] = [0 if cost is None else int(cost.scaleb(COST_PLACES)) for cost in costs]
    return columns


def _as_table(
    values: dict[str, Any], n: int, records: InputRecords, settings: EnrichSettings, schema: pa.Schema
) -> pa.Table:
    """The in-flight table of ``n`` events from their columns (lists or Arrow arrays), plus the
    columns derived from them or constant per batch."""
    values = dict(values)
    has_image = pa.array(values.pop("_has_image"), pa.bool_())
    priced = pa.array(values.pop("priced"), pa.bool_())
    values["modality"] = pc.if_else(has_image, "image", "text")
    kind = schema.field("cost").type
    values["cost"] = pc.if_else(priced, _decimals(values.pop("cost_micros"), kind), pa.scalar(None, kind))
    values["cost_status"] = pc.if_else(priced, "priced", "unpriced")
    values["hash_mode"] = pa.array([settings.hasher.mode] * n, pa.string())
    values["source"] = pa.array([records.source] * n, pa.string())
    values[ORDER] = pa.array([records.source_order] * n, pa.int32())
    return pa.Table.from_arrays(
        [
            values[f.name].cast(f.type)
            if isinstance(values[f.name], pa.Array)
            else pa.array(values[f.name], f.type)
            for f in schema
        ],
        schema=schema,
    )


def _decimals(micros: Any, kind: pa.DataType) -> pa.Array:
    """Amounts in micro-USD (whole numbers below 10**18) as a decimal array of ``kind``
    (COST_PLACES places): the 128-bit integers are built directly, exactly."""
    assert kind.scale == COST_PLACES
    low = np.asarray(micros, dtype=np.int64)
    words = np.empty((len(low), 2), dtype=np.int64)
    words[:, 0] = low
    words[:, 1] = low >> 63  # the sign, spread over the high word
    return pa.Array.from_buffers(
        pa.decimal128(kind.precision, kind.scale), len(low), [None, pa.py_buffer(words)]
    )


def _image_bytes(image: ImageRef | None, load_image: ImageLoader, rules: EventRules) -> bytes | None:
    if image is None:
        return None
    if image.path is not None:
        return None if is_url(image.path) else load_image(image.path)
    assert image.base64 is not None
    try:
        data = base64.b64decode(image.base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ContractViolation(Reason.INVALID_IMAGE, f"output.image.base64 does not decode: {exc}") from None
    if not data:
        raise ContractViolation(Reason.INVALID_IMAGE, "output.image.base64 decodes to no bytes")
    if len(data) > rules.image_max_bytes:
        raise ContractViolation(
            Reason.IMAGE_TOO_LARGE, f"image is {len(data)} bytes; max {rules.image_max_bytes}"
        )
    return data
