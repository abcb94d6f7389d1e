"""The input contract's fast path: parse one record and check it against the event JSON Schema.

The limits (lengths, ranges, tiers, allowed fields) come from ``schemas/event.schema.json``
through :class:`EventRules`; nothing here restates them. A record that breaks a rule raises
:class:`~transforms.dead_letter.ContractViolation` with the rule's reason code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

from transforms.dead_letter import ContractViolation, Reason

_EMPTY: Mapping[str, Any] = MappingProxyType({})
#: A number orjson writes with an exponent (``1.8446744073709552e19``): it may have been read from an
#: integer past 64 bits, which orjson turns into an inexact float.
_EXPONENT = re.compile(rb"\d[eE][+-]?\d")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)


@dataclass(frozen=True)
class EventRules:
    """Every limit of the input contract, read from the event JSON Schema."""

    required: tuple[str, ...]
    required_set: frozenset[str]
    top_fields: frozenset[str]
    nested_fields: Mapping[str, frozenset[str]]
    max_lengths: Mapping[str, int]
    user_id_range: tuple[int, int]
    tiers: frozenset[str]
    time_range: tuple[datetime, datetime]
    image_mimes: frozenset[str]
    image_max_bytes: int
    max_record_bytes: int
    max_depth: int

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any]) -> EventRules:
        """Read the rules out of ``event.schema.json`` (as a parsed dict)."""
        props = schema["properties"]
        nested = {name: frozenset(props[name]["properties"]) for name in ("input", "output", "usage")}
        max_lengths = {name: props[name]["maxLength"] for name in ("event_id", "operation_type", "model")}
        max_lengths["input.text"] = props["input"]["properties"]["text"]["maxLength"]
        max_lengths["output.text"] = props["output"]["properties"]["text"]["maxLength"]
        image = props["output"]["properties"]["image"]
        path_spec, inline_spec = image["oneOf"]
        max_lengths["output.image.path"] = path_spec["properties"]["path"]["maxLength"]
        time_range = props["event_time"]["x-range"]
        image_max = int(image["x-max-decoded-bytes"])
        return cls(
            required=tuple(schema["required"]),
            required_set=frozenset(schema["required"]),
            top_fields=frozenset(props),
            nested_fields=nested,
            max_lengths=max_lengths,
            user_id_range=(props["user_id"]["minimum"], props["user_id"]["maximum"]),
            tiers=frozenset(props["ai_tier"]["enum"]),
            time_range=(_parse_time(time_range["min"]), _parse_time(time_range["max"])),
            image_mimes=frozenset(inline_spec["properties"]["mime"]["enum"]),
            image_max_bytes=image_max,
            # A record may carry two max-length texts and a base64 image (4/3 of its bytes).
            max_record_bytes=image_max * 4 // 3 + 8 * max_lengths["input.text"] + (1 << 20),
            max_depth=int(schema["x-max-depth"]),
        )


def is_url(path: str) -> bool:
    """Whether an image's ``path`` is an http(s) URL: such an image is never fetched.

    >>> is_url("HTTPS://example.com/a.png"), is_url("images/a.png")
    (True, False)
    """
    return path.lower().startswith(("http://", "https://"))


class ImageRef(NamedTuple):
    """An output image as the event names it: a relative path, an http(s) URL (never fetched: the
    image is moderated as unscanned), or inline base64 with a mime."""

    path: str | None
    base64: str | None
    mime: str | None


class ValidEvent(NamedTuple):
    """An event that passed every contract rule, with defaults filled in."""

    event_id: str
    event_time: datetime
    user_id: int
    operation_type: str
    model: str
    input_text: str | None
    output_text: str | None
    image: ImageRef | None
    input_tokens: int
    output_tokens: int
    images: int
    ai_tier: str | None
    metadata: dict[str, Any] | None


def parse_record(raw: bytes, rules: EventRules) -> Any:
    """Parse one JSONL record into Python values, or raise a ContractViolation.

    >>> import schemas
    >>> rules = EventRules.from_json_schema(schemas.event_json_schema())
    >>> parse_record(b'{"a": 1}', rules)
    {'a': 1}
    >>> parse_record(b'{"a": 1', rules)
    Traceback (most recent call last):
    transforms.dead_letter.ContractViolation: malformed_json: unexpected end of data: line 1 column 8 (char 7)
    >>> parse_record(b'{"a": ' + b'9' * 5000 + b'}', rules)
    Traceback (most recent call last):
    transforms.dead_letter.ContractViolation: out_of_range: an integer of 5000 digits does not fit 64 bits
    """
    if len(raw) > rules.max_record_bytes:
        raise ContractViolation(
            Reason.LINE_TOO_LONG, f"{len(raw)} bytes; the limit is {rules.max_record_bytes}"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return parse_exactly(raw, rules, first_error=str(exc))


def parse_exactly(raw: bytes, rules: EventRules, first_error: str = "") -> Any:
    """Parse one record with the stdlib, which keeps every number exact, or raise the violation
    that names what is wrong with it.

    orjson refuses what the stdlib reads (escaped lone surrogates, numbers past a double's range,
    deep nesting), and reads an integer beyond 64 bits as an inexact float: this names the real
    problem instead of a misleading "malformed" or a silently changed number. Only records that
    orjson refused, or whose metadata holds a float that may have been such an integer, come here.
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        raise ContractViolation(Reason.INVALID_UTF8, str(bad)) from None
    try:
        obj = json.loads(raw, parse_constant=_reject_constant, parse_int=_integer, parse_float=_finite)
    except _NumberOutOfRange as exc:
        raise ContractViolation(Reason.OUT_OF_RANGE, str(exc)) from None
    except RecursionError:
        raise ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules)) from None
    except ValueError as exc:
        if first_error.startswith("depth limit exceeded"):
            raise ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules)) from None
        raise ContractViolation(Reason.MALFORMED_JSON, first_error or str(exc)) from None
    json_bytes(obj, rules)  # what it can't carry, named by its rule
    if first_error.startswith("depth limit exceeded"):
        raise ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules))
    return obj


