"""Bad input lines, one kind per dead-letter reason, each breaking exactly one contract rule.

Each maker takes a valid event and spoils it in one way, so the pipeline must reject it with one
known reason code; the generator's manifest counts them by that code. Makers have variants
(``user_id`` as ``"abc"`` or as a float, a timestamp with no zone or a word) that they cycle
through. Every spoiled line that still names an event_id names its own ``bad-NNNNNNNN`` (or
``""`` for an empty_field line), a form valid events never take, so bad lines never meet
duplicate handling.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson

from schemas import event_json_schema
from transforms.dead_letter import Reason
from transforms.validate import EventRules

#: A maker: spoils ``event`` (its own copy) in variant ``variant``; returns the line's bytes.
BadLineMaker = Callable[[dict[str, Any], int, random.Random], bytes]

#: Every ``field_too_long`` line with this remainder (of 8) has a 100k-char prompt; the
#: others an over-long model name, which proves the same rule in a few hundred bytes.
_LONG_TEXT_EVERY = 8


@cache
def _rules() -> EventRules:
    return EventRules.from_json_schema(event_json_schema())


def _line(event: Any) -> bytes:
    return orjson.dumps(event)


def _set(event: dict[str, Any], field: str, value: Any) -> bytes:
    """``event`` with one field set; ``"usage.images"`` names a field inside a part (which is
    created when the event has none)."""
    part, _, key = field.rpartition(".")
    if not part:
        return _line({**event, key: value})
    return _line({**event, part: {**event.get(part, {}), key: value}})


def malformed_json(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A cut-off object (a client died mid-write), or a bare ``NaN`` that JSON does not allow."""
    if variant % 3 == 2:
        return _line(event)[:-1] + b',"score":NaN}'
    text = _line(event).decode("utf-8")
    # Cut the text, not the bytes: a cut inside a UTF-8 sequence would be invalid_utf8.
    return text[: int(len(text) * rng.uniform(0.2, 0.95))].encode("utf-8")


