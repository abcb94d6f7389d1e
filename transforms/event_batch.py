"""Turn a batch of raw input records into a table of validated, hashed, priced events.

This is the first stage of every engine: parse, validate against the contract, resolve the
output image, hash, price. Rejected records come back as dead letters beside the table; the
rest of the batch is unaffected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from transforms.cost import COST_MAX, PriceBook, event_cost
from transforms.dead_letter import ContractViolation, DeadLetter, Reason
from transforms.hashing import ContentHasher
from transforms.validate import EventRules, ImageRef, parse_record, salvage_identity, validate_event

#: Reads a path image relative to the input's folder; raises ContractViolation when it may not.
ImageLoader = Callable[[str], bytes]

#: Columns that travel with events between stages but are never written to ``events/``.
ORDER, RAW, FINGERPRINT, SHARD = "_order", "_raw", "_fingerprint", "_shard"


@dataclass(frozen=True)
class InputRecords:
    """One batch of input records from one source, in input order.

    ``parsed`` is set by tabular sources (CSV, Parquet) that parse rows themselves; an entry may
    be a ContractViolation for a row the source could not decode. JSONL leaves it ``None``.
    """

    source: str
    source_order: int
    line_nos: list[int]
    raws: list[bytes]
    parsed: list[Any] | None = None
    blank_lines: int = 0


@dataclass(frozen=True)
class EnrichSettings:
    """Everything the first stage needs, built once per worker."""

    rules: EventRules
    prices: PriceBook
    hasher: ContentHasher
    shards: int
    default_tier: str = "free"


@dataclass
class EnrichedBatch:
    """The stage's result: valid events as Arrow, and the records it rejected."""

    events: pa.Table
    dead_letters: list[DeadLetter] = field(default_factory=list)


def in_flight_schema(events_schema: pa.Schema) -> pa.Schema:
    """Schema of the table between stages: the events dataset's columns, less those later
    stages add, plus the internal ordering, raw-record, fingerprint and shard columns."""
    later = {"rate_limited", "window_start"}
    fields = [f for f in events_schema if f.name not in later]
    return pa.schema(
        [
            *fields,
            pa.field(ORDER, pa.int32(), nullable=False),
            pa.field(RAW, pa.binary(), nullable=False),
            pa.field(FINGERPRINT, pa.binary(16), nullable=False),
            pa.field(SHARD, pa.int32(), nullable=False),
        ]
    )


def enrich_records(
    records: InputRecords,
    settings: EnrichSettings,
    load_image: ImageLoader,
    schema: pa.Schema,
) -> EnrichedBatch:
    """Validate, hash and price a batch of records.

    Args:
        records: the raw batch, in input order.
        settings: rules, prices, hasher and shard count.
        load_image: reads a path image for this batch's source (a connector supplies it).
        schema: :func:`in_flight_schema` of the events dataset.

    Returns:
        The events that passed, and a dead letter for each record that did not.
    """
    rules, hasher, prices = settings.rules, settings.hasher, settings.prices
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    dead: list[DeadLetter] = []
    parsed = records.parsed
    for i, raw in enumerate(records.raws):
        obj: Any = None
        try:
            obj = parsed[i] if parsed is not None else parse_record(raw, rules)
            if isinstance(obj, ContractViolation):
                raise obj
            event = validate_event(obj, rules)
            image_bytes = _image_bytes(event.image, load_image, rules)
            price = prices.price_in_force(event.model, event.event_time.date())
            cost = None
            if price is not None:
                cost = event_cost(price, event.input_tokens, event.output_tokens, event.images)
                if cost > COST_MAX:
                    raise ContractViolation(
                        Reason.COST_OUT_OF_RANGE, f"cost {cost} exceeds DECIMAL(10,6) ({COST_MAX})"
                    )
        except ContractViolation as violation:
            event_id, event_time = salvage_identity(obj, rules)
            dead.append(
                DeadLetter(
                    source=records.source,
                    line_no=records.line_nos[i],
                    raw=raw,
                    reason=violation.reason,
                    detail=violation.detail,
                    event_id=event_id,
                    event_time=event_time,
                )
            )
            continue

        output_hash = hasher.text(event.output_text)
        image_hash = None
        if image_bytes is not None:
            if output_hash is None:
                output_hash = hasher.data(image_bytes)
            else:
                image_hash = hasher.data(image_bytes)
        event_id_bytes = event.event_id.encode("utf-8")
        columns["event_id"].append(event.event_id)
        columns["event_time"].append(event.event_time)
        columns["user_id"].append(event.user_id)
        columns["operation_type"].append(event.operation_type)
        columns["model"].append(event.model)
        columns["ai_tier"].append(event.ai_tier or settings.default_tier)
        columns["tier_source"].append("event" if event.ai_tier else "default")
        columns["modality"].append("image" if event.image is not None else "text")
        columns["input_hash"].append(hasher.text(event.input_text))
        columns["output_hash"].append(output_hash)
        columns["image_hash"].append(image_hash)
        columns["hash_mode"].append(hasher.mode)
        columns["input_tokens"].append(event.input_tokens)
        columns["output_tokens"].append(event.output_tokens)
        columns["images"].append(event.images)
        columns["cost"].append(cost)
        columns["cost_status"].append("unpriced" if cost is None else "priced")
        columns["metadata"].append(None if event.metadata is None else orjson.dumps(event.metadata).decode())
        columns["source"].append(records.source)
        columns["line_no"].append(records.line_nos[i])
        columns[ORDER].append(records.source_order)
        columns[RAW].append(raw)
        columns[FINGERPRINT].append(
            hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
        )
        columns[SHARD].append(zlib.crc32(event_id_bytes) % settings.shards)
    return EnrichedBatch(pa.Table.from_pydict(columns, schema=schema), dead)


def _image_bytes(image: ImageRef | None, load_image: ImageLoader, rules: EventRules) -> bytes | None:
    if image is None:
        return None
    if image.path is not None:
        return load_image(image.path)
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
