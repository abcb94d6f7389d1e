"""Launch one batch run: lock the output, fingerprint the inputs, run an engine, write the summary.

The output is a local folder or an object-store URL (``s3://``, ``gs://``; ``connectors.storage``).
An object store can hold no lock file and no SQLite store: a run into one needs ``--audit-db``, and
takes its lock there (see :func:`output_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import filelock

from connectors import database
from connectors.config import PipelineConfig, load_config
from connectors.database_url import redact
from connectors.inputs import InputError, InputFile, LineIndex, discover_inputs, plan_splits
from connectors.parquet_sink import RunFileNames, remove_stale_parts, remove_temporary_files
from connectors.storage import Location, StorageError, describe, hide_secrets, is_object_store
from pipelines import progress
from pipelines.beam_options import (
    balanced_split_bytes,
    counts_bytes_read,
    reads_in_this_process,
    with_worker_processes,
)
from pipelines.stages import RunPlan
from pipelines.summary import InputSummary, RunSummary, SummaryError
from transforms.dead_letter import Reason

ENGINES = ("beam",)
log = logging.getLogger("aiep.run")


class RunError(Exception):
    """The run cannot do its job; the message is one line for the operator."""


@dataclass(frozen=True)
class RunRequest:
    """What the operator asked for."""

    inputs: list[str]
    #: A local folder, or an object-store URL (``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``).
    out_dir: Path | str
    engine: str = "beam"
    audit_url: str | None = None
    config_path: Path | None = None
    engine_args: tuple[str, ...] = ()
    #: Settings the command line gives, by field of ``PipelineConfig``; they win over the file.
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Where spill files and the stdin spool go: a folder every worker reaches (see ``staging_root``).
    staging_dir: Path | None = None


def object_store_needs_audit_db(out_url: str) -> str:
    """Why a run into an object store without ``--audit-db`` is refused, in one line."""
    return (
        f"--out {redact(out_url)} is an object store, where the embedded SQLite audit store cannot live: "
        "give the audit store with --audit-db URL"
    )


def staging_root(out: Location, staging_dir: Path | None = None) -> Path:
    """The folder this output's runs stage in, each in a folder of its own (``<root>/<run_id>``).

    By default ``DIR/_staging`` for a local output, and a local temporary folder for an object store
    (spill files are memory-mapped: they need a disk, not a store). With ``staging_dir`` (a folder
    every worker reaches, on a cluster a shared one), a folder in it named after the output, so that
    outputs sharing it never clear each other's. A run clears the whole root under the output's
    lock: what is left there is a killed run's.
    """
    if staging_dir is None and not out.is_object_store:
        return Path(out.url) / "_staging"
    base = staging_dir if staging_dir is not None else Path(tempfile.gettempdir()) / "aiep-staging"
    return base.resolve() / f"out-{hashlib.sha256(out.url.encode()).hexdigest()[:12]}"


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)  # a run holding the lock may have cleared it
    except OSError as exc:
        raise RunError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror}") from None


def lock_output(out_dir: Path) -> filelock.FileLock:
    """Take the output directory's run lock (``DIR/.aiep.lock``) or refuse, in one line."""
    lock = filelock.FileLock(str(out_dir / ".aiep.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise RunError(
            f"another run is writing to {str(out_dir)!r} (lock {out_dir / '.aiep.lock'})"
        ) from None
    return lock


@contextmanager
def output_lock(out: Location, audit_url: str) -> Iterator[None]:
    """Hold the output's run lock for the ``with`` block, or refuse in one line.

    A local folder's is its lock file (:func:`lock_output`). An object store has no lock that
    ``pyarrow.fs`` can take, so the lock of an object-store output lives in the audit store: a
    named ``GET_LOCK`` on MySQL/MariaDB (freed by the server when the run's connection ends), a
    lock file beside a SQLite store's file. Two runs into one object-store output exclude each
    other when they share the audit store (or, on MySQL, its server); runs with unrelated audit
    stores do not, nor does anything outside this pipeline writing into the prefix.
    """
    if not out.is_object_store:
        lock = lock_output(Path(out.url))
        try:
            yield
        finally:
            lock.release()
        return
    name = "output." + hashlib.sha256(out.url.encode()).hexdigest()[:32]
    with ExitStack() as held:
        try:
            engine = database.open_engine(audit_url)
            held.callback(engine.dispose)
            held.enter_context(database.named_lock(engine, name, timeout=0))
        except TimeoutError:
            raise RunError(
                f"another run is writing to {out.url} (lock {name!r} in {redact(audit_url)})"
            ) from None
        except Exception as exc:  # any driver error: the store is unusable for this run
            raise RunError(
                f"audit store {redact(audit_url)} is unusable: {database.describe_error(exc, audit_url)}"
            ) from exc
        yield


def inputs_fingerprint(files: list[InputFile]) -> str:
    """A short, stable id of the inputs: their contents and formats in order, never their paths.

    It names the run's output files and marks the audit rows the run stores, so a rerun of the
    same contents replaces its outputs however the paths are spelt (relative or absolute, ``./``,
    ``//``, through a symlink, a copy elsewhere, stdin) and whether they are gzipped or not. The
    order counts: it decides which of two differing copies of an event is kept.
    """
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.format}\t{file.content_hash}\n".encode())
    return digest.hexdigest()[:16]