def invalid_utf8(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """Bytes that are not UTF-8 inside a string: a stray 0xFF, a broken pair, a surrogate."""
    junk = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80")[variant % 3]
    quoted_id = orjson.dumps(event["event_id"])
    return _line(event).replace(quoted_id, quoted_id[:-1] + junk + b'"', 1)


def not_an_object(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """Valid JSON that is not an object: an array, a string, a number, null, a wrapped event."""
    shapes = (b"[1,2,3]", b'"hello"', b"42", b"null", _line([event]))
    return shapes[variant % len(shapes)]


def missing_field(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """The event less one required field, each in turn."""
    required = _rules().required
    return _line({k: v for k, v in event.items() if k != required[variant % len(required)]})


def wrong_type(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A field of the wrong JSON type: user_id as text or float, a numeric time, text counts."""
    field, value = (
        ("user_id", "abc"),
        ("user_id", float(event["user_id"]) + 0.5),
        ("event_time", 1_751_900_000),
        ("usage.output_tokens", "12"),
        ("metadata", "web"),
    )[variant % 5]
    return _set(event, field, value)


def empty_field(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A required string that is empty: event_id, model or operation_type."""
    return _line({**event, ("event_id", "model", "operation_type")[variant % 3]: ""})


def field_too_long(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A string one rule too long: a pasted 100k-char prompt, or a runaway model name."""
    limits = _rules().max_lengths
    if variant % _LONG_TEXT_EVERY == 1:
        pasted = "ERROR stack trace line; " * (limits["input.text"] // 24 + 2)
        return _set(event, "input.text", pasted[: limits["input.text"] + 1 + variant % 50])
    return _line({**event, "model": "gpt-4o-" + "x" * limits["model"]})


def out_of_range(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A number outside its range: user_id 0, negative, or 2**63; a 2**63 token count."""
    field, value = (
        ("user_id", 0),
        ("user_id", -42),
        ("user_id", 2**63),
        ("usage.input_tokens", 2**63),
    )[variant % 4]
    return _set(event, field, value)


def negative_count(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A usage count below zero."""
    key, value = (("input_tokens", -5), ("output_tokens", -1), ("images", -2))[variant % 3]
    return _set(event, f"usage.{key}", value)


def invalid_timestamp(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """Times that are not RFC 3339 with a zone, or name no real day."""
    texts = ("yesterday", "2025-07-01 12:00", "2025-07-08T10:00:00", "2025-07-32T10:00:00Z")
    return _line({**event, "event_time": texts[variant % len(texts)]})


def timestamp_out_of_range(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """Well-formed times outside MySQL TIMESTAMP's range, including one second past each end."""
    texts = ("2040-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2038-01-19T03:14:08Z")
    return _line({**event, "event_time": texts[variant % len(texts)]})


def unknown_tier(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A tier not in the contract (tiers are case-sensitive)."""
    return _line({**event, "ai_tier": ("platinum", "Free", "team")[variant % 3]})


def unknown_field(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A field the contract does not name, at the top level or inside a part."""
    field, value = (
        ("colour", "blue"),
        ("input.lang", "en"),
        ("output.finish_reason", "stop"),
        ("usage.cost_usd", 0.01),
    )[variant % 4]
    return _set(event, field, value)


def invalid_image(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """An inline image that does not decode, has an unknown mime, or has the wrong keys."""
    image = (
        {"base64": "not base64!!", "mime": "image/png"},
        {"base64": "iVBORw0KGgo=", "mime": "image/bmp"},
        {"url": "https://example.com/cat.png"},
    )[variant % 3]
    return _set(event, "output.image", image)


def path_outside_input(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A path image that climbs out of the input's folder."""
    path = ("../../etc/passwd", "images/../../outside.png")[variant % 2]
    return _set(event, "output.image", {"path": path})


def image_not_found(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A path image inside the folder that does not exist."""
    path = ("images/missing.png", "images/img-9999.png")[variant % 2]
    return _set(event, "output.image", {"path": path})


def image_unreadable(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """A path image that names something there that is not a file: the images folder itself."""
    return _set(event, "output.image", {"path": ("images", "images/.")[variant % 2]})


def nesting_too_deep(event: dict[str, Any], variant: int, rng: random.Random) -> bytes:
    """Metadata nested one level past the contract's depth, or far past it (arrays, spliced in
    as text: past orjson's own limit, no library would write it)."""
    depth = _rules().max_depth  # the event is the first level: metadata this deep is one too many
    if variant % 2 == 0:
        metadata: Any = "leaf"
        for _ in range(depth):
            metadata = {"k": metadata}
        return _set(event, "metadata", metadata)
    levels = depth * 10
    return _set(event, "metadata", 0).replace(b'"metadata":0', b'"metadata":' + b"[" * levels + b"]" * levels)


#: Makers whose lines need nothing beside the JSONL, by the reason the pipeline must give
#: their lines, in the order lines cycle through.
INLINE_MAKERS: dict[Reason, BadLineMaker] = {
    Reason.MALFORMED_JSON: malformed_json,
    Reason.INVALID_UTF8: invalid_utf8,
    Reason.NOT_AN_OBJECT: not_an_object,
    Reason.MISSING_FIELD: missing_field,
    Reason.WRONG_TYPE: wrong_type,
    Reason.EMPTY_FIELD: empty_field,
    Reason.FIELD_TOO_LONG: field_too_long,
    Reason.OUT_OF_RANGE: out_of_range,
    Reason.NEGATIVE_COUNT: negative_count,
    Reason.INVALID_TIMESTAMP: invalid_timestamp,
    Reason.TIMESTAMP_OUT_OF_RANGE: timestamp_out_of_range,
    Reason.UNKNOWN_TIER: unknown_tier,
    Reason.UNKNOWN_FIELD: unknown_field,
    Reason.INVALID_IMAGE: invalid_image,
    Reason.NESTING_TOO_DEEP: nesting_too_deep,
}
#: Makers that need image files beside the JSONL (``images=True``).
FILE_IMAGE_MAKERS: dict[Reason, BadLineMaker] = {
    Reason.PATH_OUTSIDE_INPUT: path_outside_input,
    Reason.IMAGE_NOT_FOUND: image_not_found,
    Reason.IMAGE_UNREADABLE: image_unreadable,
}


class BadLines:
    """Cycles through every bad kind, counting the lines made by reason.

    >>> bad = BadLines(images=False)
    >>> reason, line = bad.make({"event_id": "e", "event_time": "2025-07-07T00:00:00Z",
    ...     "user_id": 1, "operation_type": "embedding", "model": "m"}, random.Random(0))
    >>> reason, line[:12]
    (<Reason.MALFORMED_JSON: 'malformed_json'>, b'{"event_id":')
    """

    def __init__(self, *, images: bool) -> None:
        self._makers = {**INLINE_MAKERS, **(FILE_IMAGE_MAKERS if images else {})}
        self._kinds = tuple(self._makers)
        self.by_reason: Counter[Reason] = Counter()

    def make(self, event: dict[str, Any], rng: random.Random) -> tuple[Reason, bytes]:
        """Spoil ``event`` as the next kind in the cycle; returns its reason and its line."""
        made = sum(self.by_reason.values())
        reason = self._kinds[made % len(self._kinds)]
        spoiled = {**event, "event_id": f"bad-{made:08d}"}
        line = self._makers[reason](spoiled, self.by_reason[reason], rng)
        self.by_reason[reason] += 1
        return reason, line

    def counts(self) -> dict[str, int]:
        """Lines made by reason code, in cycle order, kinds with no line left out."""
        return {str(r): self.by_reason[r] for r in self._kinds if self.by_reason[r]}
