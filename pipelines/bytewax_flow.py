"""The spine on Bytewax: the long-running job that producers feed (DESIGN.md, "Engines").

Wiring only, like ``pipelines/beam.py``. Read ``build`` top to bottom to follow a batch:

    read ─ validate_hash_price ─ gate_watermark_dedup ─┬─ windows_models_sinks ─┐
                                                       └────────────────────────┴─ commit

- ``read``: a source of batches of raw records (:class:`RedisSource`, :class:`FilesSource`); its
  snapshot is its position, so a restored job reads again what came after it.
- ``validate_hash_price``: the first stage, on the worker that read the batch.
- ``gate_watermark_dedup``: :class:`pipelines.stream.StreamGate`, one key for the whole stream.
- ``windows_models_sinks``: :class:`pipelines.stream.ShardWindows`, keyed by user shard, so a
  shard's state lives on one worker however many there are.
- ``commit``: counts for the summary and metrics; committed positions acknowledged (Redis).

Every batch is an Arrow table; stateful steps snapshot their state (pickled bytes) every epoch to
Bytewax's recovery store.

In a cluster of several processes (``pipelines.stream_cluster``) the source and the results have
one partition each, and only the *home* process (process 0) lists them: it reads the input in
order, as one worker does, and every count of the cluster reaches its :class:`Tally`, so the
summary it writes is the whole job's. The shard step spreads over every worker of every process.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import pyarrow as pa
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.file_tail import FileTail, StdinLines
from connectors.input_batches import too_long
from connectors.inputs import InputSplit
from connectors.readers import read_split
from connectors.redis_stream import EntryAcknowledger, StreamAddress, StreamReader, pack_entry_id
from pipelines.stages import RunPlan
from pipelines.stream import (
    GATE,
    Committed,
    Counted,
    Output,
    ShardInput,
    ShardWindows,
    StreamGate,
    ValidatedBatch,
)
from pipelines.stream_metrics import StreamMetrics
from pipelines.worker import SpineWorker
from transforms.dead_letter import RAW_KEEP_BYTES
from transforms.event_batch import InputRecords
from transforms.validate import EventRules


@dataclass(frozen=True)
class SourceBatch:
    """A batch of raw records from a source, or (``records`` None) the mark that its input ended."""

    records: InputRecords | None
    end_of_input: bool = False


class Workers:
    """One :class:`SpineWorker` per Bytewax worker thread (its stages, sinks and database engine);
    the models behind them load once per process."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self._local = threading.local()
        self._all: list[SpineWorker] = []
        self._lock = threading.Lock()

    def get(self) -> SpineWorker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = SpineWorker(self.plan)
            with self._lock:
                self._all.append(worker)
        return worker

    def close(self) -> None:
        with self._lock:
            for worker in self._all:
                worker.close()
            self._all.clear()


