"""The spine as one DuckDB statement: what a data engineer would write instead of the pipeline.

Every limit comes from the contracts the pipeline reads (``event.schema.json`` through
:class:`~transforms.validate.EventRules`, quotas and window from the run config, prices from its
pricing table), so the statement checks what the pipeline checks and changes with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import schemas
from connectors.config import PipelineConfig
from transforms.validate import EventRules

_READ_COLUMNS = {
    "event_id": "VARCHAR",
    "event_time": "VARCHAR",
    "user_id": "BIGINT",
    "operation_type": "VARCHAR",
    "model": "VARCHAR",
    "input": "STRUCT(text VARCHAR)",
    "output": "STRUCT(text VARCHAR, image JSON)",
    "usage": "STRUCT(input_tokens BIGINT, output_tokens BIGINT, images BIGINT)",
    "ai_tier": "VARCHAR",
    "metadata": "JSON",
}
_PRICE_COLUMNS = {
    "model": "VARCHAR",
    "effective_from": "DATE",
    "input_per_1k_usd": "DECIMAL(18,8)",
    "output_per_1k_usd": "DECIMAL(18,8)",
    "per_image_usd": "DECIMAL(18,8)",
}


def quote(text: str) -> str:
    """A SQL string literal.

    >>> quote("it's")
    "'it''s'"
    """
    return "'" + text.replace("'", "''") + "'"


def _struct(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{quote(k)}: {quote(v)}" for k, v in columns.items()) + "}"


def _validity(rules: EventRules) -> str:
    """The WHERE clause of the contract: required, typed, lengths, ranges, tier, counts."""
    lengths = rules.max_lengths
    low, high = rules.time_range
    pattern = schemas.event_json_schema()["properties"]["event_time"]["pattern"]
    tiers = ", ".join(quote(t) for t in sorted(rules.tiers))
    return f"""
        event_id IS NOT NULL AND event_time IS NOT NULL AND user_id IS NOT NULL
        AND operation_type IS NOT NULL AND model IS NOT NULL
        AND length(event_id) BETWEEN 1 AND {lengths["event_id"]}
        AND length(operation_type) BETWEEN 1 AND {lengths["operation_type"]}
        AND length(model) BETWEEN 1 AND {lengths["model"]}
        AND coalesce(length(input.text), 0) <= {lengths["input.text"]}
        AND coalesce(length(output.text), 0) <= {lengths["output.text"]}
        AND user_id BETWEEN {rules.user_id_range[0]} AND {rules.user_id_range[1]}
        AND regexp_matches(event_time, {quote(pattern)})
        AND ts BETWEEN TIMESTAMPTZ {quote(low.isoformat())}
                   AND TIMESTAMPTZ {quote(high.isoformat())}
        AND coalesce(usage.input_tokens, 0) >= 0 AND coalesce(usage.output_tokens, 0) >= 0
        AND coalesce(usage.images, 0) >= 0
        AND (ai_tier IS NULL OR ai_tier IN ({tiers}))"""


def _enriched(config: PipelineConfig, default_tier: str) -> str:
    """CTEs after validation: prices in force (ASOF join), quotas, cost, the window key."""
    window_us = config.window_seconds * 1_000_000
    quotas = ", ".join(f"({quote(t)}, {q})" for t, q in sorted(config.quotas.items()))
    return f"""
    prices AS (
        SELECT model, effective_from, coalesce(input_per_1k_usd, 0) AS p_in,
               coalesce(output_per_1k_usd, 0) AS p_out, coalesce(per_image_usd, 0) AS p_img
        FROM read_csv({quote(str(config.pricing_path))}, header = true,
                      columns = {_struct(_PRICE_COLUMNS)})
    ),
    quotas(quota_tier, quota) AS (VALUES {quotas}),
    priced AS (
        SELECT d.*, coalesce(d.ai_tier, {quote(default_tier)}) AS tier,
               round_even((coalesce(d.usage.input_tokens, 0) * p.p_in
                      + coalesce(d.usage.output_tokens, 0) * p.p_out) * 0.001::DECIMAL(4, 3)
                     + coalesce(d.usage.images, 0) * p.p_img, 6)::DECIMAL(10, 6) AS cost,
               epoch_us(d.ts) // {window_us} AS window_no
        FROM deduplicated d
        ASOF LEFT JOIN prices p ON d.model = p.model AND d.ts::DATE >= p.effective_from
    )"""


def _events_select(source: Path, window_us: int) -> str:
    """The final SELECT: the events dataset's columns, hashes, the rate-limit flag, ``dt``."""
    return f"""
    SELECT event_id, ts AS event_time, user_id, operation_type, model, tier AS ai_tier,
           CASE WHEN ai_tier IS NULL THEN 'default' ELSE 'event' END AS tier_source,
           CASE WHEN output.image IS NULL THEN 'text' ELSE 'image' END AS modality,
           sha256(nfc_normalize(input.text)) AS input_hash,
           sha256(nfc_normalize(output.text)) AS output_hash,
           NULL::VARCHAR AS image_hash, 'sha256' AS hash_mode,
           coalesce(usage.input_tokens, 0) AS input_tokens,
           coalesce(usage.output_tokens, 0) AS output_tokens,
           coalesce(usage.images, 0) AS images,
           cost, CASE WHEN cost IS NULL THEN 'unpriced' ELSE 'priced' END AS cost_status,
           row_number() OVER (PARTITION BY user_id, window_no ORDER BY ts, event_id) > quota
               AS rate_limited,
           make_timestamp(window_no * {window_us}) AS window_start,
           metadata::VARCHAR AS metadata, {quote(str(source))} AS source, line_no,
           strftime(ts, '%Y-%m-%d') AS dt
    FROM priced JOIN quotas ON quota_tier = tier"""


def peer_sql(source: Path, out_dir: Path, config: PipelineConfig, default_tier: str = "free") -> str:
    """One ``COPY (…) TO out_dir`` statement doing the spine's work on ``source``.

    The session must run in UTC (``SET TimeZone = 'UTC'``): ``dt`` and the price's date are UTC.
    """
    if config.hash_mode != "sha256":
        raise ValueError(f"the DuckDB peer hashes with sha256 only, config has {config.hash_mode}")
    rules = EventRules.from_json_schema(schemas.event_json_schema())
    read = (
        f"read_json({quote(str(source))}, format = 'newline_delimited', ignore_errors = true, "
        f"columns = {_struct(_READ_COLUMNS)}) WITH ORDINALITY"
    )
    return f"""
COPY (
    WITH parsed AS (
        SELECT * EXCLUDE (ordinality), ordinality AS line_no,
               TRY_CAST(event_time AS TIMESTAMPTZ) AS ts
        FROM {read}
    ),
    deduplicated AS (
        SELECT * FROM parsed WHERE {_validity(rules)}
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY line_no) = 1
    ),{_enriched(config, default_tier)}
    {_events_select(source, config.window_seconds * 1_000_000)}
) TO {quote(str(out_dir))} (FORMAT PARQUET, PARTITION_BY (dt), COMPRESSION zstd)
"""


def describe(config: PipelineConfig) -> str:
    """The contracts the statement was built from, for the printed report."""
    return json.dumps(
        {
            "quotas": config.quotas,
            "window_seconds": config.window_seconds,
            "pricing": str(config.pricing_path),
        }
    )
