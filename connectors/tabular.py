"""What CSV and Parquet inputs share: rows with the event's fields as (dotted) columns.

Nested fields are dotted column names (``input.text``, ``usage.input_tokens``,
``output.image.path``); Parquet may also nest them as structs. An empty CSV cell or a Parquet null
means "absent". The readers themselves are ``connectors.csv_source`` and
``connectors.parquet_source``; a row that either cannot turn into an event becomes a dead letter of
its own, and only an input that cannot be read as a whole (no header, a column named twice, a file
that is not Parquet) ends the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from connectors.inputs import InputError
from transforms.dead_letter import ContractViolation, Reason


def unflatten(row: dict[str, Any]) -> dict[str, Any]:
    """Nest dotted column names and drop absent values; the event the row describes.

    Only column names are split at dots: a key inside a struct (``metadata`` may hold
    ``{"a.b": 1}``) is kept as it is. Two columns that give one field (``input.text`` beside a
    struct ``input`` with a ``text``, or ``metadata.a`` beside ``metadata.a.b``) make the row a
    ``malformed_row``: which one to believe is not the reader's guess.

    >>> unflatten({"event_id": "e1", "usage.input_tokens": 3, "input.text": None})
    {'event_id': 'e1', 'usage': {'input_tokens': 3}}
    >>> unflatten({"metadata": {"a.b": 1, "c": None}})
    {'metadata': {'a.b': 1}}
    """
    event: dict[str, Any] = {}
    for key, value in row.items():
        value = _without_nulls(value)
        if value is None:
            continue
        parts = key.split(".")
        node = event
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ContractViolation(
                    Reason.MALFORMED_ROW, f"column {key!r} nests under another column's value"
                )
            node = child
        leaf = parts[-1]
        if leaf in node:
            if (
                not (isinstance(node[leaf], dict) and isinstance(value, dict))
                or node[leaf].keys() & value.keys()
            ):
                raise ContractViolation(
                    Reason.MALFORMED_ROW, f"column {key!r} gives a field another column gives"
                )
            node[leaf].update(value)
        else:
            node[leaf] = value
    return event


def _without_nulls(value: Any) -> Any:
    """``value`` less the null fields of its structs (a null field is an absent one); ``None``
    when nothing is left."""
    if not isinstance(value, dict):
        return value
    kept = {key: item for key, item in ((k, _without_nulls(v)) for k, v in value.items()) if item is not None}
    return kept or None


def unique_columns(names: list[str], source: str) -> None:
    """Raise InputError when a column is named twice: every row would be ambiguous."""
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise InputError(f"input {source!r} names column {twice[0]!r} more than once")
