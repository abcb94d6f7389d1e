"""Run configuration, read in one place: defaults from ``schemas/``, overrides from a TOML file,
secrets from the environment.

A config file looks like::

    [rate_limit]
    window_seconds = 60
    quotas = { free = 20, pro = 200, enterprise = 2000 }

    [pricing]
    path = "my_prices.csv"          # relative to the config file

    [hashing]
    mode = "hmac-sha256"             # key from $AIEP_HMAC_KEY

    [pipeline]
    batch_size = 10000               # records per batch
    shards = 16                      # dedup and rate-limit shards
    split_mb = 32                    # a plain JSONL input is read in ranges of this size
    audit_batch_rows = 10000         # rows per audit-store transaction

    [audit]
    retry_attempts = 8               # tries per batch on transient database errors
    users_ttl_seconds = 300          # how long a looked-up user's tier is trusted
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemas
from transforms.cost import PriceBook

HMAC_KEY_ENV = "AIEP_HMAC_KEY"
HASH_MODES = ("sha256", "hmac-sha256")


class ConfigError(Exception):
    """The configuration is unusable; the message says which key and why."""


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a run. Secrets are not kept here: workers read them from the environment."""

    quotas: dict[str, int] = field(default_factory=lambda: dict(schemas.tier_table()["quotas"]))
    window_seconds: int = field(default_factory=lambda: int(schemas.tier_table()["window_seconds"]))
    pricing_path: Path = schemas.HERE / "pricing.csv"
    hash_mode: str = "sha256"
    batch_size: int = 10_000
    shards: int = 16
    split_mb: int = 32
    audit_batch_rows: int = 10_000
    audit_retry_attempts: int = 8
    users_ttl_seconds: int = 300

    def hmac_key(self) -> bytes | None:
        """The HMAC key for ``hmac-sha256`` mode, from the environment; ``None`` for sha256."""
        if self.hash_mode == "sha256":
            return None
        key = os.environb.get(HMAC_KEY_ENV.encode(), b"")  # the key's bytes, whatever they are
        if not key:
            raise ConfigError(f"hashing.mode = {self.hash_mode} needs the key in ${HMAC_KEY_ENV}")
        return key


@dataclass(frozen=True)
class _Key:
    """One key of the config file: the field it sets, its type and, for numbers, its range."""

    field: str
    type: type
    low: int | None = None
    high: int | None = None


#: Every key a config file may set. Ranges keep values where the pipeline's arithmetic holds:
#: a window longer than TIMESTAMP's whole range (2^31 s) means nothing, shards are an int32 column.
_SECTIONS: dict[str, dict[str, _Key]] = {
    "rate_limit": {
        "window_seconds": _Key("window_seconds", int, 1, 2**31),
        "quotas": _Key("quotas", dict),
    },
    "pricing": {"path": _Key("pricing_path", str)},
    "hashing": {"mode": _Key("hash_mode", str)},
    "pipeline": {
        "batch_size": _Key("batch_size", int, 1, 1_000_000),
        "shards": _Key("shards", int, 1, 65_536),
        "split_mb": _Key("split_mb", int, 1, 1 << 20),
        "audit_batch_rows": _Key("audit_batch_rows", int, 1, 100_000),
    },
    "audit": {
        "retry_attempts": _Key("audit_retry_attempts", int, 1, 100),
        "users_ttl_seconds": _Key("users_ttl_seconds", int, 1, 10 * 365 * 86_400),
    },
}
_QUOTA_MAX = 2**31 - 1


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
    values: dict[str, Any] = {}
    for section, body in doc.items():
        keys = _SECTIONS.get(section)
        if keys is None:
            raise ConfigError(f"{where}: unknown section [{section}]; expected {sorted(_SECTIONS)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section} must be a table ([{section}]), got {body!r}")
        for name, value in body.items():
            key = keys.get(name)
            if key is None:
                raise ConfigError(f"{where}: unknown key {section}.{name}; expected {sorted(keys)}")
            if not isinstance(value, key.type) or isinstance(value, bool):
                raise ConfigError(f"{where}: {section}.{name} must be {key.type.__name__}, got {value!r}")
            if (
                isinstance(value, int)
                and key.low is not None
                and key.high is not None
                and not key.low <= value <= key.high
            ):
                raise ConfigError(
                    f"{where}: {section}.{name} must be between {key.low} and {key.high}, got {value}"
                )
            values[key.field] = value
    defaults = PipelineConfig()
    values["quotas"] = {**defaults.quotas, **values.get("quotas", {})}
    if "pricing_path" in values:
        values["pricing_path"] = path.parent / values["pricing_path"]
    return _checked(dataclasses.replace(defaults, **values), where)


def _checked(config: PipelineConfig, where: str) -> PipelineConfig:
    tiers = set(schemas.event_json_schema()["properties"]["ai_tier"]["enum"])
    if set(config.quotas) != tiers:
        raise ConfigError(f"{where}: rate_limit.quotas must name exactly the tiers {sorted(tiers)}")
    for tier, quota in config.quotas.items():
        if not isinstance(quota, int) or isinstance(quota, bool) or not 0 <= quota <= _QUOTA_MAX:
            raise ConfigError(
                f"{where}: rate_limit.quotas.{tier} must be an integer between 0 and {_QUOTA_MAX}, "
                f"got {quota!r}"
            )
    if config.hash_mode not in HASH_MODES:
        raise ConfigError(f"{where}: hashing.mode must be one of {HASH_MODES}, got {config.hash_mode!r}")
    _check_pricing(config.pricing_path)
    try:
        config.hmac_key()  # fail now, not in a worker, when the key is missing
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config


def _read_regular_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a FIFO or device is refused (reading one could wait forever)."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{what} {str(path)!r} is not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


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
