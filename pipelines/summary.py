"""The run summary: what one run read, decided and wrote, kept as ``<out>/_runs/<run_id>.json``.

The batch run writes it; the report, the dashboard and the streaming job read it. Its JSON form is
defined once, by the types below. :meth:`RunSummary.to_json` writes it; :meth:`RunSummary.load`
reads one back and refuses, in one line naming the file and the place, anything that is not a
summary. The JSON Schema those checks use, ``schemas/run_summary.schema.json``, is generated from
these types (``python -m pipelines.summary > schemas/run_summary.schema.json``), the ``config``
block's part from :class:`~connectors.config.PipelineConfig`; a test keeps the file in step.

Every run keeps the invariant ``events_read = events_processed + events_dead_lettered +
duplicates_collapsed``; a summary that breaks it cannot be built or loaded.

>>> json_schema()["properties"]["dead_letters_by_reason"]["additionalProperties"]
{'type': 'integer', 'minimum': 0}
>>> RunSummary.from_dict({"run_id": "20260101T000000Z-0123abcd"}, "run summary 'x.json'")
Traceback (most recent call last):
...
pipelines.summary.SummaryError: run summary 'x.json': at $: '...' is a required property
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import schemas
from connectors.config import PipelineConfig
from connectors.inputs import FORMATS
from transforms.dead_letter import Reason


class JsonSchema:
    """JSON Schema keywords that narrow a type: ``Annotated[int, JsonSchema(minimum=0)]``.

    Keywords add to the base type's schema; keywords that include a ``type`` replace it.
    """

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __repr__(self) -> str:
        return f"JsonSchema(**{self.keywords!r})"


#: A number of things, never negative.
Count = Annotated[int, JsonSchema(minimum=0)]
#: A sha256 digest as ``sha256sum`` prints it.
Sha256 = Annotated[str, JsonSchema(pattern="^[0-9a-f]{64}$")]
#: An amount in USD, as its exact decimal text (``"12.254175"``; no cost at all is ``"0E-6"``).
Amount = Annotated[Decimal, JsonSchema(pattern=r"^[0-9]+(\.[0-9]+)?(E[-+]?[0-9]+)?$")]
#: The run summary's ``config`` block: the settings in force, shaped by the config's own definition.
ConfigBlock = Annotated[Mapping[str, Any], JsonSchema(**PipelineConfig.summary_block_schema())]


class SummaryError(Exception):
    """A run summary is inconsistent, or a file is not a run summary; the message says where."""


@dataclass(frozen=True)
class InputSummary:
    """One input of the run, as it was read."""

    path: str  # as given on the command line (``<stdin>`` for stdin), not resolved
    format: Annotated[str, JsonSchema(enum=sorted(set(FORMATS.values())))]
    gzip: bool
    size: Count  # bytes of the file as stored
    sha256: Sha256  # of the file's bytes
    content_sha256: Sha256  # of what the pipeline reads (a gzip input inflated): its identity


@dataclass(frozen=True)
class RunSummary:
    """What one run read, decided and wrote (``_runs/<run_id>.json``).

    ``late_events`` is 0 for a file run: a bounded input's watermark ends with the input.
    """

    run_id: str
    engine: str
    engine_args: tuple[str, ...]
    started_at: datetime  # timezone-aware, kept to the millisecond
    finished_at: datetime
    seconds: float
    events_read: Count
    events_processed: Count
    events_dead_lettered: Count
    duplicates_collapsed: Count
    rate_limited: Count
    late_events: Count
    unpriced_events: Count
    cost_total: Amount
    rate_limit_violations: Count  # (user, window) pairs over quota
    audit_rows_inserted: Count
    #: Distinct texts a worker looked up in the embedding cache (its in-memory LRU included) and
    #: found, and those it did not: the model embedded each miss in this run.
    embedding_cache_hits: Count
    embedding_cache_misses: Count
    embeddings_written: Count  # rows of embeddings/: one per embedded prompt or output text
    user_features_written: Count  # rows of user_features/: one per (user, window)
    #: Events by their decision (the strictest of their contents' at their user's thresholds);
    #: all 0 when moderation was off (``config.moderation``).
    decisions_approved: Count
    decisions_flagged: Count
    decisions_rejected: Count
    moderation_rows_written: Count  # rows of moderation/: one per distinct content moderated
    decision_rows_changed: Count  # moderation_decisions rows this run inserted or changed
    blank_lines: Count
    dead_letters_by_reason: Mapping[Reason, Count]
    events_per_second: Count | None  # None when the run took no measurable time
    inputs: tuple[InputSummary, ...]
    inputs_fingerprint: Annotated[str, JsonSchema(pattern="^[0-9a-f]{16}$")]
    out_dir: str
    audit_db: str  # the audit store's URL, password redacted
    audit_schema_version: str
    config: ConfigBlock

    def __post_init__(self) -> None:
        read, processed = self.events_read, self.events_processed
        dead, collapsed = self.events_dead_lettered, self.duplicates_collapsed
        if read != processed + dead + collapsed:
            raise SummaryError(
                f"invariant broken: events_read {read} != processed {processed} + dead-lettered {dead}"
                f" + duplicates collapsed {collapsed}"
            )
        by_reason = sum(self.dead_letters_by_reason.values())
        if by_reason != dead:
            raise SummaryError(
                f"dead_letters_by_reason add up to {by_reason}, events_dead_lettered is {dead}"
            )
        for moment in (self.started_at, self.finished_at):
            if moment.tzinfo is None:
                raise SummaryError(f"{moment.isoformat()} has no time zone")

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON values, keys in the order of the fields."""
        return typing.cast(dict[str, Any], _to_json_value(self))

    def to_json(self) -> str:
        """The summary file's text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "run summary") -> RunSummary:
        """The summary ``data`` (parsed JSON) holds; SummaryError, prefixed with ``where``, if none.

        Checked against ``schemas/run_summary.schema.json``, then against the invariants.
        """
        import jsonschema  # here: only readers of summaries pay for its import

        if not isinstance(data, dict):
            raise SummaryError(f"{where}: holds a JSON {_json_type(data)}, not an object")
        validator = jsonschema.Draft202012Validator(schemas.run_summary_json_schema())
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            raise SummaryError(f"{where}: at {error.json_path}: {error.message}")
        try:
            return typing.cast(RunSummary, _from_json_value(cls, data, "$"))
        except SummaryError as exc:
            raise SummaryError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> RunSummary:
        """The summary in the file at ``path``; SummaryError naming the file if it holds none."""
        try:
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise SummaryError(f"cannot read run summary {str(path)!r}: {exc.strerror}") from None
        except ValueError as exc:  # not UTF-8, or not JSON
            raise SummaryError(f"run summary {str(path)!r} is not JSON: {exc}") from None
        return cls.from_dict(data, f"run summary {str(path)!r}")


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a run summary file, generated from :class:`RunSummary`."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "run_summary.schema.json",
        "title": "Run summary",
        "description": "What one run read, decided and wrote: <out>/_runs/<run_id>.json. "
        "Generated from pipelines/summary.py (python -m pipelines.summary); do not edit.",
        **_schema_of(RunSummary),
    }


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _schema_of(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a value of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        extra = args[1].keywords
        return dict(extra) if "type" in extra else {**_schema_of(args[0]), **extra}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {
            "type": "object",
            "properties": {name: _schema_of(t) for name, t in _field_types(hint).items()},
            "required": list(_field_types(hint)),
            "additionalProperties": False,
        }
    if origin is tuple:
        return {"type": "array", "items": _schema_of(args[0])}
    if origin is Mapping:
        schema = {"type": "object", "additionalProperties": _schema_of(args[1])}
        if isinstance(args[0], type) and issubclass(args[0], Enum):
            schema["propertyNames"] = {"enum": [member.value for member in args[0]]}
        return schema
    if origin in (typing.Union, types.UnionType):
        (inner,) = (a for a in args if a is not type(None))
        return {"anyOf": [_schema_of(inner), {"type": "null"}]}
    scalars: dict[Any, dict[str, Any]] = {
        str: {"type": "string"},
        int: {"type": "integer"},
        float: {"type": "number"},
        bool: {"type": "boolean"},
        datetime: {"type": "string", "format": "date-time"},
        Decimal: {"type": "string"},
    }
    return dict(scalars[hint])


def _to_json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {_to_json_value(k): _to_json_value(v) for k, v in value.items()}
    return value


def _from_json_value(hint: Any, value: Any, at: str) -> Any:
    """``value``, valid JSON for ``hint`` by the schema, as that type; SummaryError naming ``at``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _from_json_value(args[0], value, at)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fields = {
            name: _from_json_value(t, value[name], f"{at}.{name}") for name, t in _field_types(hint).items()
        }
        return hint(**fields)
    if origin is tuple:
        return tuple(_from_json_value(args[0], v, f"{at}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        return {
            _from_json_value(args[0], k, at): _from_json_value(args[1], v, f"{at}.{k}")
            for k, v in value.items()
        }
    if origin in (typing.Union, types.UnionType):
        (inner,) = (a for a in args if a is not type(None))
        return None if value is None else _from_json_value(inner, value, at)
    if hint is datetime:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise SummaryError(f"at {at}: {value!r} is not an ISO 8601 date and time") from None
        if moment.tzinfo is None:
            raise SummaryError(f"at {at}: {value!r} has no time zone")
        return moment
    if hint is float:
        return float(value)
    if hint is int:
        return int(value)  # JSON Schema counts 2.0 as an integer
    if isinstance(hint, type) and issubclass(hint, Decimal | Enum):
        return hint(value)
    return value


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
