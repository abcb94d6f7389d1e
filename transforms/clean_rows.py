"""The first stage's columnar fast path: the JSONL records of a batch that are plainly valid,
checked and built a column at a time.

The contract's rules live in :mod:`transforms.validate`, applied one record at a time; that path
names every violation, and costs ~40 µs of Python per event. Most records in real input are
plain: every field of its type, ASCII-shaped timestamps, no image. This module finds those with
a decoder that checks types and limits in C (msgspec structs made from the contract) and checks
that run over a whole column (Arrow compute, numpy), and builds their row values directly;
every record it is not sure of, for any reason, it leaves to the per-record path, which decides
(and names the violation of) each of them.

It only ever accepts. Its checks are the per-record rules or stricter (a timestamp must have one
exact form, token counts must stay below 2**31 so a cost fits 64-bit integers, an image is never
taken here), so a record it accepts is one :func:`transforms.validate.validate_event` accepts, and
every value it builds is the one that path builds: ``tests/test_clean_rows.py`` checks both against
the per-record path on generated, fuzzed and hypothesis-drawn records.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from msgspec import UNSET, UnsetType

from transforms.cost import COST_MAX, COST_PLACES, Price, PriceBook
from transforms.dead_letter import RAW_KEEP_BYTES
from transforms.hashing import ContentHasher
from transforms.validate import EventRules, nesting_depth

#: The one timestamp form taken here (what producers write; anything else goes one at a time):
#: RFC 3339 with an upper-case ``T``, up to 6 fraction digits, ``Z`` or an offset under 24 h.
_PLAIN_TIME = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_UTC_US = pa.timestamp("us", tz="UTC")
#: A number with an exponent in orjson's compact output (numbers follow ``:``, ``,`` or ``[``): a
#: float that may have been read from an integer past 64 bits. ``validate._EXPONENT`` also matches
#: inside strings (``"s-162e30"``), where it costs the per-record path only a second parse.
_NUMBER_WITH_EXPONENT = re.compile(rb"[:,\[]-?\d+(?:\.\d+)?[eE]")
#: Token counts below this keep every cost computable in 64-bit integers (see ``_micros``).
_COUNT_LIMIT = 1 << 31
_COST_MAX_MICROS = int(COST_MAX.scaleb(COST_PLACES))
_EPOCH = date(1970, 1, 1)
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class CleanRows:
    """The plain records of a batch: their positions in it and their row values by column.

    ``columns`` holds every column of ``transforms.event_batch._ROW_COLUMNS`` (lists or Arrow
    arrays), except ``cost``, given as ``cost_micros`` (int64 micro-USD) and ``priced`` (bool).
    """

    positions: np.ndarray
    columns: dict[str, Any]


def clean_rows(
    raws: Sequence[bytes],
    line_nos: Sequence[int],
    skip: Mapping[int, object],
    rules: EventRules,
    prices: PriceBook,
    hasher: ContentHasher,
    shards: int,
) -> CleanRows:
    """The records of ``raws`` (JSONL lines, none of them at a position in ``skip``) that pass
    every check here, with their row values; the rest are the per-record path's to judge."""
    plain = _plain_records(raws, skip, rules)
    ok = np.ones(len(plain.positions), dtype=bool)
    when_us = _event_times(plain.times, rules, ok)
    counts = {name: np.asarray(values, dtype=np.int64) for name, values in plain.counts.items()}
    models = pa.array(plain.models, pa.string())
    micros, priced = _costs(models, when_us, counts, prices, ok)
    keep = None if ok.all() else np.flatnonzero(ok)
    mask = None if keep is None else pa.array(ok)

    def take(values: list[Any], kind: pa.DataType) -> pa.Array:
        """A column of every plain record as Arrow, less those the checks above turned away
        (filtered in C: nearly every batch has some)."""
        array = pa.array(values, kind)
        return array if mask is None else array.filter(mask)

    def pick(values: np.ndarray) -> np.ndarray:
        return values if keep is None else values[keep]

    rows = pick(np.asarray(plain.positions, dtype=np.int64))
    positions = rows.tolist()
    shard_of = zlib.crc32
    shard = np.fromiter((shard_of(i.encode()) for i in plain.ids), np.int64, len(plain.ids)) % shards
    columns: dict[str, Any] = {
        "event_id": take(plain.ids, pa.string()),
        "event_time": pa.array(pick(when_us), _UTC_US),
        "user_id": pa.array(pick(np.asarray(plain.users, dtype=np.int64))),
        "operation_type": take(plain.operations, pa.string()),
        "model": models if mask is None else models.filter(mask),
        "ai_tier": take(plain.tiers, pa.string()),
        "_has_image": pa.array(np.zeros(len(rows), dtype=bool)),
        "input_hash": take(hasher.texts(plain.inputs), pa.string()),
        "output_hash": take(hasher.texts(plain.outputs), pa.string()),
        "image_hash": pa.nulls(len(rows), pa.string()),
        **{name: pa.array(pick(values)) for name, values in counts.items()},
        "cost_micros": pick(micros),
        "priced": pick(priced),
        "metadata": take(plain.metadata, pa.string()),
        "line_no": [line_nos[p] for p in positions],
        "_raw": [raws[p][: RAW_KEEP_BYTES + 1] for p in positions],
        "_fingerprint": take(plain.fingerprints, pa.binary()),
        "_shard": pick(shard),
        "_input_text": take(plain.inputs, pa.string()),
        "_output_text": take(plain.outputs, pa.string()),
        "_image": pa.nulls(len(rows), pa.binary()),
        "_image_path": pa.nulls(len(rows), pa.string()),
    }
    return CleanRows(rows, columns)


