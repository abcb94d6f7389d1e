"""Run the stream job on Bytewax: this process's part of it (all of it, without a cluster) until
the input ends or SIGTERM drains it; the home process writes the summary of this execution.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from connectors import database
from connectors.config import PipelineConfig
from connectors.database_url import redact
from connectors.file_tail import FileTail, StdinLines
from connectors.inputs import STDIN_NAME, plan_splits
from connectors.parquet_sink import StreamFileNames
from connectors.redis_stream import EntryAcknowledger, StreamAddress, StreamError, StreamReader
from pipelines.batch_run import RunError
from pipelines.stages import RunPlan, build_enrich_settings
from pipelines.stream_job import (
    PreparedStream,
    StreamRequest,
    cluster_size,
    open_stream_output,
    prepare_stream,
    stream_config,
)

log = logging.getLogger("aiep.stream")

#: Counts a stream's summary reports, in this order.
SUMMARY_COUNTS = (
    "events_read",
    "events_processed",
    "events_dead_lettered",
    "duplicates_collapsed",
    "late_events",
    "events_in_windows_change",
    "rate_limited",
    "rate_limit_violations",
    "audit_rows_inserted",
    "user_features_written",
    "embeddings_written",
    "decisions_approved",
    "decisions_flagged",
    "decisions_rejected",
    "entries_acknowledged",
)


#: Where every event read ends up, in one execution: events_read is their sum. An event still in
#: an open window when the job stops waits in the recovery store, and is written by a later one.
ACCOUNTED = ("events_processed", "events_dead_lettered", "duplicates_collapsed", "events_in_windows_change")


def run_stream(request: StreamRequest, status: TextIO | None = sys.stderr) -> dict[str, Any] | None:
    """Run the stream job until its input ends or SIGTERM; return this execution's summary.

    With a ``process_id``, as that process of a cluster across machines: process 0 prepares the
    output and returns the summary; the others return ``None``. (A cluster of local processes is
    :func:`pipelines.stream_cluster.run_local_cluster`.)
    """
    config = stream_config(request)
    out_dir = request.out_dir.resolve()
    home = not request.process_id  # process 0 prepares the output, holds its lock, writes the summary
    lock = open_stream_output(request, out_dir, lock=home)
    try:
        return run_process(request, prepare_stream(request, config, out_dir, coordinate=home), status)
    finally:
        if lock is not None:
            lock.release()


def run_process(
    request: StreamRequest, prepared: PreparedStream, status: TextIO | None = sys.stderr
) -> dict[str, Any] | None:
    """Run this process's part of the stream job; the home process (0, or the only one) returns
    the execution's summary, having written it, and the others ``None``."""
    from pipelines import bytewax_flow

    home = not request.process_id
    config, out_dir, identity = prepared.config, prepared.out_dir, prepared.identity
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        rules = build_enrich_settings(config).rules
        tail = FileTail(list(request.inputs), rules.max_record_bytes) if request.follow else None
        live_stdin = not request.source and list(request.inputs) == ["-"]
        plan = RunPlan(
            run_id=prepared.run_id,
            out_dir=str(out_dir),
            audit_url=prepared.audit_url,
            config=config,
            outputs_id=identity,
            naming=StreamFileNames(identity),
            image_dirs=(
                tail.base_dirs
                if tail
                else tuple(f.base_dir for f in prepared.files)
                or (str((request.image_root or Path.cwd()).resolve()),)
            ),
            compare_with_store=True,
            stream=True,
            entry_positions=bool(request.source),
        )
        acknowledger: Callable[[], EntryAcknowledger] | None = None
        closers: list[Callable[[], None]] = []
        lag: Callable[[], int | None] = lambda: None  # noqa: E731
        if request.source:
            address = StreamAddress.parse(request.source)
            source: Any = bytewax_flow.RedisSource(
                address,
                consumer=f"aiep-{identity}",
                rules=rules,
                stop=stop,
                bounded=request.until_end,
                min_idle_ms=config.claim_min_idle_seconds * 1000,
                count=config.batch_size,
                home=home,
            )
            acknowledger = lambda: EntryAcknowledger(address)  # noqa: E731
            if home:
                probe = StreamReader(address, f"aiep-{identity}")
                closers.append(probe.close)
                lag = lambda: _quiet(probe.lag)  # noqa: E731
        elif tail is not None:
            source = bytewax_flow.FollowSource(tail, stop, home=home)
        elif live_stdin:
            lines = StdinLines(sys.stdin.buffer, rules.max_record_bytes, STDIN_NAME, config.batch_size)
            source = bytewax_flow.StdinSource(lines, stop)
        else:
            # Only the home process reads: the others need no splits (planning reads the inputs).
            splits = plan_splits(list(prepared.files), config.split_mb << 20) if home else []
            source = bytewax_flow.FilesSource(splits, config.batch_size, rules, stop, home=home)
        tally = bytewax_flow.Tally()
        workers = bytewax_flow.Workers(plan)
        metrics = server = None
        if request.metrics_port is not None and home:  # every count reaches the home process
            from pipelines.stream_metrics import StreamMetrics

            metrics = StreamMetrics(lag)
            try:
                server = metrics.serve(request.metrics_port)
            except OSError as exc:
                raise RunError(f"metrics port 127.0.0.1:{request.metrics_port}: {exc.strerror}") from None
        results = bytewax_flow.ResultsSink(tally, acknowledger, metrics, home=home)
        flow = bytewax_flow.build(plan, source, workers, results)
        started = datetime.now(UTC)
        reporter = _StatusLine(tally, lag, config.status_seconds, status if home else None)
        reporter.start()
        try:
            _execute(flow, request, config, prepared.recovery)
        except ProcessLost:
            raise
        except Exception as exc:
            root = database.root_cause(exc)
            raise RunError(f"stream failed: {database.describe_error(root, prepared.audit_url)}") from exc
        finally:
            reporter.stop()
            workers.close()
            if server is not None:
                server.shutdown()
                server.server_close()
            for close in closers:
                close()
        if not home:
            return None
        finished = datetime.now(UTC)
        summary = _summary(plan, request, prepared, tally.snapshot(), started, finished, stop.is_set())
        runs = out_dir / "_runs"
        runs.mkdir(exist_ok=True)
        (runs / f"{plan.run_id}.stream.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
        accounted = sum(summary[name] for name in ACCOUNTED)
        if summary["events_read"] != accounted:
            raise RunError(
                f"invariant broken: events_read {summary['events_read']} != processed + dead-lettered"
                f" + duplicates collapsed + change of events in open windows ({accounted})"
            )
        return summary
    finally:
        signal.signal(signal.SIGTERM, previous)


class ProcessLost(RunError):
    """A process of the cluster stopped, so this one could not go on (Bytewax fails as a whole)."""


def _execute(flow: Any, request: StreamRequest, config: PipelineConfig, recovery: Path | None) -> None:
    """Run the dataflow on this process's workers, joined to the cluster when there is one."""
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig

    cluster = {}
    if request.process_id is not None:
        cluster = {"process_id": request.process_id, "addresses": list(request.addresses)}
    try:
        with _network_chatter_on_stderr() if cluster else contextlib.nullcontext():
            cli_main(
                flow,
                workers_per_process=request.workers,
                epoch_interval=timedelta(seconds=config.snapshot_seconds),
                recovery_config=RecoveryConfig(recovery) if recovery else None,
                **cluster,
            )
    except BaseException as exc:
        # Bytewax's Rust core panics (pyo3's PanicException, not an Exception) when a peer process
        # goes away: the cluster cannot go on without it.
        if type(exc).__name__ != "PanicException":
            raise
        detail = " ".join(str(exc).split())[:200]
        if request.process_id is None:
            raise RunError(f"stream failed: Bytewax panicked: {detail}") from None
        raise ProcessLost(
            f"stream failed: process {request.process_id} lost touch with the cluster ({detail})"
        ) from None


@contextlib.contextmanager
def _network_chatter_on_stderr() -> Iterator[None]:
    """Send what is written on file descriptor 1 to 2 meanwhile: Bytewax's network layer prints
    its connection retries there ("error connecting to worker 0 ... retrying", while a peer
    starts), and stdout is for the summary alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _quiet(call: Callable[[], int | None]) -> int | None:
    try:
        return call()
    except StreamError:
        return None


def _summary(
    plan: RunPlan,
    request: StreamRequest,
    prepared: PreparedStream,
    counts: dict[str, int],
    started: datetime,
    finished: datetime,
    drained: bool,
) -> dict[str, Any]:
    """This execution's summary: what it did between its start and its end (a restored job's
    earlier executions have their own)."""
    dead = {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dead_letter.")}
    return {
        "run_id": plan.run_id,
        "engine": "bytewax",
        "stream_id": plan.outputs_id,
        "source": redact(request.source) if request.source else list(request.inputs),
        "processes": cluster_size(request),
        "workers": request.workers,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 3),
        "ended_by": "sigterm" if drained else "end of input",
        **{name: int(counts.get(name, 0)) for name in SUMMARY_COUNTS},
        "cost_total": str(Decimal(counts.get("cost_total_micros", 0)).scaleb(-6)),  # exact, as a batch run
        "dead_letters_by_reason": dead,
        "out_dir": plan.out_dir,
        "audit_db": redact(plan.audit_url),
        "audit_schema_version": prepared.schema_version,
        "recovery_dir": str(prepared.recovery) if prepared.recovery else None,
        "config": plan.config.summary_block(),
    }


class _StatusLine:
    """A one-line status on stderr every ``seconds``: what a stream has done so far."""

    def __init__(
        self, tally: Any, lag: Callable[[], int | None], seconds: float, stream: TextIO | None
    ) -> None:
        self.tally = tally
        self.lag = lag
        self.seconds = seconds
        self.stream = stream
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="aiep-status")
        self._began = time.monotonic()

    def start(self) -> None:
        if self.stream is not None:
            self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.seconds):
            self.print()

    def print(self) -> None:
        if self.stream is None:
            return
        c = self.tally.snapshot()
        lag = self.lag()
        elapsed = time.monotonic() - self._began
        parts = [f"stream {elapsed:7.0f}s:"] + [
            f"{label} {c.get(name, 0):,}"
            for label, name in (
                ("read", "events_read"),
                ("processed", "events_processed"),
                ("dead-lettered", "events_dead_lettered"),
                ("duplicates", "duplicates_collapsed"),
                ("late", "late_events"),
                ("in windows (change)", "events_in_windows_change"),
            )
        ]
        if lag is not None:
            parts.append(f"lag {lag:,}")
        print(" ".join(parts), file=self.stream, flush=True)

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
