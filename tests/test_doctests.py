"""The examples in docstrings are part of the documentation: they must stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "transforms.cost",
    "transforms.hashing",
    "transforms.sharding",
    "transforms.tiers",
    "transforms.validate",
    "connectors.tabular",
    "connectors.parquet_source",
    "connectors.inputs",
    "connectors.storage",
    "connectors.jsonl_source",
    "connectors.database_url",
    "connectors.audit_sink",
    "connectors.parquet_sink",
    "connectors.embedding_cache",
    "connectors.redis_stream",
    "transforms.dedup",
    "transforms.decision_categories",
    "transforms.dead_letter",
    "transforms.personalization",
    "transforms.topics",
    "transforms.moderation_patterns",
    "transforms.moderation_checks",
    "transforms.moderation_rules",
    "pipelines.batch_run",
    "pipelines.summary",
    "pipelines.beam_options",
    "pipelines.stream_cluster",
    "connectors.config",
    "loadgen.generate",
    "loadgen.bad_records",
    "loadgen.events",
    "loadgen.images",
    "loadgen.load",
    "loadgen.text",
    "transforms.image_checks",
    "models.nudenet_detector",
    "models.image_moderator",
    "analytics.views",
    "analytics.report",
    "analytics.dashboard",
    "analytics.governance",
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0