class _NumberOutOfRange(ValueError):
    pass


def _integer(text: str) -> int:
    # The stdlib refuses integers of over 4,300 digits as a ValueError ("malformed"): name the range.
    if len(text) > 20:
        raise _NumberOutOfRange(f"an integer of {len(text.lstrip('-'))} digits does not fit 64 bits")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberOutOfRange(f"the number {text[:50]} is beyond a double's range")
    return value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _too_deep(rules: EventRules) -> str:
    return f"the record nests deeper than {rules.max_depth} levels"


def nesting_too_deep(rules: EventRules) -> ContractViolation:
    """The violation of a record nested past the contract's depth (for readers that meet one)."""
    return ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules))


def json_bytes(value: Any, rules: EventRules, *, sort_keys: bool = False) -> bytes:
    """``value`` (parsed from a record) as JSON text; what JSON or the contract can't carry is a
    ContractViolation naming its rule: nesting too deep, an integer beyond 64 bits, a lone
    surrogate, a value of a type JSON has no word for."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError as exc:
        message = str(exc)
    if "Recursion limit" in message:
        raise ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules))
    if "64-bit" in message:
        raise ContractViolation(Reason.OUT_OF_RANGE, "an integer in the record does not fit 64 bits")
    if "surrogates" in message:
        raise ContractViolation(Reason.INVALID_UTF8, "a string escapes a lone surrogate")
    raise ContractViolation(Reason.WRONG_TYPE, f"the record holds a value JSON cannot carry: {message}")


def nesting_depth(value: Any, stop_after: int) -> int:
    """Levels of objects and arrays in ``value`` (a scalar is 0), counted up to ``stop_after + 1``.

    >>> nesting_depth({"a": [1, {"b": []}]}, stop_after=10)
    4
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if type(node) is dict:
            children: Any = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_after:
            break
        pending.extend((child, depth + 1) for child in children)
    return deepest


def metadata_json(metadata: dict[str, Any] | None, rules: EventRules, raw: bytes | None = None) -> str | None:
    """The event's metadata as JSON text (what ``events/`` keeps), within the contract's depth.

    With ``raw``, the JSON record it was parsed from: when the metadata holds a large float, the
    record is parsed again exactly, so an integer past 64 bits is ``out_of_range``, not rounded.
    """
    if metadata is None:
        return None
    text = json_bytes(metadata, rules)
    if raw is not None and _EXPONENT.search(text):
        json_bytes(parse_exactly(raw, rules), rules)
    # Each level of nesting takes two characters, so short metadata can't be too deep.
    inner = rules.max_depth - 1  # the event itself is the first level
    if len(text) >= 2 * inner and nesting_depth(metadata, inner) > inner:
        raise ContractViolation(Reason.NESTING_TOO_DEEP, _too_deep(rules))
    return text.decode()


