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

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemas

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
        key = os.environ.get(HMAC_KEY_ENV, "")
        if not key:
            raise ConfigError(f"hashing.mode = {self.hash_mode} needs the key in ${HMAC_KEY_ENV}")
        return key.encode("utf-8")


_SECTIONS: dict[str, dict[str, type]] = {
    "rate_limit": {"window_seconds": int, "quotas": dict},
    "pricing": {"path": str},
    "hashing": {"mode": str},
    "pipeline": {"batch_size": int, "shards": int, "split_mb": int, "audit_batch_rows": int},
    "audit": {"retry_attempts": int, "users_ttl_seconds": int},
}


def load_config(path: Path | None) -> PipelineConfig:
    """Defaults, overridden by the TOML file at ``path`` when given; unknown keys are errors."""
    if path is None:
        return _checked(PipelineConfig())
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, body in doc.items():
        keys = _SECTIONS.get(section)
        if keys is None or not isinstance(body, dict):
            raise ConfigError(f"config: unknown section [{section}]; expected {sorted(_SECTIONS)}")
        for key, value in body.items():
            expected = keys.get(key)
            if expected is None:
                raise ConfigError(f"config: unknown key {section}.{key}; expected {sorted(keys)}")
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(f"config: {section}.{key} must be {expected.__name__}, got {value!r}")
            values[f"{section}.{key}"] = value
    defaults = PipelineConfig()
    quotas = dict(defaults.quotas)
    quotas.update(values.get("rate_limit.quotas", {}))
    pricing = values.get("pricing.path")
    return _checked(
        PipelineConfig(
            quotas=quotas,
            window_seconds=values.get("rate_limit.window_seconds", defaults.window_seconds),
            pricing_path=(path.parent / pricing) if pricing else defaults.pricing_path,
            hash_mode=values.get("hashing.mode", defaults.hash_mode),
            batch_size=values.get("pipeline.batch_size", defaults.batch_size),
            shards=values.get("pipeline.shards", defaults.shards),
            split_mb=values.get("pipeline.split_mb", defaults.split_mb),
            audit_batch_rows=values.get("pipeline.audit_batch_rows", defaults.audit_batch_rows),
            audit_retry_attempts=values.get("audit.retry_attempts", defaults.audit_retry_attempts),
            users_ttl_seconds=values.get("audit.users_ttl_seconds", defaults.users_ttl_seconds),
        )
    )


def _checked(config: PipelineConfig) -> PipelineConfig:
    tiers = set(schemas.event_json_schema()["properties"]["ai_tier"]["enum"])
    if set(config.quotas) != tiers:
        raise ConfigError(f"config: quotas must name exactly the tiers {sorted(tiers)}")
    for tier, quota in config.quotas.items():
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
            raise ConfigError(f"config: quota for {tier} must be an integer >= 0, got {quota!r}")
    if config.hash_mode not in HASH_MODES:
        raise ConfigError(f"config: hashing.mode must be one of {HASH_MODES}, got {config.hash_mode!r}")
    for name in (
        "window_seconds",
        "batch_size",
        "shards",
        "split_mb",
        "audit_batch_rows",
        "audit_retry_attempts",
        "users_ttl_seconds",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"config: {name} must be > 0, got {getattr(config, name)}")
    if not config.pricing_path.is_file():
        raise ConfigError(f"config: pricing table {str(config.pricing_path)!r} does not exist")
    config.hmac_key()  # fail now, not in a worker, when the key is missing
    return config
