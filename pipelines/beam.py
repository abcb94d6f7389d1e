"""The spine on Apache Beam: DirectRunner by default; Flink, Spark or Dataflow by pipeline options.

Read the chain in ``build`` top to bottom to follow one event from its input file to the sinks.
Every step calls :class:`pipelines.stages.SpineSteps`; elements are batches, never single events:
a shuffle moves ``(shard, path)`` of an Arrow batch spilled by ``connectors.spill``, so memory stays
flat however large the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.sources import InputSplit
from connectors.spill import Spill
from pipelines import progress
from pipelines.stages import Counts, RunPlan, SpineSteps
from transforms.event_batch import InputRecords

NAMESPACE = "aiep"
DEAD_LETTER = "dead_letter"
VIOLATIONS = "rate_limit_violations"


class _StepDoFn(beam.DoFn):  # type: ignore[misc]
    """Builds the worker's SpineSteps once and reports step counts as Beam counters."""

    def __init__(self, plan: RunPlan) -> None:
        self._plan = plan

    def setup(self) -> None:
        self.steps = SpineSteps(self._plan)
        self.spill = Spill(self._plan.staging_dir)

    def count(self, counts: Counts) -> None:
        for name, value in counts.items():
            if value:
                Metrics.counter(NAMESPACE, name).inc(value)


class ReadSplit(_StepDoFn):
    """Input split → batches of raw records."""

    def process(self, split: InputSplit) -> Iterator[InputRecords]:
        for records in self.steps.read(split):
            progress.advance(sum(map(len, records.raws)) + len(records.raws) + records.blank_lines)
            yield records


class Enrich(_StepDoFn):
    """Raw records → (event_id shard, spilled valid events); dead letters to a tagged output."""

    def process(self, records: InputRecords) -> Iterator[Any]:
        shards, dead, counts = self.steps.enrich(records)
        self.count(counts)
        for shard, table in shards:
            yield shard, self.spill.put("by_event_id", table)
        for key, table in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (key, self.spill.put(DEAD_LETTER, table)))


class CollapseDuplicates(_StepDoFn):
    """All copies of a shard's event_ids → (user shard, spilled events, one per event_id)."""

    def process(self, element: tuple[int, Iterable[str]]) -> Iterator[Any]:
        by_user, conflicts, counts = self.steps.collapse(self.spill.load(element[1]))
        self.count(counts)
        for shard, table in by_user:
            yield shard, self.spill.put("by_user", table)
        for key, table in conflicts:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (key, self.spill.put(DEAD_LETTER, table)))


class ApplyRateLimits(_StepDoFn):
    """All events of a user shard → (shard, flagged events); violations to a tagged output."""

    def process(self, element: tuple[int, Iterable[str]]) -> Iterator[Any]:
        shard, paths = element
        events, violations = self.steps.rate_limit(self.spill.load(paths))
        yield shard, events
        if violations.num_rows:
            yield beam.pvalue.TaggedOutput(VIOLATIONS, (shard, violations))


class WriteEvents(_StepDoFn):
    """Sink: the audit store, then events Parquet; events another run stored meanwhile with
    another payload become dead letters."""

    def process(self, element: tuple[int, pa.Table]) -> Iterator[Any]:
        conflicts, counts = self.steps.write_events(*element)
        self.count(counts)
        for key, table in conflicts:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (key, self.spill.put(DEAD_LETTER, table)))


class WriteViolations(_StepDoFn):
    """Sink: rate_limit_violations Parquet."""

    def process(self, element: tuple[int, pa.Table]) -> None:
        self.count(self.steps.write_violations(*element))


class WriteDeadLetters(_StepDoFn):
    """Sink: dead_letter Parquet, one file per (source, bucket of lines)."""

    def process(self, element: tuple[str, Iterable[str]]) -> None:
        key, paths = element
        self.count(self.steps.write_dead_letters(key, self.spill.load(paths)))


def build(pipeline: beam.Pipeline, splits: list[InputSplit], plan: RunPlan) -> None:
    """Wire the spine into ``pipeline``."""
    records = (
        pipeline
        | "ListInputSplits" >> beam.Create(splits, reshuffle=True)
        | "ReadRecords" >> beam.ParDo(ReadSplit(plan))
    )
    enriched = records | "ValidateHashPrice" >> beam.ParDo(Enrich(plan)).with_outputs(
        DEAD_LETTER, main="events"
    )
    deduped = (
        enriched.events
        | "GroupByEventIdShard" >> beam.GroupByKey()
        | "CollapseDuplicates"
        >> beam.ParDo(CollapseDuplicates(plan)).with_outputs(DEAD_LETTER, main="events")
    )
    limited = (
        deduped.events
        | "GroupByUserShard" >> beam.GroupByKey()
        | "ApplyRateLimits" >> beam.ParDo(ApplyRateLimits(plan)).with_outputs(VIOLATIONS, main="events")
    )
    written = limited.events | "WriteAuditAndEvents" >> beam.ParDo(WriteEvents(plan)).with_outputs(
        DEAD_LETTER, main="done"
    )
    _ = limited[VIOLATIONS] | "WriteRateLimitViolations" >> beam.ParDo(WriteViolations(plan))
    _ = (
        (enriched[DEAD_LETTER], deduped[DEAD_LETTER], written[DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
        | "GroupDeadLettersByBucket" >> beam.GroupByKey()
        | "WriteDeadLetters" >> beam.ParDo(WriteDeadLetters(plan))
    )


def run(splits: list[InputSplit], plan: RunPlan, beam_args: list[str]) -> Counts:
    """Run the spine to completion and return its counters."""
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, splits, plan)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: Counts = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