def _parse_time(text: str) -> datetime:
    """The UTC time of an RFC 3339 timestamp with a zone.

    Raises ValueError for text that is not one, and OverflowError for one that is but lies
    outside what a datetime holds (year 0, or an offset that moves it past year 9999).
    """
    if not _RFC3339.match(text):
        raise ValueError(f"not an RFC 3339 timestamp with a zone: {text!r}")
    if text.startswith("0000"):
        raise OverflowError("year 0 is out of range")
    return datetime.fromisoformat(text.upper().replace(" ", "T")).astimezone(UTC)


def _string(obj: Mapping[str, Any], name: str, rules: EventRules) -> str:
    value = obj[name]
    if type(value) is not str:
        raise ContractViolation(Reason.WRONG_TYPE, f"{name} must be a string, got {_kind(value)}")
    if not value:
        raise ContractViolation(Reason.EMPTY_FIELD, f"{name} must not be empty")
    limit = rules.max_lengths[name]
    if len(value) > limit:
        raise ContractViolation(Reason.FIELD_TOO_LONG, f"{name} has {len(value)} chars; max {limit}")
    return value


def _optional_text(part: Mapping[str, Any], name: str, rules: EventRules) -> str | None:
    if "text" not in part:
        return None
    value = part["text"]
    if type(value) is not str:
        raise ContractViolation(Reason.WRONG_TYPE, f"{name} must be a string, got {_kind(value)}")
    limit = rules.max_lengths[name]
    if len(value) > limit:
        raise ContractViolation(Reason.FIELD_TOO_LONG, f"{name} has {len(value)} chars; max {limit}")
    return value


def _count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key, 0)
    if type(value) is not int:
        value = _integral(f"usage.{key}", value)
    if value < 0:
        raise ContractViolation(Reason.NEGATIVE_COUNT, f"usage.{key} is {value}; must be >= 0")
    if value >= 1 << 63:
        raise ContractViolation(Reason.OUT_OF_RANGE, f"usage.{key} is {value}; must be < 2^63")
    return int(value)


#: Beyond this, a JSON number with a fraction part (``1e17``) no longer names one integer exactly.
_EXACT_FLOAT = 2**53


def _integral(name: str, value: object) -> int:
    """An integer field given as a number with a zero fraction (``1.0``, ``1e2``) is that integer,
    as JSON Schema says; one too large to be exact is out of range; anything else the wrong type."""
    if type(value) is float and value.is_integer():
        if abs(value) < _EXACT_FLOAT:
            return int(value)
        raise ContractViolation(Reason.OUT_OF_RANGE, f"{name} {value:.0f} is too large to be exact")
    raise ContractViolation(Reason.WRONG_TYPE, f"{name} must be an integer, got {_kind(value)}")


def _object(obj: Mapping[str, Any], key: str, rules: EventRules) -> Mapping[str, Any]:
    if key not in obj:
        return _EMPTY
    part = obj[key]
    if type(part) is not dict:
        raise ContractViolation(Reason.WRONG_TYPE, f"{key} must be an object, got {_kind(part)}")
    allowed = rules.nested_fields[key]
    if not part.keys() <= allowed:
        extra = sorted(part.keys() - allowed)[0]
        raise ContractViolation(Reason.UNKNOWN_FIELD, f"{key}.{extra} is not in the contract")
    return part


def _image(output: Mapping[str, Any], rules: EventRules) -> ImageRef | None:
    if "image" not in output:
        return None
    image = output["image"]
    if type(image) is not dict:
        raise ContractViolation(Reason.INVALID_IMAGE, f"output.image must be an object, got {_kind(image)}")
    keys = image.keys()
    if keys == {"path"}:
        path = image["path"]
        if type(path) is not str or not path:
            raise ContractViolation(Reason.INVALID_IMAGE, "output.image.path must be a non-empty string")
        if len(path) > rules.max_lengths["output.image.path"]:
            raise ContractViolation(Reason.FIELD_TOO_LONG, "output.image.path is too long")
        return ImageRef(path=path, base64=None, mime=None)
    if keys == {"base64", "mime"}:
        data, mime = image["base64"], image["mime"]
        if type(data) is not str or not data or type(mime) is not str:
            raise ContractViolation(Reason.INVALID_IMAGE, "output.image.base64 and .mime must be strings")
        if mime not in rules.image_mimes:
            raise ContractViolation(
                Reason.INVALID_IMAGE, f"output.image.mime {mime[:50]!r} not in {sorted(rules.image_mimes)}"
            )
        if len(data) > rules.image_max_bytes * 4 // 3 + 4:
            raise ContractViolation(Reason.IMAGE_TOO_LARGE, f"base64 of {len(data)} chars exceeds the limit")
        return ImageRef(path=None, base64=data, mime=mime)
    raise ContractViolation(
        Reason.INVALID_IMAGE, f"output.image needs {{path}} or {{base64, mime}}, got {sorted(keys)}"
    )