@dataclass
class Tally:
    """What the job has done so far, summed across workers: counts, and when it last moved."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, counts: dict[str, int]) -> None:
        with self.lock:
            self.counts.update(counts)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


# --- sources -------------------------------------------------------------------------------------


class _RedisPartition(StatefulSourcePartition[SourceBatch, str | None]):
    def __init__(
        self,
        reader: StreamReader,
        position: str | None,
        *,
        label: str,
        rules: EventRules,
        bounded: bool,
        stop: threading.Event,
    ) -> None:
        self.reader = reader
        self.position = position
        self.label = label
        self.rules = rules
        self.stop = stop
        self._ended = False
        reader.start(position, bounded=bounded)

    def next_batch(self) -> list[SourceBatch]:
        if self._ended or self.stop.is_set():
            raise StopIteration
        entries = self.reader.read()
        if entries is None:
            self._ended = True
            return [SourceBatch(None, end_of_input=True)]
        if not entries:
            return []
        self.position = entries[-1][0]
        return [SourceBatch(entry_records(entries, self.label, self.rules))]

    def snapshot(self) -> str | None:
        return self.position

    def close(self) -> None:
        self.reader.close()


def entry_records(entries: list[tuple[str, bytes | None]], label: str, rules: EventRules) -> InputRecords:
    """Stream entries as a batch of raw records; ``line_no`` is the packed entry id."""
    raws: list[bytes] = []
    rejected = {}
    for i, (_, raw) in enumerate(entries):
        raw = raw or b""
        if len(raw) > rules.max_record_bytes:
            rejected[i] = too_long(len(raw), rules.max_record_bytes)
            raw = raw[: RAW_KEEP_BYTES + 1]
        raws.append(raw)
    return InputRecords(
        source=label,
        source_order=0,
        line_nos=[pack_entry_id(entry_id) for entry_id, _ in entries],
        raws=raws,
        rejected=rejected,
        bytes_read=sum(len(raw or b"") for _, raw in entries),
    )


class RedisSource(FixedPartitionedSource[SourceBatch, str | None]):
    """A Redis stream read through its consumer group: one partition, in entry-id order.

    Its snapshot is the last entry id it handed on; restored, it reads again what the group had
    delivered after it (see :class:`~connectors.redis_stream.StreamReader`). ``bounded`` stops it
    at the last entry present at start, as the end of its input (every window then closes).
    ``home``: whether this process reads it (only process 0 of a cluster does).
    """

    def __init__(
        self,
        address: StreamAddress,
        consumer: str,
        rules: EventRules,
        stop: threading.Event,
        *,
        bounded: bool = False,
        min_idle_ms: int = 30_000,
        count: int = 1_000,
        home: bool = True,
    ) -> None:
        self.address = address
        self.consumer = consumer
        self.rules = rules
        self.stop = stop
        self.bounded = bounded
        self.min_idle_ms = min_idle_ms
        self.count = count
        self.home = home
        self.readers: list[StreamReader] = []

    def list_parts(self) -> list[str]:
        return ["stream"] if self.home else []

    def build_part(self, step_id: str, for_part: str, resume_state: str | None) -> _RedisPartition:
        reader = StreamReader(self.address, self.consumer, count=self.count, min_idle_ms=self.min_idle_ms)
        self.readers.append(reader)
        label = f"{self.address.server.split('@')[-1].removeprefix('redis://')}/{self.address.stream}"
        return _RedisPartition(
            reader,
            resume_state,
            label=f"redis://{label}",
            rules=self.rules,
            bounded=self.bounded,
            stop=self.stop,
        )


class _FilesPartition(StatefulSourcePartition[SourceBatch, tuple[int, int]]):
    def __init__(
        self,
        splits: list[InputSplit],
        batch_lines: int,
        rules: EventRules,
        resume: tuple[int, int] | None,
        stop: threading.Event,
    ) -> None:
        self.stop = stop
        self.at = resume or (0, 0)  # (split, batches of it handed on)
        self._batches = self._read(splits, batch_lines, rules)

    def _read(self, splits: list[InputSplit], batch_lines: int, rules: EventRules) -> Iterator[SourceBatch]:
        first_split, skip = self.at
        for index in range(first_split, len(splits)):
            for n, records in enumerate(read_split(splits[index], batch_lines, rules)):
                if index == first_split and n < skip:
                    continue  # handed on before the snapshot this partition resumes from
                self.at = (index, n + 1)
                yield SourceBatch(records)
            self.at = (index + 1, 0)
        yield SourceBatch(None, end_of_input=True)

    def next_batch(self) -> list[SourceBatch]:
        if self.stop.is_set():
            raise StopIteration
        return [next(self._batches)]

    def snapshot(self) -> tuple[int, int]:
        return self.at


class FilesSource(FixedPartitionedSource[SourceBatch, tuple[int, int]]):
    """Input files read in order, as one partition (so the first copy of a duplicate is the one
    a batch run keeps); its snapshot is (split, batches handed on). Bounded: the end of the last
    file is the end of the input. ``home``: whether this process reads them."""

    def __init__(
        self,
        splits: list[InputSplit],
        batch_lines: int,
        rules: EventRules,
        stop: threading.Event,
        *,
        home: bool = True,
    ) -> None:
        self.splits = splits
        self.batch_lines = batch_lines
        self.rules = rules
        self.stop = stop
        self.home = home

    def list_parts(self) -> list[str]:
        return ["files"] if self.home else []

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilesPartition:
        return _FilesPartition(self.splits, self.batch_lines, self.rules, resume_state, self.stop)


#: A followed input's position: per file, what ``FileTail.position`` gives.
FollowPosition = dict[str, tuple[int, int, int, int, int]]


class _FollowPartition(StatefulSourcePartition[SourceBatch, FollowPosition]):
    def __init__(self, tail: FileTail, resume: FollowPosition | None, stop: threading.Event):
        self.tail = tail
        self.stop = stop
        self._idle = False
        if resume:
            tail.resume(resume)

    def next_batch(self) -> list[SourceBatch]:
        if self.stop.is_set():
            raise StopIteration
        batches = [SourceBatch(records) for records in self.tail.poll()]
        self._idle = not batches
        return batches

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + FOLLOW_POLL if self._idle else None

    def snapshot(self) -> FollowPosition:
        return self.tail.position


#: How long a followed input waits before looking again when nothing new was there.
FOLLOW_POLL = timedelta(milliseconds=200)


class FollowSource(FixedPartitionedSource[SourceBatch, FollowPosition]):
    """Files and folders followed as they grow (:class:`~connectors.file_tail.FileTail`), as one
    partition; its snapshot is each file's position. Unbounded: it runs until SIGTERM. ``home``:
    whether this process follows them."""

    def __init__(self, tail: FileTail, stop: threading.Event, *, home: bool = True) -> None:
        self.tail = tail
        self.stop = stop
        self.home = home

    def list_parts(self) -> list[str]:
        return ["follow"] if self.home else []

    def build_part(
        self, step_id: str, for_part: str, resume_state: FollowPosition | None
    ) -> _FollowPartition:
        return _FollowPartition(self.tail, resume_state, self.stop)


class _StdinPartition(StatefulSourcePartition[SourceBatch, int]):
    def __init__(self, lines: StdinLines, stop: threading.Event) -> None:
        self.lines = lines
        self.stop = stop
        self._ended = False

    def next_batch(self) -> list[SourceBatch]:
        if self._ended or self.stop.is_set():
            raise StopIteration
        records = self.lines.poll()
        batches = [SourceBatch(records)] if records is not None else []
        if self.lines.ended:
            self._ended = True
            batches.append(SourceBatch(None, end_of_input=True))
        return batches

    def snapshot(self) -> int:
        return self.lines.lines  # how far it read; stdin cannot be read again from there


class StdinSource(FixedPartitionedSource[SourceBatch, int]):
    """JSONL on stdin, line by line as it arrives (:class:`~connectors.file_tail.StdinLines`);
    its end is the end of the input."""

    def __init__(self, lines: StdinLines, stop: threading.Event) -> None:
        self.lines = lines
        self.stop = stop

    def list_parts(self) -> list[str]:
        return ["stdin"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _StdinPartition:
        return _StdinPartition(self.lines, self.stop)


# --- stateful steps --------------------------------------------------------------------------------


class _GateLogic(StatefulBatchLogic[ValidatedBatch, Output, bytes]):
    def __init__(self, workers: Workers, resume: bytes | None) -> None:
        self.gate = StreamGate(workers.get(), resume)

    def on_batch(self, values: list[ValidatedBatch]) -> tuple[list[Output], bool]:
        return self.gate(values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return self.gate.snapshot()


class _ShardLogic(StatefulBatchLogic[ShardInput, Output, bytes]):
    def __init__(self, workers: Workers, resume: bytes | None) -> None:
        self.workers = workers
        self.resume = resume
        self.windows: ShardWindows | None = None  # built on its first input, which names the shard

    def on_batch(self, values: list[ShardInput]) -> tuple[list[Output], bool]:
        if self.windows is None:
            self.windows = ShardWindows(self.workers.get(), values[0].shard, self.resume)
        return self.windows(values), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        if self.windows is None:
            return self.resume or b""
        return self.windows.snapshot()


# --- results ---------------------------------------------------------------------------------------


class _ResultsPartition(StatefulSinkPartition[Any, None]):
    def __init__(
        self,
        tally: Tally,
        acknowledger: Callable[[], EntryAcknowledger] | None,
        metrics: StreamMetrics | None,
    ) -> None:
        self.tally = tally
        self.metrics = metrics
        self.acknowledger = acknowledger() if acknowledger else None

    def write_batch(self, values: list[Any]) -> None:
        positions = []
        for item in values:
            if isinstance(item, Counted):
                self.tally.add(item.counts)
                if self.metrics is not None:
                    self.metrics.observe(item.counts, item.timings, item.batches)
            elif isinstance(item, Committed):
                positions.append(item.positions)
        if positions and self.acknowledger is not None:
            acked = self.acknowledger.ack(np.unique(np.concatenate(positions)).tolist())
            self.tally.add({"entries_acknowledged": acked})
            if self.metrics is not None:
                self.metrics.observe({"entries_acknowledged": acked}, {}, {})

    def snapshot(self) -> None:
        # Counts are this execution's (a restored job's summary starts from zero) and an
        # acknowledgement made twice changes nothing: there is no position to resume from.
        return None

    def close(self) -> None:
        # Not called on an abrupt shutdown; the client's socket dies with the process then.
        if self.acknowledger is not None:
            self.acknowledger.close()


#: The key every result goes under: one partition, so one worker of the home process has them all.
RESULTS = "results"


class ResultsSink(FixedPartitionedSink[Any, None]):
    """Counts into the job's :class:`Tally`; committed positions acknowledged (Redis).

    One partition, listed by the home process only (``home``), so the :class:`Tally` of that
    process holds every count of the cluster once the flow has ended: the summary is exact however
    many processes and workers ran the job.
    """

    def __init__(
        self,
        tally: Tally,
        acknowledger: Callable[[], EntryAcknowledger] | None,
        metrics: StreamMetrics | None = None,
        *,
        home: bool = True,
    ) -> None:
        self.tally = tally
        self.acknowledger = acknowledger
        self.metrics = metrics
        self.home = home

    def list_parts(self) -> list[str]:
        return [RESULTS] if self.home else []

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _ResultsPartition:
        return _ResultsPartition(self.tally, self.acknowledger, self.metrics)


# --- the flow --------------------------------------------------------------------------------------


def build(
    plan: RunPlan, source: FixedPartitionedSource[SourceBatch, Any], workers: Workers, results: ResultsSink
) -> Dataflow:
    """The stream job's dataflow."""

    def validate(batch: SourceBatch) -> ValidatedBatch:
        if batch.records is None:
            return ValidatedBatch(None, [], {}, np.zeros(0, dtype=np.int64), end_of_input=batch.end_of_input)
        output = workers.get().validate(batch.records)
        tables = [table for _, table in output.tables]
        events = None
        if tables:
            events = pa.concat_tables(tables)
        positions = np.asarray(batch.records.line_nos, dtype=np.int64)
        return ValidatedBatch(events, output.dead_letters, output.counts, positions, batch.end_of_input)

    def to_shard(item: Output) -> tuple[str, ShardInput] | None:
        return (f"{item[0]:04d}", item[1]) if isinstance(item, tuple) else None

    flow = Dataflow("aiep_stream")
    records = op.input("read", flow, source)
    validated = op.map("validate_hash_price", records, validate)
    gated = op.stateful_batch(
        "gate_watermark_dedup",
        op.key_on("to_gate", validated, lambda _: GATE),
        lambda resume: _GateLogic(workers, resume),
    )
    gate_out = op.key_rm("from_gate", gated)
    shards = op.stateful_batch(
        "windows_models_sinks",
        op.filter_map("to_user_shards", gate_out, to_shard),  # type: ignore[arg-type]
        lambda resume: _ShardLogic(workers, resume),
    )
    done = op.merge(
        "all_results",
        op.filter("gate_results", gate_out, lambda item: not isinstance(item, tuple)),
        op.key_rm("from_shards", shards),
    )
    op.output("commit", op.key_on("to_results", done, lambda _: RESULTS), results)
    return flow