@dataclass
class _Plain:
    """Columns of the records that passed the checks of one record at a time."""

    positions: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    operations: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    tiers: list[str | None] = field(default_factory=list)
    metadata: list[str | None] = field(default_factory=list)
    inputs: list[str | None] = field(default_factory=list)
    outputs: list[str | None] = field(default_factory=list)
    fingerprints: list[bytes] = field(default_factory=list)
    counts: dict[str, list[int]] = field(
        default_factory=lambda: {"input_tokens": [], "output_tokens": [], "images": []}
    )


#: The contract's required fields, as the fast path knows them.
_REQUIRED = ("event_id", "event_time", "user_id", "operation_type", "model")
#: The fields the fast path takes, by object. A record holding any other (``output.image``, or a
#: field the contract lacks) does not decode, and goes one at a time.
_TAKEN: dict[str, tuple[str, ...]] = {
    "": (*_REQUIRED, "ai_tier", "input", "output", "usage", "metadata"),
    "input": ("text",),
    "output": ("text",),
    "usage": ("input_tokens", "output_tokens", "images"),
}  # fmt: skip


@dataclass(frozen=True)
class _Decoding:
    """The contract as msgspec types, made from :class:`EventRules`.

    ``decode`` takes a JSONL record only if it is an object whose fields are all ones the fast path
    takes, each of its JSON type and within its limits, the required ones present; otherwise it
    raises ``msgspec.MsgspecError``. An absent field decodes as ``msgspec.UNSET``, unlike a null
    (the wrong type). ``metadata`` is left as its raw JSON (``msgspec.Raw``). ``encode`` writes a
    decoded record back compact, with its fields in sorted order and the absent ones left out: for
    a record whose ``metadata`` was replaced by its sorted form, what ``orjson.dumps(record,
    option=OPT_SORT_KEYS)`` writes, byte for byte (both escape the same characters, and the
    structs' fields are declared sorted).
    """

    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]

    @classmethod
    def of(cls, rules: EventRules) -> _Decoding:
        """The decoding of ``rules``, made once per rules object (a worker has one)."""
        made = _DECODINGS.get(id(rules))
        if made is None or made[0] is not rules:
            if len(_DECODINGS) >= 8:  # a worker has one; a long test session makes many
                _DECODINGS.clear()
            made = _DECODINGS[id(rules)] = (rules, cls._make(rules))
        return made[1]

    @classmethod
    def _make(cls, rules: EventRules) -> _Decoding:
        allowed = {"": rules.top_fields, **rules.nested_fields}
        if set(rules.required) != set(_REQUIRED) or any(
            not set(fields) <= allowed[level] for level, fields in _TAKEN.items()
        ):
            raise ValueError(
                "the contract's required or allowed fields are not those transforms.clean_rows "
                f"was written for ({rules.required}): update its fast path"
            )
        limits, (low, high) = rules.max_lengths, rules.user_id_range

        def text(limit: str, shortest: int = 0) -> Any:
            return Annotated[str, msgspec.Meta(min_length=shortest, max_length=limits[limit])]

        def struct(name: str, kinds: dict[str, Any], required: tuple[str, ...] = ()) -> Any:
            fields = [
                (field_name, kind) if field_name in required else (field_name, kind | UnsetType, UNSET)
                for field_name, kind in sorted(kinds.items())
            ]
            # No cycles can form in a decoded record: the collector need not track them.
            return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True, gc=False)

        count = Annotated[int, msgspec.Meta(ge=0, lt=_COUNT_LIMIT)]
        event = struct(
            "Event",
            {
                "event_id": text("event_id", 1),
                "event_time": str,  # its form and range are checked a column at a time
                "user_id": Annotated[int, msgspec.Meta(ge=low, le=high)],
                "operation_type": text("operation_type", 1),
                "model": text("model", 1),
                "ai_tier": Literal[tuple(sorted(rules.tiers))],
                "input": struct("Input", {"text": text("input.text")}),
                "output": struct("Output", {"text": text("output.text")}),
                "usage": struct("Usage", dict.fromkeys(_TAKEN["usage"], count)),
                # Parsed apart: its numbers and depth need the checks of ``_plain_records``.
                "metadata": msgspec.Raw,
            },
            required=_REQUIRED,
        )
        return cls(msgspec.json.Decoder(event).decode, msgspec.json.Encoder().encode)


