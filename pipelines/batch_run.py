"""Launch one batch run: lock the output, fingerprint the inputs, run an engine, write the summary."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import filelock

from connectors import database
from connectors.config import PipelineConfig, load_config
from connectors.database_url import redact
from connectors.inputs import InputError, InputFile, discover_inputs, plan_splits
from connectors.parquet_sink import RunFileNames, remove_stale_parts, remove_temporary_files
from pipelines import progress
from pipelines.beam_options import reads_in_this_process
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
    out_dir: Path
    engine: str = "beam"
    audit_url: str | None = None
    config_path: Path | None = None
    engine_args: tuple[str, ...] = ()
    #: Settings the command line gives, by field of ``PipelineConfig``; they win over the file.
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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
SHARD_INPUT_BYTES = 64 << 20


def with_shards_for(config: PipelineConfig, input_bytes: int) -> PipelineConfig:
    """``config`` with at least one shard per ``SHARD_INPUT_BYTES`` of input.

    >>> with_shards_for(PipelineConfig(shards=16), 10 << 30).shards
    160
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
    is ``None`` when the runner's workers read the inputs in other processes, which report nothing
    here (a job service, ``--direct_running_mode=multi_processing``): the run's progress is unknown.
    """
    if request.engine not in ENGINES:
        raise RunError(f"unknown engine {request.engine!r}; available: {', '.join(ENGINES)}")
    config = dataclasses.replace(load_config(request.config_path), **request.overrides)
    if config.embedding_cache and "://" not in config.embedding_cache:
        # Workers may start elsewhere: a cache file is named absolutely.
        config = dataclasses.replace(config, embedding_cache=str(Path(config.embedding_cache).resolve()))
    out_dir = request.out_dir.resolve()
    _prepare_out_dir(out_dir)
    lock = lock_output(out_dir)
    try:
        return _run_locked(request, config, out_dir, on_progress)
    finally:
        lock.release()


def _run_locked(request, config, out_dir: Path, on_progress) -> RunSummary:  # type: ignore[no-untyped-def]
    started = datetime.now(UTC)
    started_clock = time.time()  # as file modification times record it
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    # Holding the lock, any staging folder or temporary file left here is a killed run's.
    shutil.rmtree(out_dir / "_staging", ignore_errors=True)
    remove_temporary_files(out_dir)
    for leftover in [*out_dir.glob("_runs/.*.json.tmp"), *out_dir.glob(".write-probe-*")]:
        leftover.unlink()
    staging = out_dir / "_staging" / run_id
    audit_url = request.audit_url or database.default_url(out_dir)
    try:
        files = discover_inputs(request.inputs, staging / "stdin.jsonl")
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
            _check_models(config, out_dir)
        # Inflated sizes, as the readers go through them: a worker's batches grow with the
        # content, not with how well it compressed; the progress bar counts in the same unit.
        content_bytes = sum(f.content_size for f in files)
        config = with_shards_for(config, content_bytes)
        naming = RunFileNames(fingerprint)
        plan = RunPlan(
            run_id=run_id,
            out_dir=str(out_dir),
            audit_url=audit_url,
            config=config,
            outputs_id=fingerprint,
            naming=naming,
            image_dirs=tuple(f.base_dir for f in files),
            compare_with_store=stored_before,
        )
        splits = plan_splits(files, config.split_mb << 20)
        counts = _run_engine(request, splits, plan, str(staging / "spill"), content_bytes, on_progress)
        remove_stale_parts(out_dir, naming, started_clock)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if staging.parent.exists() and not any(staging.parent.iterdir()):
            staging.parent.rmdir()

    summary = _summary(
        run_id, request, started, files, fingerprint, audit_url, schema_version, config, counts
    )
    _write_summary(out_dir, run_id, summary)
    return summary


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


def _run_engine(request, splits, plan, staging_dir: str, total_bytes: int, on_progress) -> dict[str, int]:  # type: ignore[no-untyped-def]
    # Imported here: Beam takes a second to import. Without the optional GCP extras its import
    # logs "apitools not found" through the root logger, a warning about nothing this run uses.
    logging.disable(logging.WARNING)
    try:
        from pipelines import beam
    finally:
        logging.disable(logging.NOTSET)

    progress.reset()
    done = threading.Event()
    local = reads_in_this_process(request.engine_args)
    if not local:
        log.warning(
            "workers run outside this process: they spill batches under %s, which each must reach",
            staging_dir,
        )

    def report() -> None:
        while not done.wait(0.2):
            on_progress(progress.bytes_read() if local else None, total_bytes)

    reporter = threading.Thread(target=report, daemon=True) if on_progress else None
    if reporter:
        reporter.start()
    try:
        return beam.run(splits, plan, staging_dir, list(request.engine_args))
    except Exception as exc:  # the engine wraps a step's error in its own; report the root cause
        root = database.root_cause(exc)
        if isinstance(root, InputError):  # an input unusable as a whole, found as it was read
            raise RunError(str(root)) from exc
        raise RunError(f"pipeline failed: {database.describe_error(root, plan.audit_url)}") from exc
    finally:
        done.set()
        if reporter:
            reporter.join()
            on_progress(total_bytes if local else None, total_bytes)


def _summary(
    run_id, request, started, files, fingerprint, audit_url, schema_version, config, counts
) -> RunSummary:  # type: ignore[no-untyped-def]
    finished = datetime.now(UTC)
    read = counts.get("events_read", 0)
    seconds = (finished - started).total_seconds()
    try:
        return RunSummary(
            run_id=run_id,
            engine=request.engine,
            engine_args=tuple(request.engine_args),
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
            out_dir=str(request.out_dir.resolve()),
            audit_db=redact(audit_url),
            audit_schema_version=schema_version,
            config=config.summary_block(),
        )
    except SummaryError as exc:  # the counts break an invariant: a bug, never a summary
        raise RunError(str(exc)) from None


def _to_millisecond(moment: datetime) -> datetime:
    """``moment`` cut to what the summary file keeps, so a loaded summary equals the one written."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _write_summary(out_dir: Path, run_id: str, summary: RunSummary) -> Path:
    runs = out_dir / "_runs"
    runs.mkdir(exist_ok=True)
    final = runs / f"{run_id}.json"
    temporary = runs / f".{run_id}.json.tmp"
    temporary.write_text(summary.to_json(), encoding="utf-8")
    os.replace(temporary, final)
    return final
