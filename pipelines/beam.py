"""The spine on Apache Beam: DirectRunner by default; Flink, Spark or Dataflow by pipeline options.

Read the chain in ``build`` top to bottom to follow one event from its input file to the sinks.
Every step calls a stage of :mod:`pipelines.stages`; elements are batches, never single events:
a shuffle moves ``(key, path)`` of an Arrow batch spilled by ``connectors.spill``, so memory stays
flat however large the input. The second shuffle is keyed by (user shard, pane) in event-time
windows of the pane's size, its elements stamped with the pane's start.
"""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.transforms.environments import SubprocessSDKEnvironment
from apache_beam.transforms.window import FixedWindows, GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from connectors.inputs import InputSplit
from connectors.spill import Spill, SpillRef
from pipelines import progress
from pipelines.beam_options import runner_key
from pipelines.semantic import EmbeddedPane
from pipelines.stages import Counts, PaneKey, RunPlan, StageOutput, pane_label
from pipelines.worker import SpineWorker
from transforms.event_batch import RAW, InputRecords

NAMESPACE = "aiep"
DEAD_LETTER = "dead_letter"
VIOLATIONS = "rate_limit_violations"
EMBEDDINGS = "embeddings"
MODERATION = "moderation"
SPLITS_READ = "input_splits_read"


class _StageDoFn(beam.DoFn):  # type: ignore[misc]
    """Builds the worker's stages once (``setup``), reports their counts as Beam counters, and
    releases the worker's database engine when Beam tears the DoFn down."""

    def __init__(self, plan: RunPlan, staging_dir: str) -> None:
        self._plan = plan
        self._staging_dir = staging_dir

    def setup(self) -> None:
        self.spill = Spill(self._staging_dir)
        # Past dedup, events travel without their raw records (see ``CollapseDuplicates``).
        self.worker = SpineWorker(self._plan, raws=functools.partial(self.spill.values_at, RAW))

    def teardown(self) -> None:
        self.worker.close()

    def count(self, counts: Counts) -> None:
        for name, value in counts.items():
            if value:
                Metrics.counter(NAMESPACE, name).inc(value)

    def emit(self, output: StageOutput, step: str) -> Iterator[Any]:
        """Count a stage's output, spill its tables under their keys, and send its dead letters to
        the tagged output. Tables keyed by a pane carry the pane's start as their event time."""
        self.count(output.counts)
        refs = self.spill.put_many(step, [table for _, table in output.tables])
        for (key, _), ref in zip(output.tables, refs, strict=True):
            if isinstance(key, tuple):  # (user shard, pane start in µs)
                yield TimestampedValue((key, ref), Timestamp(micros=key[1]))
            else:
                yield key, ref
        letters = self.spill.put_many(DEAD_LETTER, [table for _, table in output.dead_letters])
        for (bucket, _), ref in zip(output.dead_letters, letters, strict=True):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, (bucket, ref))


class ReadInputSplit(_StageDoFn):
    """Input split → batches of raw records; the bytes read counted for the progress bar."""

    def setup(self) -> None:
        super().setup()
        self.read_counter = progress.counter(progress.folder_of(self._staging_dir))

    def teardown(self) -> None:
        progress.release(progress.folder_of(self._staging_dir))
        super().teardown()

    def process(self, split: InputSplit) -> Iterator[InputRecords]:
        for records in self.worker.read(split):
            self.read_counter.advance(records.bytes_read)
            yield records
        # Counted so that the launcher knows every split's counts came back (see ``run``).
        Metrics.counter(NAMESPACE, SPLITS_READ).inc()


class ValidateHashPrice(_StageDoFn):
    """Raw records → (event_id shard, spilled valid events); dead letters to a tagged output."""

    def process(self, records: InputRecords) -> Iterator[Any]:
        yield from self.emit(self.worker.validate(records), "by_event_id")