_DECODINGS: dict[int, tuple[EventRules, _Decoding]] = {}


def _plain_records(raws: Sequence[bytes], skip: Mapping[int, object], rules: EventRules) -> _Plain:
    """The records whose every field is plainly valid, as columns; timestamps (their form and
    range) and costs are checked after, a column at a time.

    Hot path: msgspec decodes and checks each record against ``_Decoding``'s types in C; the loop
    checks what is left (metadata), fingerprints the record and appends its values to the columns.
    """
    plain = _Plain()
    decoding = _Decoding.of(rules)
    decode, encode, unset, raw_json = decoding.decode, decoding.encode, UNSET, msgspec.Raw
    not_taken = (msgspec.MsgspecError, RecursionError)  # deep metadata: msgspec stops, as orjson does
    size_limit, inner = rules.max_record_bytes, rules.max_depth - 1  # metadata's levels: 1 is the event's
    loads, dumps, sort, blake2b = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.blake2b
    orjson_error = (orjson.JSONDecodeError, orjson.JSONEncodeError)
    positions, ids, times, users = plain.positions, plain.ids, plain.times, plain.users
    operations, models, tiers, metadatas = plain.operations, plain.models, plain.tiers, plain.metadata
    inputs, outputs, fingerprints = plain.inputs, plain.outputs, plain.fingerprints
    tokens_in, tokens_out, images = (plain.counts[n] for n in _TAKEN["usage"])
    for i, raw in enumerate(raws):
        if len(raw) > size_limit or i in skip:
            continue
        try:
            event = decode(raw)
        except not_taken:
            continue
        metadata = event.metadata
        if metadata is unset:
            metadata = None
        else:
            try:
                value = loads(memoryview(metadata))
                if type(value) is not dict:
                    continue
                text = dumps(value)
                # A large float may stand for an integer past 64 bits, and deep metadata needs its
                # depth counted: the per-record path does both.
                if _NUMBER_WITH_EXPONENT.search(text) or (
                    len(text) >= 2 * inner and nesting_depth(value, inner) > inner
                ):
                    continue
                # Its integers are plain, so the record is its own canonical form (``_canonical``)
                # once its metadata is written with sorted keys, as the rest is.
                event.metadata = raw_json(dumps(value, option=sort))
            except orjson_error:
                continue
            metadata = text.decode()
        positions.append(i)
        ids.append(event.event_id)
        times.append(event.event_time)
        users.append(event.user_id)
        operations.append(event.operation_type)
        models.append(event.model)
        tier = event.ai_tier
        tiers.append(None if tier is unset else tier)
        metadatas.append(metadata)
        fingerprints.append(blake2b(encode(event), digest_size=16).digest())
        part = event.input
        value = unset if part is unset else part.text
        inputs.append(None if value is unset else value)
        part = event.output
        value = unset if part is unset else part.text
        outputs.append(None if value is unset else value)
        part = event.usage
        if part is unset:
            tokens_in.append(0)
            tokens_out.append(0)
            images.append(0)
        else:
            value = part.input_tokens
            tokens_in.append(0 if value is unset else value)
            value = part.output_tokens
            tokens_out.append(0 if value is unset else value)
            value = part.images
            images.append(0 if value is unset else value)
    return plain