def validate_event(obj: Any, rules: EventRules) -> ValidEvent:
    """Check one parsed record against every contract rule; fill in defaults.

    Hot path: one call per event, so checks are inlined and set operations run in C.
    """
    if type(obj) is not dict:
        raise ContractViolation(Reason.NOT_AN_OBJECT, f"a record must be a JSON object, got {_kind(obj)}")
    keys = obj.keys()
    if not rules.required_set <= keys:
        missing = [key for key in rules.required if key not in obj]
        raise ContractViolation(Reason.MISSING_FIELD, f"{missing[0]} is required")
    if not keys <= rules.top_fields:
        raise ContractViolation(
            Reason.UNKNOWN_FIELD, f"{sorted(keys - rules.top_fields)[0]} is not in the contract"
        )

    event_id = _string(obj, "event_id", rules)
    event_time = event_time_of(obj, rules)
    user_id = obj["user_id"]
    if type(user_id) is not int:
        user_id = _integral("user_id", user_id)
    low, high = rules.user_id_range
    if not low <= user_id <= high:
        raise ContractViolation(Reason.OUT_OF_RANGE, f"user_id {user_id} is outside [{low}, {high}]")
    operation_type = _string(obj, "operation_type", rules)
    model = _string(obj, "model", rules)

    # An optional field is absent or of its type: JSON null is neither (as the JSON Schema says).
    tier = obj.get("ai_tier")
    if "ai_tier" in obj:
        if type(tier) is not str:
            raise ContractViolation(Reason.WRONG_TYPE, f"ai_tier must be a string, got {_kind(tier)}")
        if tier not in rules.tiers:
            raise ContractViolation(
                Reason.UNKNOWN_TIER, f"ai_tier {tier[:50]!r} not in {sorted(rules.tiers)}"
            )
    metadata = obj.get("metadata")
    if "metadata" in obj and type(metadata) is not dict:
        raise ContractViolation(Reason.WRONG_TYPE, f"metadata must be an object, got {_kind(metadata)}")

    output = _object(obj, "output", rules)
    usage = _object(obj, "usage", rules)
    return ValidEvent(
        event_id,
        event_time,
        user_id,
        operation_type,
        model,
        _optional_text(_object(obj, "input", rules), "input.text", rules),
        _optional_text(output, "output.text", rules),
        _image(output, rules) if "image" in output else None,
        _count(usage, "input_tokens") if "input_tokens" in usage else 0,
        _count(usage, "output_tokens") if "output_tokens" in usage else 0,
        _count(usage, "images") if "images" in usage else 0,
        tier,
        metadata,
    )


def event_time_of(obj: Mapping[str, Any], rules: EventRules) -> datetime:
    """The event's time in UTC, checked for RFC 3339 form and MySQL TIMESTAMP's range."""
    value = obj["event_time"]
    if type(value) is not str:
        raise ContractViolation(Reason.WRONG_TYPE, f"event_time must be a string, got {_kind(value)}")
    low, high = rules.time_range
    try:
        when = _parse_time(value)
    except ValueError as exc:
        raise ContractViolation(Reason.INVALID_TIMESTAMP, str(exc)[:300]) from None
    except OverflowError:
        when = None
    if when is None or not low <= when <= high:
        raise ContractViolation(
            Reason.TIMESTAMP_OUT_OF_RANGE,
            f"event_time {value} is outside [{low:%Y-%m-%dT%H:%M:%SZ}, {high:%Y-%m-%dT%H:%M:%SZ}]",
        )
    return when


def salvage_identity(obj: Any, rules: EventRules) -> tuple[str | None, datetime | None]:
    """Best-effort ``(event_id, event_time)`` of a rejected record, for its dead letter."""
    if type(obj) is not dict:
        return None, None
    event_id = obj.get("event_id")
    event_id = event_id[:128] if type(event_id) is str else None
    try:
        when: datetime | None = event_time_of(obj, rules)
    except (ContractViolation, KeyError):
        when = None
    return event_id, when


def _kind(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