class CollapseDuplicates(_StageDoFn):
    """All copies of a shard's event_ids → one per event_id, compared with the audit trail →
    ((user shard, pane), spilled events), each stamped with its pane's start.

    The raw records (58 % of an event's bytes in flight) go no further: every later stage copies
    or spills each event, and only a conflict found at write time needs its raw record, read back
    then from the first shuffle's spill files (``Spill.values_at``), which last as long as the run.
    """

    def process(self, element: tuple[int, Iterable[SpillRef]]) -> Iterator[Any]:
        events, collapsed = self.worker.collapse(self.spill.load_placed(element[1]))
        yield from self.emit(collapsed, "by_event_id")
        yield from self.emit(self.worker.compare(events), "by_user_pane")


class ApplyRateLimits(_StageDoFn):
    """All events of a user shard's pane → (pane, events ready for the sinks); violations to a
    tagged output."""

    def process(self, element: tuple[PaneKey, Iterable[SpillRef]]) -> Iterator[Any]:
        key, paths = element
        worker = self.worker
        events, violations = worker.rate_limits(worker.tiers(pa.concat_tables(self.spill.load(paths))))
        yield key, worker.order(events)
        if violations.num_rows:
            yield beam.pvalue.TaggedOutput(VIOLATIONS, (pane_label(key), violations))


class EmbedTexts(_StageDoFn):
    """Panes' events → the same events with their prompt vectors; ``embeddings/`` rows to a tagged
    output. Texts of several panes are embedded together (see the stage); each output keeps the
    window of the pane it came from. The model loads once per worker process."""

    def start_bundle(self) -> None:
        self._windows: dict[PaneKey, Any] = {}

    def process(
        self, element: tuple[PaneKey, pa.Table], window: Any = beam.DoFn.WindowParam
    ) -> Iterator[Any]:
        self._windows[element[0]] = window
        yield from self._emit(*self.worker.embed_texts.add(*element))

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._emit(*self.worker.embed_texts.flush())
        self._windows.clear()

    def _emit(self, panes: list[EmbeddedPane], counts: Counts) -> Iterator[Any]:
        self.count(counts)
        for pane in panes:
            window = self._windows.pop(pane.key)
            # Moderation, next, reads the texts' vectors too.
            value = (pane.key, pane) if self._plan.config.moderation else (pane.key, pane.events)
            yield WindowedValue(value, window.start, (window,))
            if pane.rows.num_rows:
                rows = WindowedValue((pane_label(pane.key), pane.rows), window.start, (window,))
                yield beam.pvalue.TaggedOutput(EMBEDDINGS, rows)


class ModerateContent(_StageDoFn):
    """A pane's events and texts' vectors → the events with their decisions; each distinct
    content's ``moderation/`` row to a tagged output, keyed by content shard."""

    def process(self, element: tuple[PaneKey, EmbeddedPane]) -> Iterator[Any]:
        key, pane = element
        events, rows, counts = self.worker.moderate(pane.events, pane.texts, pane.vectors)
        self.count(counts)
        yield key, events
        refs = self.spill.put_many(MODERATION, [table for _, table in rows])
        for (shard, _), ref in zip(rows, refs, strict=True):
            yield beam.pvalue.TaggedOutput(MODERATION, (shard, ref))


class ProfileWindows(_StageDoFn):
    """A pane's events → its users' window features (all but drift), keyed by user shard."""

    def process(self, element: tuple[PaneKey, pa.Table]) -> Iterator[Any]:
        (shard, _), events = element
        rows = self.worker.profile(events)
        if rows.num_rows:
            yield from self.emit(StageOutput([(shard, rows)]), "user_features")


class WriteEvents(_StageDoFn):
    """Sinks: the audit trail, then events Parquet, gathered over several panes (see the stage);
    events another run stored meanwhile with another payload become dead letters, in the window
    of the pane they came from."""

    def start_bundle(self) -> None:
        self._windows: dict[str, Any] = {}

    def process(
        self, element: tuple[PaneKey, pa.Table], window: Any = beam.DoFn.WindowParam
    ) -> Iterator[Any]:
        label = pane_label(element[0])
        self._windows[label] = window
        for _, letters, counts in self.worker.write_events.add(label, element[1]):
            yield from self.emit(StageOutput(dead_letters=letters, counts=counts), DEAD_LETTER)

    def finish_bundle(self) -> Iterator[Any]:
        for key, letters, counts in self.worker.write_events.flush():
            window = self._windows[key]
            for output in self.emit(StageOutput(dead_letters=letters, counts=counts), DEAD_LETTER):
                # Outside process(), an output names its window itself: its pane's.
                yield beam.pvalue.TaggedOutput(
                    output.tag, WindowedValue(output.value, window.start, (window,))
                )
        self._windows.clear()


