"""The first stage's columnar fast path: the JSONL records of a batch that are plainly valid,
checked and built a column at a time.

The contract's rules live in :mod:`transforms.validate`, applied one record at a time; that path
names every violation, and costs ~40 µs of Python per event. Most records in real input are
plain: every field of its type, ASCII-shaped timestamps, no image. This module finds those with
checks that run over a whole column (list comprehensions, Arrow compute, numpy) and builds their
row values directly; every record it is not sure of, for any reason, it leaves to the per-record
path, which decides (and names the violation of) each of them.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from transforms.cost import COST_MAX, COST_PLACES, Price, PriceBook
from transforms.dead_letter import RAW_KEEP_BYTES
from transforms.hashing import ContentHasher
from transforms.validate import EventRules, nesting_depth

#: Stands for an absent field, which differs from JSON null (a null field is the wrong type).
_ABSENT: Any = object()
_EMPTY: Mapping[str, Any] = {}
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
    micros, priced = _costs(plain.models, when_us, counts, prices, ok)
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
        "model": take(plain.models, pa.string()),
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


def _plain_records(raws: Sequence[bytes], skip: Mapping[int, object], rules: EventRules) -> _Plain:
    """The records whose every field is plainly valid, as columns; timestamps (their form and
    range) and costs are checked after, a column at a time.

    Hot path: one loop, every check inlined (a function call per field would cost more than the
    checks), stricter than the per-record rules wherever that keeps it simple.
    """
    plain = _Plain()
    required, allowed, size_limit = rules.required_set, rules.top_fields, rules.max_record_bytes
    limits, tiers = rules.max_lengths, rules.tiers
    id_max, operation_max, model_max = limits["event_id"], limits["operation_type"], limits["model"]
    input_max, output_max = limits["input.text"], limits["output.text"]
    in_input, in_output, in_usage = (rules.nested_fields[n] for n in ("input", "output", "usage"))
    low, high = rules.user_id_range
    inner = rules.max_depth - 1  # metadata's levels: the event itself is the first
    loads, dumps, sort, blake2b = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS, hashlib.blake2b
    absent, empty, count_limit = _ABSENT, _EMPTY, _COUNT_LIMIT
    parse_error, write_error = orjson.JSONDecodeError, orjson.JSONEncodeError
    for i, raw in enumerate(raws):
        if len(raw) > size_limit or i in skip:
            continue
        try:
            obj = loads(raw)
        except parse_error:
            continue
        if type(obj) is not dict or not (obj.keys() >= required and obj.keys() <= allowed):
            continue
        event_id, when, user = obj["event_id"], obj["event_time"], obj["user_id"]
        operation, model = obj["operation_type"], obj["model"]
        if not (
            type(event_id) is str and 0 < len(event_id) <= id_max
            and type(when) is str
            and type(user) is int and low <= user <= high
            and type(operation) is str and 0 < len(operation) <= operation_max
            and type(model) is str and 0 < len(model) <= model_max
        ):  # fmt: skip
            continue
        tier = obj.get("ai_tier", absent)
        if tier is absent:
            tier = None
        elif type(tier) is not str or tier not in tiers:
            continue
        prompt, output, usage = obj.get("input", empty), obj.get("output", empty), obj.get("usage", empty)
        if not (
            type(prompt) is dict and prompt.keys() <= in_input
            and type(output) is dict and output.keys() <= in_output and "image" not in output
            and type(usage) is dict and usage.keys() <= in_usage
        ):  # fmt: skip
            continue
        input_text, output_text = prompt.get("text", absent), output.get("text", absent)
        if input_text is absent:
            input_text = None
        elif type(input_text) is not str or len(input_text) > input_max:
            continue
        if output_text is absent:
            output_text = None
        elif type(output_text) is not str or len(output_text) > output_max:
            continue
        tokens_in, tokens_out, images = (
            usage.get("input_tokens", 0),
            usage.get("output_tokens", 0),
            usage.get("images", 0),
        )
        if not (
            type(tokens_in) is int and 0 <= tokens_in < count_limit
            and type(tokens_out) is int and 0 <= tokens_out < count_limit
            and type(images) is int and 0 <= images < count_limit
        ):  # fmt: skip
            continue
        metadata = obj.get("metadata", absent)
        try:
            # Its integers are plain, so the record is its own canonical form (``_canonical``).
            fingerprint = blake2b(dumps(obj, option=sort), digest_size=16).digest()
            if metadata is absent:
                metadata = None
            elif type(metadata) is not dict:
                continue
            else:
                text = dumps(metadata)
                # A large float may stand for an integer past 64 bits, and deep metadata needs its
                # depth counted: the per-record path does both.
                if _NUMBER_WITH_EXPONENT.search(text) or (
                    len(text) >= 2 * inner and nesting_depth(metadata, inner) > inner
                ):
                    continue
                metadata = text.decode()
        except write_error:
            continue
        plain.positions.append(i)
        plain.ids.append(event_id)
        plain.times.append(when)
        plain.users.append(user)
        plain.operations.append(operation)
        plain.models.append(model)
        plain.tiers.append(tier)
        plain.metadata.append(metadata)
        plain.inputs.append(input_text)
        plain.outputs.append(output_text)
        plain.fingerprints.append(fingerprint)
        plain.counts["input_tokens"].append(tokens_in)
        plain.counts["output_tokens"].append(tokens_out)
        plain.counts["images"].append(images)
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
    models: list[str],
    when_us: np.ndarray,
    counts: Mapping[str, np.ndarray],
    prices: PriceBook,
    ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each event's cost in micro-USD, exact and rounded once half-even, as
    :func:`transforms.cost.event_cost` computes it, and whether it is priced; ``ok`` cleared where
    the cost is past DECIMAL(10,6) (the per-record path names it)."""
    micros = np.zeros(len(models), dtype=np.int64)
    priced = np.zeros(len(models), dtype=bool)
    rows = np.flatnonzero(ok)
    days = (when_us[rows] // _DAY_US).tolist()
    by_price: dict[int, tuple[Price, list[int]]] = {}
    in_force: dict[tuple[str, int], Price | None] = {}
    for row, day in zip(rows.tolist(), days, strict=True):
        key = (models[row], day)
        if key not in in_force:
            in_force[key] = prices.price_in_force(key[0], _EPOCH + timedelta(days=day))
        price = in_force[key]
        if price is not None:
            by_price.setdefault(id(price), (price, []))[1].append(row)
    for price, members in by_price.values():
        at = np.asarray(members, dtype=np.int64)
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
