"""Run configuration, read in one place: defaults from ``schemas/``, overrides from a TOML file,
secrets from the environment.

A config file holds one table per section; every key is optional and overrides its default::

    [rate_limit]
    window_seconds = 60
    quotas = { free = 20, pro = 200, enterprise = 2000 }

    [pipeline]
    shards = 16

Every key is one field of :class:`PipelineConfig`, declared once with :func:`setting`: where it
sits in the file, what it means, its default and, for numbers, its range. Loading, validation,
the error messages (which name the file and ``section.key``), the run summary's ``config`` block
(:meth:`PipelineConfig.summary_block`) and the annotated file that ``python -m connectors.config``
prints (every key at its default, with its meaning and range) are all derived from those fields.
Adding a key is one line in ``PipelineConfig``, a new section included::

    device: str = setting("embeddings", "device", "cpu", "where embeddings run", choices=("cpu", "cuda"))

The field's annotation says what the file may hold: ``int``, ``float``, ``bool``, ``str``, ``Path``
(a string, relative to the config file) or ``dict[str, int]`` (a table whose entries override the
default's entries). A number must carry a range (``between=``, a test checks it); the run summary
shows the key under its field name unless ``summary=`` says otherwise, and the tests of bad values
cover the new key without being touched. (A key the summary shows also enters the summary's JSON
Schema, a generated file: ``python -m pipelines.summary > schemas/run_summary.schema.json``; a test
says so when the file is stale.)

>>> PipelineConfig.setting("pipeline.shards")
Setting(section='pipeline', key='shards', doc='dedup and rate-limit shards', between=(1, 65536), ...)
>>> PipelineConfig(shards=4).summary_block()["shards"]
4
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
import tomllib
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from itertools import groupby
from pathlib import Path
from typing import Any

import schemas
from transforms.cost import PriceBook
from transforms.image_checks import PhashBlocklist
from transforms.moderation_rules import RuleSet

HMAC_KEY_ENV = "AIEP_HMAC_KEY"
HASH_MODES = ("sha256", "hmac-sha256")


class ConfigError(Exception):
    """The configuration is unusable; the message says which key and why."""


@dataclass(frozen=True)
class Setting:
    """One key of the config file: where it sits, what it means, and what it may hold.

    Declared with :func:`setting`; ``attribute`` (the field of :class:`PipelineConfig` it sets)
    and ``annotation`` (that field's type) are filled in from the class itself.
    """

    section: str
    key: str
    doc: str
    #: Inclusive bounds of a number, or of each entry of a table; where the pipeline's arithmetic
    #: holds (a window longer than TIMESTAMP's whole range, 2^31 s, means nothing).
    between: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()
    #: The name the run summary's ``config`` block shows it under; True: the field's name,
    #: False: not shown.
    summary: str | bool = True
    #: What a table's entries are keyed by: ``"tier"`` (a tier of the event contract) or
    #: ``"user_id"`` (a user id, 1 .. 2^63-1, written as a string key); empty: anything.
    keys: str = ""
    attribute: str = ""
    annotation: Any = None

    @property
    def name(self) -> str:
        """``section.key``, as error messages name it."""
        return f"{self.section}.{self.key}"

    @property
    def summary_name(self) -> str | None:
        """The key in the run summary's ``config`` block, or ``None`` when it is not shown there."""
        if self.summary is False:
            return None
        return self.attribute if self.summary is True else str(self.summary)

    @property
    def is_table(self) -> bool:
        return typing.get_origin(self.annotation) is dict

    @property
    def entry_type(self) -> type | None:
        """The type of a table's values (``int``, or ``Decimal`` for an amount); ``None`` for a scalar."""
        return typing.get_args(self.annotation)[1] if self.is_table else None

    @property
    def file_type(self) -> type:
        """The TOML value's Python type: a ``Path`` is written as a string, a ``dict`` as a table."""
        if self.is_table:
            return dict
        return str if self.annotation is Path else typing.cast(type, self.annotation)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (as the file gives it) for this key; ``None`` when nothing.

        >>> PipelineConfig.setting("audit.retry_attempts").problem(0)
        'audit.retry_attempts must be between 1 and 100, got 0'
        >>> PipelineConfig.setting("rate_limit.quotas").problem({"free": -1})
        'rate_limit.quotas.free must be an integer between 0 and 2147483647, got -1'
        """
        wanted = self.file_type
        accepted = (int, float) if wanted is float else wanted
        if not isinstance(value, accepted) or (isinstance(value, bool) and wanted is not bool):
            return f"{self.name} must be {wanted.__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {self.choices}, got {value!r}"
        if self.between is None:
            return None
        low, high = self.between
        if isinstance(value, dict):
            for entry, number in value.items():
                if problem := self._key_problem(entry) or self._entry_problem(entry, number):
                    return problem
        elif isinstance(value, int | float) and not low <= value <= high:
            return f"{self.name} must be between {low} and {high}, got {value}"
        return None

    def _key_problem(self, entry: str) -> str | None:
        if self.keys == "tier" and entry not in _tiers():
            return f"{self.name}.{entry}: not a tier; the tiers are {sorted(_tiers())}"
        if self.keys == "user_id" and not (
            entry.isascii() and entry.isdigit() and 1 <= int(entry) <= 2**63 - 1 and entry == str(int(entry))
        ):
            return f"{self.name}.{entry}: a key must be a user id, 1 to 2^63-1 without leading zeros"
        return None

    def _entry_problem(self, entry: str, number: Any) -> str | None:
        assert self.between is not None
        low, high = self.between
        if self.entry_type is Decimal:
            amount = _amount(number)
            if amount is None or not low <= amount <= high:
                return (
                    f"{self.name}.{entry} must be an amount in USD between {low} and {high} with at most "
                    f"{AMOUNT_PLACES} decimals (a number, or its text), got {number!r}"
                )
            return None
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            return f"{self.name}.{entry} must be an integer between {low} and {high}, got {number!r}"
        return None

    def file_value(self, value: Any) -> Any:
        """A field's value as the TOML file (and the run summary) writes it."""
        if isinstance(value, Path):
            return str(value)
        return dict(value) if isinstance(value, dict) else value

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema of this key's value in the run summary's ``config`` block.

        Only lower bounds: the run may raise a value past the file's maximum (``shards`` grows
        with the input).
        """
        entry: dict[str, Any] = {"type": "integer"}
        if self.between is not None:
            entry["minimum"] = self.between[0]
        if self.is_table:
            return {"type": "object", "additionalProperties": entry}
        json_type = {int: "integer", float: "number", bool: "boolean", str: "string"}[self.file_type]
        schema: dict[str, Any] = entry if json_type == "integer" else {"type": json_type}
        if self.choices:
            schema["enum"] = list(self.choices)
        return schema


def setting(
    section: str,
    key: str,
    default: Any,
    doc: str,
    *,
    between: tuple[int, int] | None = None,
    choices: tuple[str, ...] = (),
    summary: str | bool = True,
    keys: str = "",
) -> Any:
    """A field of :class:`PipelineConfig` that the config file sets as ``[section] key``.

    ``default`` may be a function: it is called for each new config (a default read from
    ``schemas/``, or a table, which must not be shared).
    """
    spec = Setting(section, key, doc, between, choices, summary, keys)
    if callable(default):
        return field(default_factory=default, metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


#: Decimal places of a cost (USD), as the outputs keep it (``decimal(10,6)``).
AMOUNT_PLACES = 6


def _amount(value: Any) -> Decimal | None:
    """``value`` (a TOML number, or a decimal's text) as an exact amount; ``None`` when it is not
    one: not finite, negative zero aside, or with more than ``AMOUNT_PLACES`` decimals.

    >>> _amount(12.5), _amount("0.000001"), _amount("1e-7"), _amount(True)
    (Decimal('12.5'), Decimal('0.000001'), None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        # A float's shortest text is the number as the file wrote it (0.1, not 0.1000000000000000055…).
        amount = Decimal(str(value))
    except ArithmeticError:
        return None
    exponent = amount.as_tuple().exponent
    if not amount.is_finite() or not isinstance(exponent, int) or exponent < -AMOUNT_PLACES:
        return None
    return amount


def _tiers() -> set[str]:
    return set(schemas.event_json_schema()["properties"]["ai_tier"]["enum"])


def _no_budgets() -> dict[str, Decimal]:
    return {}


def _tier_quotas() -> dict[str, int]:
    return dict(schemas.tier_table()["quotas"])


def _tier_window() -> int:
    return int(schemas.tier_table()["window_seconds"])


DEFAULT_PRICING = schemas.HERE / "pricing.csv"
YEAR = 365 * 86_400


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a run. Secrets are not kept here: workers read them from the environment."""

    quotas: dict[str, int] = setting(
        "rate_limit", "quotas", _tier_quotas, "events per user per window, by tier", between=(0, 2**31 - 1)
    )
    window_seconds: int = setting(
        "rate_limit", "window_seconds", _tier_window, "seconds of event time per window", between=(1, 2**31)
    )
    pricing_path: Path = setting(
        "pricing", "path", DEFAULT_PRICING, "pricing table, relative to this file", summary="pricing"
    )
    hash_mode: str = setting(
        "hashing", "mode", "sha256", f"hmac-sha256 takes its key from ${HMAC_KEY_ENV}", choices=HASH_MODES
    )
    shards: int = setting("pipeline", "shards", 16, "dedup and rate-limit shards", between=(1, 65_536))
    batch_size: int = setting("pipeline", "batch_size", 10_000, "records per batch", between=(1, 1_000_000))
    # The run summary has never shown the keys below (showing them would change its schema).
    split_mb: int = setting(
        "pipeline", "split_mb", 32, "JSONL is read in ranges this large", between=(1, 1 << 20), summary=False
    )
    carry_content: bool = setting(
        "pipeline",
        "carry_content",
        False,
        "carry texts and inline images to the sinks, for model stages",
        summary=False,
    )
    audit_batch_rows: int = setting(
        "pipeline",
        "audit_batch_rows",
        10_000,
        "rows per audit statement",
        between=(1, 100_000),
        summary=False,
    )
    embeddings: bool = setting(
        "embeddings",
        "enabled",
        True,
        "embed prompts and outputs; off also turns off topics and user features",
    )
    device: str = setting(
        "embeddings",
        "device",
        "auto",
        "where models run: auto takes a GPU when there is one",
        choices=("auto", "cpu", "cuda"),
        summary="embedding_device",
    )
    embedding_batch_size: int = setting(
        "embeddings", "batch_size", 64, "texts per model call", between=(1, 4096), summary=False
    )
    embedding_cache: str = setting(
        "embeddings",
        "cache",
        "",
        "embedding cache: a SQLite file or redis://HOST:PORT/DB; empty: <out>/_cache/embeddings.sqlite",
        summary=False,
    )
    embedding_lru_entries: int = setting(
        "embeddings",
        "lru_entries",
        50_000,
        "vectors each worker keeps in memory in front of the cache",
        between=(0, 10_000_000),
        summary=False,
    )
    topics_path: Path = setting(
        "embeddings", "topics", schemas.DEFAULT_TOPICS, "topic labels, relative to this file", summary=False
    )
    keep_text_chars: int = setting(
        "embeddings",
        "keep_text_chars",
        0,
        "characters of each embedded text kept in embeddings/ (for `similar`); 0 keeps hashes only",
        between=(0, 10_000),
        summary=False,
    )
    features_window_seconds: int = setting(
        "personalization",
        "window_seconds",
        3600,
        "seconds of event time per user-features window",
        between=(1, 2**31),
    )
    moderation: bool = setting(
        "moderation",
        "enabled",
        True,
        "moderate every event (texts, images, rules); off: costs only, no decisions",
    )
    flag_threshold: float = setting(
        "moderation",
        "flag_threshold",
        0.5,
        "overall score at or above which content is flagged",
        between=(0, 1),
    )
    reject_threshold: float = setting(
        "moderation",
        "reject_threshold",
        0.85,
        "overall score at or above which content is rejected",
        between=(0, 1),
    )
    strict_flag_threshold: float = setting(
        "moderation",
        "strict_flag_threshold",
        0.35,
        'flag threshold for users whose prefs say "sensitivity": "strict"',
        between=(0, 1),
    )
    strict_reject_threshold: float = setting(
        "moderation",
        "strict_reject_threshold",
        0.7,
        'reject threshold for users whose prefs say "sensitivity": "strict"',
        between=(0, 1),
    )
    blocklist_path: Path = setting(
        "moderation",
        "blocklist",
        schemas.DEFAULT_BLOCKLIST,
        "phrases that reject a text, one per line, relative to this file",
        summary=False,
    )
    image_blocklist_path: Path = setting(
        "moderation",
        "image_blocklist",
        schemas.DEFAULT_IMAGE_BLOCKLIST,
        "perceptual hashes (16 hex) that reject an image, one per line, relative to this file",
        summary=False,
    )
    image_hash_distance: int = setting(
        "moderation",
        "image_hash_distance",
        6,
        "an image within this Hamming distance of a blocklisted hash is rejected",
        between=(0, 64),
        summary=False,
    )
    max_image_pixels: int = setting(
        "moderation",
        "max_image_pixels",
        40_000_000,
        "an image with more pixels is not decoded: flagged image_oversized",
        between=(1, 1_000_000_000),
        summary=False,
    )
    audit_retry_attempts: int = setting(
        "audit", "retry_attempts", 8, "tries per batch on transient errors", between=(1, 100), summary=False
    )
    users_ttl_seconds: int = setting(
        "audit", "users_ttl_seconds", 300, "how long a tier is cached", between=(1, 10 * YEAR), summary=False
    )
    allowed_lateness_seconds: int = setting(
        "stream",
        "allowed_lateness_seconds",
        300,
        "a stream's watermark trails the latest event time by this much; later events are late",
        between=(0, 10 * YEAR),
    )
    snapshot_seconds: int = setting(
        "stream",
        "snapshot_seconds",
        5,
        "a stream's epoch: how often its state is snapshotted to the recovery store",
        between=(1, 3600),
        summary=False,
    )
    tier_daily_budgets: dict[str, Decimal] = setting(
        "budgets",
        "tier_daily_usd",
        _no_budgets,
        "cost budget of a tier's users together per UTC day of event time, USD; `report` lists breaches",
        between=(0, 10**12),
        summary=False,
        keys="tier",
    )
    tier_monthly_budgets: dict[str, Decimal] = setting(
        "budgets",
        "tier_monthly_usd",
        _no_budgets,
        "cost budget of a tier's users together per calendar month (UTC), USD",
        between=(0, 10**12),
        summary=False,
        keys="tier",
    )
    user_daily_budgets: dict[str, Decimal] = setting(
        "budgets",
        "user_daily_usd",
        _no_budgets,
        'cost budget of one user per UTC day, USD, keyed by user id: { "42" = 5 }',
        between=(0, 10**12),
        summary=False,
        keys="user_id",
    )
    user_monthly_budgets: dict[str, Decimal] = setting(
        "budgets",
        "user_monthly_usd",
        _no_budgets,
        "cost budget of one user per calendar month (UTC), USD, keyed by user id",
        between=(0, 10**12),
        summary=False,
        keys="user_id",
    )
    claim_min_idle_seconds: int = setting(
        "stream",
        "claim_min_idle_seconds",
        30,
        "on start, Redis entries pending this long on another consumer are claimed (XAUTOCLAIM)",
        between=(0, 86_400),
        summary=False,
    )
    status_seconds: int = setting(
        "stream",
        "status_seconds",
        10,
        "how often a stream prints its one-line status on stderr",
        between=(1, 86_400),
        summary=False,
    )

    @staticmethod
    def settings() -> tuple[Setting, ...]:
        """Every key a config file may set, in the order of the fields."""
        return _settings()

    @staticmethod
    def setting(name: str) -> Setting:
        """The key named ``section.key``."""
        return {s.name: s for s in _settings()}[name]

    def summary_block(self) -> dict[str, Any]:
        """The run summary's ``config`` block: the settings in force, as JSON values."""
        return {
            s.summary_name: s.file_value(getattr(self, s.attribute)) for s in _settings() if s.summary_name
        }

    @staticmethod
    def summary_block_schema() -> dict[str, Any]:
        """The JSON Schema of :meth:`summary_block`'s result.

        No key is required: a summary written before a key was added lacks it, and stays valid.
        """
        return {
            "type": "object",
            "properties": {s.summary_name: s.json_schema() for s in _settings() if s.summary_name},
            "additionalProperties": False,
        }

    @property
    def carries_content(self) -> bool:
        """Whether events carry their texts and images past validation: a model stage needs them."""
        return self.carry_content or self.embeddings or self.moderation

    @property
    def needs_vectors(self) -> bool:
        """Whether the run embeds texts: for ``embeddings/`` and features, or for moderation."""
        return self.embeddings or self.moderation

    def hmac_key(self) -> bytes | None:
        """The HMAC key for ``hmac-sha256`` mode, from the environment; ``None`` for sha256."""
        if self.hash_mode == "sha256":
            return None
        key = os.environb.get(HMAC_KEY_ENV.encode(), b"")  # the key's bytes, whatever they are
        if not key:
            raise ConfigError(f"hashing.mode = {self.hash_mode} needs the key in ${HMAC_KEY_ENV}")
        return key


@cache
def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(PipelineConfig)
    return tuple(
        dataclasses.replace(f.metadata["setting"], attribute=f.name, annotation=hints[f.name])
        for f in dataclasses.fields(PipelineConfig)
        if "setting" in f.metadata
    )


def load_config(path: Path | None) -> PipelineConfig:
    """Defaults, overridden by the TOML file at ``path`` when given.

    Raises ConfigError naming the file and the key (or the pricing table's row and column) of
    anything unusable: an unknown section or key, a value of the wrong type or out of range, a
    pricing table that does not load.
    """
    if path is None:
        return _checked(PipelineConfig(), "defaults")
    where = f"config {str(path)!r}"
    try:
        doc = tomllib.loads(_read_regular_file(path, "config").decode("utf-8-sig"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    defaults = PipelineConfig()
    values: dict[str, Any] = {}
    for spec, value in _read_keys(doc, where):
        if spec.annotation is Path:
            value = path.parent / value
        elif spec.is_table:
            if spec.entry_type is Decimal:
                value = {entry: _amount(number) for entry, number in value.items()}
            value = {**getattr(defaults, spec.attribute), **value}
        elif spec.annotation is float:
            value = float(value)
        values[spec.attribute] = value
    return _checked(dataclasses.replace(defaults, **values), where)


def _read_keys(doc: dict[str, Any], where: str) -> list[tuple[Setting, Any]]:
    """Each key the file sets, with its value as written; the first unusable one is an error."""
    sections: dict[str, dict[str, Setting]] = {}
    for known in _settings():
        sections.setdefault(known.section, {})[known.key] = known
    found = []
    for section, body in doc.items():
        keys = sections.get(section)
        if keys is None:
            raise ConfigError(f"{where}: unknown section [{section}]; expected {sorted(sections)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section} must be a table ([{section}]), got {body!r}")
        for name, value in body.items():
            spec = keys.get(name)
            if spec is None:
                raise ConfigError(f"{where}: unknown key {section}.{name}; expected {sorted(keys)}")
            if problem := spec.problem(value):
                raise ConfigError(f"{where}: {problem}")
            found.append((spec, value))
    return found


def _checked(config: PipelineConfig, where: str) -> PipelineConfig:
    """``config`` if every value is usable (defaults included: they come from ``schemas/``)."""
    tiers = _tiers()
    if set(config.quotas) != tiers:
        raise ConfigError(f"{where}: rate_limit.quotas must name exactly the tiers {sorted(tiers)}")
    for spec in _settings():
        if problem := spec.problem(spec.file_value(getattr(config, spec.attribute))):
            raise ConfigError(f"{where}: {problem}")
    _check_pricing(config.pricing_path)
    if config.embeddings:
        _check_topics(config.topics_path, where)
    if config.moderation:
        _check_moderation(config, where)
    try:
        config.hmac_key()  # fail now, not in a worker, when the key is missing
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config


def example_toml() -> str:
    """A config file that sets every key to its default, each with its meaning and range.

    Loading it gives the defaults; ``python -m connectors.config`` prints it.
    """
    defaults = PipelineConfig()
    lines: list[str] = []
    for section, specs in groupby(sorted(_settings(), key=_section_order), key=lambda s: s.section):
        lines += ["", f"[{section}]"] if lines else [f"[{section}]"]
        for spec in specs:
            value = spec.file_value(getattr(defaults, spec.attribute))
            lines.append(f"{spec.key} = {_toml_value(value)}  # {spec.doc}{_bounds(spec)}")
    return "\n".join(lines) + "\n"


def _section_order(spec: Setting) -> int:
    return [s.section for s in _settings()].index(spec.section)


def _bounds(spec: Setting) -> str:
    if spec.choices:
        return f"; one of {', '.join(spec.choices)}"
    if spec.between is None:
        return ""
    each = "each " if spec.is_table else ""
    return f"; {each}{spec.between[0]} .. {spec.between[1]}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Decimal):
        return f'"{value}"'
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _read_regular_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a FIFO or device is refused (reading one could wait forever)."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{what} {str(path)!r} is not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def _check_topics(path: Path, where: str) -> None:
    _read_regular_file(path, "topics file")
    try:
        schemas.topics(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: embeddings.topics {str(path)!r} is not UTF-8: {exc.reason}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: embeddings.topics: {exc}") from None


def _check_moderation(config: PipelineConfig, where: str) -> None:
    for strictness, flag, reject in (
        ("", config.flag_threshold, config.reject_threshold),
        ("strict_", config.strict_flag_threshold, config.strict_reject_threshold),
    ):
        if flag > reject:
            raise ConfigError(
                f"{where}: moderation.{strictness}flag_threshold ({flag}) must be at most "
                f"moderation.{strictness}reject_threshold ({reject})"
            )
    for spec_name, path, check in (
        ("moderation.blocklist", config.blocklist_path, lambda entries: RuleSet(blocklist=entries)),
        ("moderation.image_blocklist", config.image_blocklist_path, PhashBlocklist),
    ):
        _read_regular_file(path, spec_name)
        try:
            check(schemas.list_file(path))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: {spec_name} {str(path)!r} is not UTF-8: {exc.reason}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {spec_name} {str(path)!r}: {exc}") from None


def _check_pricing(path: Path) -> None:
    """Load the pricing table once here, so a bad row fails the run before it starts."""
    where = f"pricing table {str(path)!r}"
    _read_regular_file(path, "pricing table")
    try:
        PriceBook.from_rows(schemas.pricing_rows(path))
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, csv.Error) as exc:
        raise ConfigError(f"{where}: {exc}") from None


if __name__ == "__main__":
    print(example_toml(), end="")