class WriteViolations(_StageDoFn):
    """Sink: rate_limit_violations Parquet."""

    def process(self, element: tuple[str, pa.Table]) -> None:
        self.count(self.worker.write_violations(*element))


class WriteEmbeddings(_StageDoFn):
    """Sink: embeddings Parquet, one file per pane."""

    def process(self, element: tuple[str, pa.Table]) -> None:
        self.count(self.worker.write_embeddings(*element))


class WriteUserFeatures(_StageDoFn):
    """Sink: user_features Parquet, one file per user shard, drift computed over all its windows."""

    def process(self, element: tuple[int, Iterable[SpillRef]]) -> None:
        shard, paths = element
        self.count(self.worker.write_user_features(f"{shard:04d}", self.spill.load(paths)))


class WriteModeration(_StageDoFn):
    """Sinks: moderation Parquet and ``moderation_decisions``, one file per content shard."""

    def process(self, element: tuple[int, Iterable[SpillRef]]) -> None:
        shard, paths = element
        self.count(self.worker.write_moderation(f"{shard:04d}", self.spill.load(paths)))


class WriteDeadLetters(_StageDoFn):
    """Sink: dead_letter Parquet, one file per (source, bucket of lines)."""

    def process(self, element: tuple[str, Iterable[SpillRef]]) -> None:
        key, paths = element
        self.count(self.worker.write_dead_letters(key, self.spill.load(paths)))