def _event_times(texts: list[str], rules: EventRules, ok: np.ndarray) -> np.ndarray:
    """µs since the epoch (UTC) of each plain timestamp within the contract's range."""
    strings = pa.array(texts, pa.string())  # every one a str: ``_plain_records`` checked
    plain = pc.fill_null(pc.match_substring_regex(strings, _PLAIN_TIME), False)
    # Only the plain form reaches the parser; the rest get a stand-in and go one at a time.
    chosen = pc.if_else(plain, strings, "1970-01-01T00:00:00Z")
    try:
        when = pc.cast(chosen, _UTC_US)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a day the calendar lacks (02-30)
        return _event_times_one_by_one(texts, plain.to_numpy(zero_copy_only=False), rules, ok)
    micros: np.ndarray = when.cast(pa.int64()).to_numpy(zero_copy_only=False)
    low, high = (_micros_of(t) for t in rules.time_range)
    ok &= plain.to_numpy(zero_copy_only=False) & (micros >= low) & (micros <= high)
    return micros


def _event_times_one_by_one(
    texts: list[Any], plain: np.ndarray, rules: EventRules, ok: np.ndarray
) -> np.ndarray:
    micros = np.zeros(len(texts), dtype=np.int64)
    for i in np.flatnonzero(plain & ok):
        try:
            micros[i] = pc.cast(pa.array([texts[i]]), _UTC_US).cast(pa.int64())[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            plain[i] = False
    low, high = (_micros_of(t) for t in rules.time_range)
    ok &= plain & (micros >= low) & (micros <= high)
    return micros


def _micros_of(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _costs(
    models: pa.Array,
    when_us: np.ndarray,
    counts: Mapping[str, np.ndarray],
    prices: PriceBook,
    ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each event's cost in micro-USD, exact and rounded once half-even, as
    :func:`transforms.cost.event_cost` computes it, and whether it is priced; ``ok`` cleared where
    the cost is past DECIMAL(10,6) (the per-record path names it).

    Events are grouped by (model, day) in arrays, each pair's price looked up once, then priced a
    price at a time."""
    micros = np.zeros(len(models), dtype=np.int64)
    priced = np.zeros(len(models), dtype=bool)
    rows = np.flatnonzero(ok)
    if not rows.size:
        return micros, priced
    encoded = pc.dictionary_encode(models)
    names = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
    days = when_us[rows] // _DAY_US
    first_day = int(days.min())
    span = int(days.max()) - first_day + 1
    pairs, pair_of_row = np.unique(codes * span + (days - first_day), return_inverse=True)
    # Each (model, day) pair's price, numbered in order of first use; -1: none in force.
    numbered: dict[int, int] = {}
    found: list[Price] = []
    price_of_pair = np.empty(len(pairs), dtype=np.int64)
    for i, pair in enumerate(pairs.tolist()):
        model, day = divmod(pair, span)
        price = prices.price_in_force(names[model], _EPOCH + timedelta(days=first_day + day))
        if price is None:
            price_of_pair[i] = -1
            continue
        if id(price) not in numbered:
            numbered[id(price)] = len(found)
            found.append(price)
        price_of_pair[i] = numbered[id(price)]
    price_of_row = price_of_pair[pair_of_row.reshape(-1)]
    order = np.argsort(price_of_row, kind="stable")
    bounds = np.searchsorted(price_of_row[order], np.arange(len(found) + 1))
    for number, price in enumerate(found):
        at = rows[order[bounds[number] : bounds[number + 1]]]
        cost = _micros(price, counts["input_tokens"][at], counts["output_tokens"][at], counts["images"][at])
        if cost is None:  # prices too large for 64-bit arithmetic: one at a time
            ok[at] = False
            continue
        ok[at] &= cost <= _COST_MAX_MICROS
        micros[at] = cost
        priced[at] = True
    return micros, priced


def _micros(
    price: Price, tokens_in: np.ndarray, tokens_out: np.ndarray, images: np.ndarray
) -> np.ndarray | None:
    """``event_cost`` over arrays, or None where 64 bits might not hold the exact products."""
    per_input, per_output, per_image = price.units
    shift = price.scale + 3 - COST_PLACES
    bound = (per_input + per_output + per_image * 1000) * _COUNT_LIMIT * 10 ** max(0, -shift)
    if bound >= 1 << 62:
        return None
    exact: np.ndarray = tokens_in * per_input + tokens_out * per_output + images * (per_image * 1000)
    if shift <= 0:
        scaled: np.ndarray = exact * 10**-shift
        return scaled
    divisor = 10**shift
    quotient, rest = np.divmod(exact, divisor)
    # Half-even: up past the half, and at exactly the half when the quotient is odd.
    rounded: np.ndarray = quotient + ((2 * rest > divisor) | ((2 * rest == divisor) & (quotient % 2 == 1)))
    return rounded
