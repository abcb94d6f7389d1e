"""One worker's stages and sinks, built lazily and once: what an engine adapter calls.

:class:`SpineWorker` is the one place that knows how each stage of :mod:`pipelines.stages`,
:mod:`pipelines.semantic` and :mod:`pipelines.moderation` is built from a :class:`RunPlan`; an
engine's DoFn or operator holds one per worker process and calls its members on batches.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import sqlalchemy as sa

import schemas
from connectors.audit_sink import AuditSink, StoredEvents
from connectors.database import open_engine
from connectors.decision_sink import DecisionSink
from connectors.embedding_cache import EmbeddingCache
from connectors.parquet_sink import NoFileNames, ParquetSink
from connectors.sinks import Sink
from connectors.users import UserDirectory
from models.embedder import TextEmbedder
from pipelines.semantic import (
    CachedEmbedder,
    EmbedTexts,
    ProfileWindows,
    WriteEmbeddings,
    WriteUserFeatures,
    open_cache,
    topic_index,
)

#: The tier of an event that names none and whose user has none (DESIGN.md, stage 3).
from pipelines.stages import (
    WRITE_BUFFER_BATCHES,
    ApplyRateLimits,
    CollapseDuplicates,
    CompareWithStore,
    OrderForSinks,
    RawRecords,
    ReadInputs,
    ResolveTiers,
    RunPlan,
    ValidateHashPrice,
    WriteDeadLetters,
    WriteEvents,
    WriteViolations,
    build_enrich_settings,
)
from transforms.event_batch import (
    EnrichSettings,
)
from transforms.image_checks import PhashBlocklist
from transforms.moderation_rules import RuleSet
from transforms.personalization import UserFeatureWindows
from transforms.rate_limit import RateLimits
from transforms.topics import TopicIndex

if TYPE_CHECKING:  # the moderation models load where moderation runs (scipy alone is ~50 ms)
    from pipelines.moderation import ModerateContent, WriteModeration


def use_malloc_for_arrow() -> None:
    """Arrow allocates from the C library's ``malloc`` in this process from now on, unless
    ``ARROW_DEFAULT_MEMORY_POOL`` chooses a pool.

    pyarrow's default pool, mimalloc, keeps pages it freed for reuse; a worker frees a batch's
    buffers after each stage, so here it only held more memory. Measured at 1M events (two worker
    processes, alternating runs): mimalloc 21.0 and 21.6 s, 1,461 and 1,463 MB summed peak RSS;
    malloc 18.7 and 19.4 s, 1,316 and 1,352 MB.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