def build(pipeline: beam.Pipeline, splits: list[InputSplit], plan: RunPlan, staging_dir: str) -> None:
    """Wire the spine into ``pipeline``; batches between shuffles are spilled under ``staging_dir``."""

    def stage(step: type[_StageDoFn]) -> beam.ParDo:
        return beam.ParDo(step(plan, staging_dir))

    records = (
        pipeline
        | "ListInputSplits" >> beam.Create(splits, reshuffle=True)
        | "ReadRecords" >> stage(ReadInputSplit)
    )
    enriched = records | "ValidateHashPrice" >> stage(ValidateHashPrice).with_outputs(
        DEAD_LETTER, main="events"
    )
    deduped = (
        enriched.events
        | "GroupByEventIdShard" >> beam.GroupByKey()
        | "CollapseDuplicates" >> stage(CollapseDuplicates).with_outputs(DEAD_LETTER, main="events")
    )
    limited = (
        deduped.events
        # Event-time panes: a streaming runner's watermark closes a pane, and every rate-limit
        # window in it, once no earlier event can still arrive.
        | "IntoEventTimePanes" >> beam.WindowInto(FixedWindows(plan.panes.size_seconds))
        | "GroupByUserPane" >> beam.GroupByKey()
        | "ApplyRateLimits" >> stage(ApplyRateLimits).with_outputs(VIOLATIONS, main="events")
    )
    ready = limited.events
    config = plan.config
    if config.needs_vectors:
        embedded = ready | "EmbedTexts" >> stage(EmbedTexts).with_outputs(EMBEDDINGS, main="events")
        ready = embedded.events
        _ = embedded[EMBEDDINGS] | "WriteEmbeddings" >> stage(WriteEmbeddings)
    if config.moderation:
        moderated = ready | "ModerateContent" >> stage(ModerateContent).with_outputs(
            MODERATION, main="events"
        )
        ready = moderated.events
        _ = (
            moderated[MODERATION]
            | "OutOfPanesForContents" >> beam.WindowInto(GlobalWindows())
            | "GroupModerationByContentShard" >> beam.GroupByKey()
            | "WriteModerationAndDecisions" >> stage(WriteModeration)
        )
    if config.embeddings:
        _ = (
            ready
            | "ProfileUserWindows" >> stage(ProfileWindows)
            # Drift looks back to a user's previous window, maybe in an earlier pane.
            | "OutOfPanesForDrift" >> beam.WindowInto(GlobalWindows())
            | "GroupFeaturesByUserShard" >> beam.GroupByKey()
            | "WriteUserFeatures" >> stage(WriteUserFeatures)
        )
    written = ready | "WriteAuditAndEvents" >> stage(WriteEvents).with_outputs(DEAD_LETTER, main="done")
    _ = limited[VIOLATIONS] | "WriteRateLimitViolations" >> stage(WriteViolations)
    late_letters = written[DEAD_LETTER] | "OutOfPanes" >> beam.WindowInto(GlobalWindows())
    _ = (
        (enriched[DEAD_LETTER], deduped[DEAD_LETTER], late_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "GroupDeadLettersByBucket" >> beam.GroupByKey()
        | "WriteDeadLetters" >> stage(WriteDeadLetters)
    )


#: How the runner starts a worker process of ``--direct_running_mode=multi_processing``: Beam's
#: harness, which then exits without the interpreter's teardown (see ``pipelines.sdk_worker``).
#: The project's folder comes first on the workers' path, so that they import the code the launcher
#: runs, and ``pipelines.sdk_worker`` itself, wherever they start (a worker that failed before
#: connecting would leave the runner waiting for it).
_PROJECT = str(Path(__file__).resolve().parent.parent)
WORKER_COMMAND = (
    f"PYTHONPATH={shlex.quote(_PROJECT)}${{PYTHONPATH:+:$PYTHONPATH}} "
    f"{shlex.quote(sys.executable)} -m pipelines.sdk_worker"
)


class _LocalRunner(fn_runner.FnApiRunner):  # type: ignore[misc]
    """Beam's FnApiRunner, whose ``multi_processing`` workers run ``WORKER_COMMAND``.

    Its ``run_pipeline`` replaces the runner's environment with Beam's own worker command when the
    options ask for ``multi_processing``; for the length of the run this hands it the options with
    no running mode instead, so that the environment given here stands. Everything else about the
    mode (the worker count, splitting each stage's input among them) is the same.
    """

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions) -> Any:
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return super().run_pipeline(pipeline, options)
        self._default_environment = SubprocessSDKEnvironment.from_command_string(WORKER_COMMAND)
        direct.direct_running_mode = None
        try:
            return super().run_pipeline(pipeline, options)
        finally:
            direct.direct_running_mode = "multi_processing"


def _runner(options: PipelineOptions) -> Any:
    """The runner the options name; for the DirectRunner (the default), Beam's in-process
    FnApiRunner, which is what it runs our pipeline on anyway.

    Beam 2.77's DirectRunner first tries its Prism runner, downloading the binary from GitHub on
    every run: with no network a failed lookup and a fallback, with one a different engine than
    the one tested. Asking for the FnApiRunner ourselves keeps every local run offline and the
    same. It honours ``--direct_running_mode`` and ``--direct_num_workers``.
    """
    if runner_key(options.view_as(StandardOptions).runner) != "direct":
        return None  # Beam creates the runner the options name
    # As the DirectRunner builds it: workers (of --direct_running_mode=multi_processing) get the
    # pipeline options through the provision info.
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return _LocalRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def run(splits: list[InputSplit], plan: RunPlan, staging_dir: str, beam_args: list[str]) -> Counts:
    """Run the spine to completion and return its counters.

    The counters come back from wherever the workers ran (a job service gathers its workers'),
    and every count of the run summary is one of them; a runner that returns no counters for
    some input split would make a summary that lies, so that fails the run instead.
    """
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(runner=_runner(options), options=options)
    build(pipeline, splits, plan, staging_dir)
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: Counts = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    reported = totals.pop(SPLITS_READ, 0)
    if reported != len(splits):
        runner = options.view_as(StandardOptions).runner or "DirectRunner"
        raise RuntimeError(
            f"the {runner} returned the counters of {reported} of {len(splits)} "
            "input splits, so the run's counts would be wrong"
        )
    return totals