#: Input bytes per shard beyond which a run uses more shards than configured, so that the
#: batch one worker holds in the dedup and rate-limit steps stays the same size however large
#: the input (memory flat as input grows). Counted as read: a gzip input by its inflated bytes.
#: 32 MiB: with a worker process per core (``with_worker_processes``), each holds a shard at
#: once; at 64 MiB two processes held 1.96 GB at 2M events (16 shards of 60 MB of input each).
SHARD_INPUT_BYTES = 32 << 20


def with_shards_for(config: PipelineConfig, input_bytes: int) -> PipelineConfig:
    """``config`` with at least one shard per ``SHARD_INPUT_BYTES`` of input.

    >>> with_shards_for(PipelineConfig(shards=16), 10 << 30).shards
    320
    >>> with_shards_for(PipelineConfig(shards=16), 1 << 20).shards
    16
    """
    return dataclasses.replace(config, shards=max(config.shards, -(-input_bytes // SHARD_INPUT_BYTES)))


def run_batch(
    request: RunRequest, on_progress: Callable[[int | None, int], None] | None = None
) -> RunSummary:
    """Run the spine over files; return the run summary (also written to ``_runs/<run_id>.json``).

    ``on_progress(bytes_read, bytes_total)`` is called from a helper thread while the run goes;
    both count bytes of the inputs' content as read (a gzip input's inflated bytes). ``bytes_read``
    is ``None`` when the workers are not the DirectRunner's (a job service, a cluster), whose
    progress the launcher does not count on seeing (``pipelines.progress``).
    """
    if request.engine not in ENGINES:
        raise RunError(f"unknown engine {request.engine!r}; available: {', '.join(ENGINES)}")
    try:
        out = Location.of(request.out_dir)
    except StorageError as exc:
        raise RunError(str(exc)) from None
    if out.is_object_store and not request.audit_url:
        raise RunError(object_store_needs_audit_db(out.url))
    config = dataclasses.replace(load_config(request.config_path), **request.overrides)
    if config.embedding_cache and "://" not in config.embedding_cache:
        # Workers may start elsewhere: a cache file is named absolutely.
        config = dataclasses.replace(config, embedding_cache=str(Path(config.embedding_cache).resolve()))
    if out.is_object_store and config.needs_vectors and not config.embedding_cache:
        raise RunError(
            f"--out {out.url} is an object store, where the default embedding cache file cannot live: "
            "give it with --cache PATH|redis://HOST:PORT/DB, or run with --no-embeddings --no-moderation"
        )
    if not out.is_object_store:
        _prepare_out_dir(Path(out.url))
    audit_url = request.audit_url or database.default_url(Path(out.url))
    with output_lock(out, audit_url):
        return _run_locked(request, config, out, audit_url, on_progress)


def _run_locked(request, config, out: Location, audit_url: str, on_progress) -> RunSummary:  # type: ignore[no-untyped-def]
    # Importing the engine (in a thread) and planning make objects by the hundred thousand, and
    # the collector scanned them over and over: a quarter of the launcher's CPU before the workers
    # start (measured with perf). It is paused until the engine is imported; what exists by then
    # is frozen (never scanned) for the length of the run, and thawed after it.
    # A caller's own settings stand: a collector it paused stays paused, objects it froze frozen.
    enabled, frozen_before = gc.isenabled(), gc.get_freeze_count()

    def resume() -> None:
        if not frozen_before:
            gc.freeze()
        if enabled:
            gc.enable()

    gc.disable()
    try:
        return _run_started(request, config, out, audit_url, on_progress, resume)
    finally:
        if not frozen_before:
            gc.unfreeze()
        if enabled:
            gc.enable()


def _run_started(request, config, out: Location, audit_url: str, on_progress, resume_collector) -> RunSummary:  # type: ignore[no-untyped-def]
    started = datetime.now(UTC)
    engine_import = _import_engine()
    started_clock, engine_not_before = _start_clock(out)
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    # Holding the lock, any staging folder or temporary file left here is a killed run's.
    root = staging_root(out, request.staging_dir)
    if not out.is_object_store:
        shutil.rmtree(Path(out.url) / "_staging", ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    with _store_errors(out):
        remove_temporary_files(out.url)
        out.remove_hidden("_runs/.*.tmp")
        out.remove_hidden(".write-probe-*")
    staging = root / run_id
    try:
        line_index: LineIndex = {}
        files = discover_inputs(request.inputs, staging / "stdin.jsonl", line_index)
        fingerprint = inputs_fingerprint(files)
        try:
            engine = database.open_engine(audit_url)
            schema_version = database.upgrade(engine).after
            stored_before = database.has_audit_rows(engine)
            engine.dispose()
        except Exception as exc:  # any driver error: the store is unusable for this run
            raise RunError(
                f"audit store {redact(audit_url)} is unusable: {database.describe_error(exc, audit_url)}"
            ) from exc
        if config.needs_vectors:
            _check_models(config, Path(out.url))
        # Inflated sizes, as the readers go through them: a worker's batches grow with the
        # content, not with how well it compressed; the progress bar counts in the same unit.
        content_bytes = sum(f.content_size for f in files)
        config = with_shards_for(config, content_bytes)
        naming = RunFileNames(fingerprint)
        plan = RunPlan(
            run_id=run_id,
            out_dir=out.url,
            audit_url=audit_url,
            config=config,
            outputs_id=fingerprint,
            naming=naming,
            image_dirs=tuple(f.base_dir for f in files),
            compare_with_store=stored_before,
        )
        splits = plan_splits(
            files, balanced_split_bytes(content_bytes, config.split_mb << 20, os.cpu_count()), line_index
        )
        time.sleep(max(0.0, engine_not_before - time.monotonic()))
        engine_import.join()
        resume_collector()
        counts, engine_args = _run_engine(
            request, splits, plan, str(staging / "spill"), content_bytes, on_progress
        )
        with _store_errors(out):
            remove_stale_parts(out.url, naming, started_clock)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if root.exists() and not any(root.iterdir()):
            root.rmdir()

    summary = _summary(
        run_id,
        request,
        engine_args,
        started,
        files,
        fingerprint,
        audit_url,
        schema_version,
        config,
        counts,
        out,
    )
    with _store_errors(out):
        _write_summary(out, run_id, summary)
    return summary


@contextmanager
def _store_errors(out: Location) -> Iterator[None]:
    """An object store's refusal (credentials, permissions, a lost connection) as one line naming
    the output; a local disk's errors as they are."""
    try:
        yield
    except OSError as exc:
        if not out.is_object_store:
            raise
        raise RunError(f"output {out.url} is not usable: {describe(exc)}") from None


def _beam_import_noise(record: logging.LogRecord) -> bool:
    """False for the warning Beam logs through the root logger on import without its optional GCP
    extras ("apitools not found"), about nothing a run uses."""
    return not (record.name == "root" and str(record.msg).startswith("apitools not found"))


def _import_engine() -> threading.Thread:
    """Start importing the engine (``pipelines.beam``; Beam takes most of a second to import) in
    a thread, while this one finds, fingerprints and plans the inputs; join it before using it.
    A failed import raises again where ``_run_engine`` imports the module."""
    logging.getLogger().addFilter(_beam_import_noise)  # once: a filter is added only once

    def load() -> None:
        with contextlib.suppress(Exception):  # raised again, in one place, by the import there
            importlib.import_module("pipelines.beam")

    thread = threading.Thread(target=load, name="import-engine", daemon=True)
    thread.start()
    return thread


def _start_clock(out: Location) -> tuple[float, float]:
    """``(older_than, not_before)``: a file of this output stamped before ``older_than`` (epoch
    seconds, by the clock that stamps its files) is from an earlier run; and the monotonic time
    before which this run must write none.

    A local disk stamps files by this machine's clock, finely. An object store stamps them by its
    own, in whole seconds: a probe's stamp ``p``, taken while holding the output's lock, is at least
    that of every file an earlier run wrote; a file written a second after the probe or later is
    stamped ``p + 1`` or more, rounded either way. The probe also proves the store writable.
    """
    if not out.is_object_store:
        return time.time(), 0.0
    try:
        probe = out.store_time()
    except OSError as exc:
        raise RunError(f"output {out.url} is not writable: {describe(exc)}") from None
    return probe + 1, time.monotonic() + 1


def _check_models(config: PipelineConfig, out_dir: Path) -> None:
    """Fail the run now, in one line, when its models cannot run where asked, its embedding cache
    cannot be opened or the moderation model's files are missing or damaged; not later in a worker."""
    from connectors.embedding_cache import EmbeddingCacheError
    from models.embedder import TextEmbedder
    from models.handler import ModelError
    from pipelines.semantic import open_cache

    embedder = TextEmbedder(device=config.device)
    try:
        embedder.device  # noqa: B018  (resolving it checks that the device exists)
        open_cache(config, out_dir, embedder).close()
        if config.moderation:
            from models.moderation_text import TextModerator

            TextModerator.load()  # the committed weights are there and whole
    except (ModelError, EmbeddingCacheError) as exc:
        raise RunError(str(exc)) from None


def _run_engine(
    request, splits, plan, staging_dir: str, total_bytes: int, on_progress
) -> tuple[dict[str, int], list[str]]:  # type: ignore[no-untyped-def]
    """Run Beam; its counters, and the options it ran with (``with_worker_processes``)."""
    from pipelines import beam  # see _import_engine

    done = threading.Event()
    local = reads_in_this_process(request.engine_args)
    if not local or request.staging_dir is not None or is_object_store(plan.out_dir):
        # The one line that says where staging is, wherever it is not a local DIR/_staging that
        # this process and the processes it starts share.
        workers = "workers run outside this process: they" if not local else "this run's workers"
        log.warning("%s spill batches under %s, which each must reach", workers, staging_dir)
    # A model stage already uses every core (torch's threads), and would load once per process.
    models = plan.config.needs_vectors
    engine_args = with_worker_processes(request.engine_args, 0 if models else len(splits), os.cpu_count())
    counted = counts_bytes_read(engine_args)
    progress_files = progress.folder_of(staging_dir)

    def report() -> None:
        while not done.wait(0.2):
            on_progress(progress.bytes_read(progress_files) if counted else None, total_bytes)

    reporter = threading.Thread(target=report, daemon=True) if on_progress else None
    if reporter:
        reporter.start()
    try:
        return beam.run(splits, plan, staging_dir, engine_args), engine_args
    except Exception as exc:  # the engine wraps a step's error in its own; report the root cause
        root = database.root_cause(exc)
        if isinstance(root, InputError):  # an input unusable as a whole, found as it was read
            raise RunError(str(root)) from exc
        raise RunError(
            f"pipeline failed: {hide_secrets(database.describe_error(root, plan.audit_url))}"
        ) from exc
    finally:
        done.set()
        progress.close(progress_files)  # in case the engine skipped a DoFn's teardown
        if reporter:
            reporter.join()
            # The last call: every byte the sources counted (all of them, when the run succeeded).
            on_progress(progress.bytes_read(progress_files) if counted else None, total_bytes)


def _summary(
    run_id, request, engine_args, started, files, fingerprint, audit_url, schema_version, config, counts, out
) -> RunSummary:  # type: ignore[no-untyped-def]
    finished = datetime.now(UTC)
    read = counts.get("events_read", 0)
    seconds = (finished - started).total_seconds()
    try:
        return RunSummary(
            run_id=run_id,
            engine=request.engine,
            engine_args=tuple(engine_args),
            started_at=_to_millisecond(started),
            finished_at=_to_millisecond(finished),
            seconds=round(seconds, 3),
            events_read=read,
            events_processed=counts.get("events_processed", 0),
            events_dead_lettered=counts.get("events_dead_lettered", 0),
            duplicates_collapsed=counts.get("duplicates_collapsed", 0),
            rate_limited=counts.get("rate_limited", 0),
            late_events=0,  # a bounded file run's watermark ends with its input: nothing is late
            unpriced_events=counts.get("unpriced_events", 0),
            cost_total=Decimal(counts.get("cost_total_micros", 0)).scaleb(-6),
            rate_limit_violations=counts.get("rate_limit_violations", 0),
            audit_rows_inserted=counts.get("audit_rows_inserted", 0),
            embedding_cache_hits=counts.get("embedding_cache_hits", 0),
            embedding_cache_misses=counts.get("embedding_cache_misses", 0),
            embeddings_written=counts.get("embeddings_written", 0),
            user_features_written=counts.get("user_features_written", 0),
            decisions_approved=counts.get("decisions_approved", 0),
            decisions_flagged=counts.get("decisions_flagged", 0),
            decisions_rejected=counts.get("decisions_rejected", 0),
            moderation_rows_written=counts.get("moderation_rows_written", 0),
            decision_rows_changed=counts.get("decision_rows_changed", 0),
            blank_lines=counts.get("blank_lines", 0),
            dead_letters_by_reason=dict(
                sorted(
                    (Reason(k.split(".", 1)[1]), v) for k, v in counts.items() if k.startswith("dead_letter.")
                )
            ),
            events_per_second=round(read / seconds) if seconds > 0 else None,
            inputs=tuple(
                InputSummary(f.name, f.format, f.gzip, f.size, f.sha256, f.content_hash) for f in files
            ),
            inputs_fingerprint=fingerprint,
            out_dir=out.url,
            audit_db=redact(audit_url),
            audit_schema_version=schema_version,
            config=config.summary_block(),
        )
    except SummaryError as exc:  # the counts break an invariant: a bug, never a summary
        raise RunError(str(exc)) from None


def _to_millisecond(moment: datetime) -> datetime:
    """``moment`` cut to what the summary file keeps, so a loaded summary equals the one written."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _write_summary(out: Location, run_id: str, summary: RunSummary) -> str:
    text = summary.to_json().encode("utf-8")
    return out.write_atomically(f"_runs/{run_id}.json", lambda stream: stream.write(text))