class SpineWorker:
    """The stages of one worker, built once, on first use; ``close`` releases the database.

    Stages are built lazily so that a worker opens a database engine only if it runs a stage
    that needs one. Building a worker makes Arrow allocate with ``malloc`` in its process
    (``use_malloc_for_arrow``).
    """

    def __init__(self, plan: RunPlan, raws: RawRecords | None = None) -> None:
        use_malloc_for_arrow()
        self.plan = plan
        # How the sinks read back the raw records of events that travel without them (an
        # engine's choice, see ``pipelines.beam``); None: events keep theirs.
        self._raws = raws
        self.out_dir = plan.out_dir  # a local folder or an object-store URL
        self._engine: sa.Engine | None = None
        self._sinks: list[Sink | EmbeddingCache] = []  # what close() closes

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = open_engine(self.plan.audit_url)
        return self._engine

    @cached_property
    def settings(self) -> EnrichSettings:
        return build_enrich_settings(self.plan.config)

    def parquet(self, dataset: str) -> ParquetSink:
        """The sink of one dataset of ``schemas/datasets.json``, named by the plan's naming."""
        sink = ParquetSink(self.out_dir, schemas.dataset(dataset), self.plan.naming)
        self._sinks.append(sink)
        return sink

    @cached_property
    def read(self) -> ReadInputs:
        return ReadInputs(self.plan.config.batch_size, self.settings.rules)

    @cached_property
    def validate(self) -> ValidateHashPrice:
        return ValidateHashPrice(self.settings, self.plan.image_dirs, self.plan.config.carries_content)

    @cached_property
    def collapse(self) -> CollapseDuplicates:
        return CollapseDuplicates()

    @cached_property
    def compare(self) -> CompareWithStore:
        config = self.plan.config
        stored = (
            StoredEvents(self.engine, config.audit_retry_attempts) if self.plan.compare_with_store else None
        )
        events = self.parquet("events")
        if self.plan.stream:
            events = ParquetSink(self.out_dir, schemas.dataset("events"), NoFileNames())
        # Events go on without their raw records when the sinks can read them back.
        keep_raw = self._raws is None
        return CompareWithStore(stored, events.held_elsewhere, config.shards, self.plan.panes, keep_raw)

    @cached_property
    def users(self) -> UserDirectory:
        config = self.plan.config
        return UserDirectory(
            self.engine,
            ttl_seconds=config.users_ttl_seconds,
            retry_attempts=config.audit_retry_attempts,
            tiers=frozenset(config.quotas),
        )

    @cached_property
    def tiers(self) -> ResolveTiers:
        return ResolveTiers(self.users)

    @cached_property
    def rate_limits(self) -> ApplyRateLimits:
        return ApplyRateLimits(RateLimits(self.plan.config.quotas, self.plan.config.window_seconds))

    @cached_property
    def order(self) -> OrderForSinks:
        return OrderForSinks()

    @cached_property
    def write_events(self) -> WriteEvents:
        config = self.plan.config
        audit = AuditSink(
            self.engine, config.audit_batch_rows, config.audit_retry_attempts, self.plan.outputs_id
        )
        self._sinks.append(audit)
        buffer_rows = WRITE_BUFFER_BATCHES * config.audit_batch_rows
        return WriteEvents(audit, self.parquet("events"), buffer_rows, self._raws)

    @cached_property
    def write_violations(self) -> WriteViolations:
        return WriteViolations(self.parquet("rate_limit_violations"))

    @cached_property
    def write_dead_letters(self) -> WriteDeadLetters:
        return WriteDeadLetters(self.parquet("dead_letter"))

    @cached_property
    def embedder(self) -> TextEmbedder:
        config = self.plan.config
        return TextEmbedder(device=config.device, batch_size=config.embedding_batch_size)

    @cached_property
    def cached_embedder(self) -> CachedEmbedder:
        # An object-store run names its cache (batch_run refuses it otherwise): no default is made there.
        cache = open_cache(self.plan.config, Path(self.out_dir), self.embedder)
        self._sinks.append(cache)
        return CachedEmbedder(self.embedder, cache, self.settings.hasher, self.embedder.dimensions)

    @cached_property
    def topics(self) -> TopicIndex:
        return topic_index(schemas.topics(self.plan.config.topics_path), self.cached_embedder)

    @cached_property
    def embed_texts(self) -> EmbedTexts:
        config = self.plan.config
        model = (self.embedder.name, self.embedder.version)
        topics = self.topics if config.embeddings else None
        return EmbedTexts(
            self.cached_embedder, topics, model, config.keep_text_chars, rate_limited_too=config.moderation
        )

    @cached_property
    def moderate(self) -> ModerateContent:
        from models.image_moderator import ImageModerator
        from models.moderation_text import TextModerator
        from pipelines.moderation import ModerateContent, ScreenImages
        from transforms.moderation import Thresholds

        config = self.plan.config
        images = ScreenImages(
            ImageModerator(),
            PhashBlocklist(schemas.list_file(config.image_blocklist_path), config.image_hash_distance),
            config.max_image_pixels,
            self.settings.rules.image_max_bytes,
        )
        thresholds = (
            Thresholds.of(config.flag_threshold, config.reject_threshold),
            Thresholds.of(config.strict_flag_threshold, config.strict_reject_threshold),
        )
        return ModerateContent(
            TextModerator.load(),
            RuleSet(blocklist=schemas.list_file(config.blocklist_path)),
            images,
            self.users,
            thresholds,
            schemas.arrow_schema("moderation"),
            config.shards,
        )

    @cached_property
    def write_moderation(self) -> WriteModeration:
        from pipelines.moderation import WriteModeration

        config = self.plan.config
        decisions = DecisionSink(self.engine, config.audit_batch_rows, config.audit_retry_attempts)
        self._sinks.append(decisions)
        return WriteModeration(self.parquet("moderation"), decisions)

    @cached_property
    def profile(self) -> ProfileWindows:
        config = self.plan.config
        windows = UserFeatureWindows(config.features_window_seconds, schemas.arrow_schema("user_features"))
        return ProfileWindows(windows, self.topics, self.users, self.cached_embedder)

    @cached_property
    def late_events(self) -> ParquetSink:
        return self.parquet("late_events")

    @cached_property
    def write_embeddings(self) -> WriteEmbeddings:
        return WriteEmbeddings(self.parquet("embeddings"))

    @cached_property
    def write_user_features(self) -> WriteUserFeatures:
        return WriteUserFeatures(self.parquet("user_features"))

    def close(self) -> None:
        """Close the sinks and dispose of the worker's database engine (its pooled connections);
        stages used after it are built anew."""
        for sink in self._sinks:
            sink.close()
        self._sinks.clear()
        for name, member in vars(type(self)).items():
            if isinstance(member, cached_property):
                self.__dict__.pop(name, None)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
