"""A stream job before it runs: what the operator asked, the stream's identity, and the preparation
one process does for every process of the job.

A stream's outputs are named by its *stream id*, a hash of what it reads (the Redis server,
stream and group, or the input files' contents): the same command started again is the same
stream, and resumes from its recovery store (``--recovery-dir``, by default
``<out>/_recovery/<stream id>``), created when missing. The process that prepares a job holds the
output's lock: the only process, process 0 of a cluster across machines, or the parent of a local
cluster (``pipelines.stream_cluster``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from connectors import database
from connectors.config import PipelineConfig, load_config
from connectors.database_url import redact
from connectors.file_tail import FileTail
from connectors.inputs import InputFile, discover_inputs
from connectors.parquet_sink import remove_temporary_files
from connectors.redis_stream import StreamAddress, StreamError
from pipelines.batch_run import RunError, _check_models, _prepare_out_dir, inputs_fingerprint, lock_output
from pipelines.stages import build_enrich_settings


@dataclass(frozen=True)
class StreamRequest:
    """What the operator asked of a stream job."""

    out_dir: Path
    source: str | None = None  # a redis:// URL
    inputs: tuple[str, ...] = ()
    audit_url: str | None = None
    config_path: Path | None = None
    recovery_dir: Path | None = None
    workers: int = 1
    #: Stop at the last Redis entry present at start, as the end of the input.
    until_end: bool = False
    #: The folder a live source's relative image paths resolve against (default: the current one).
    image_root: Path | None = None
    #: Serve Prometheus metrics on 127.0.0.1 at this port (process 0 of a cluster: every count).
    metrics_port: int | None = None
    #: Follow the input files and folders as they grow, until SIGTERM.
    follow: bool = False
    #: Local processes to run the job on (``workers`` each), talking TCP on 127.0.0.1.
    processes: int = 1
    #: This process's place in a cluster across machines: its index into ``addresses``, every
    #: process's HOST:PORT. Process 0 reads the source and writes the summary.
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def stream_id(request: StreamRequest, files: list[InputFile]) -> str:
    """The stream's id: ``s`` and 15 hex digits of what it reads (never a password): the Redis
    server, stream and group, or the input files' contents."""
    digest = hashlib.sha256()
    if request.source:
        address = StreamAddress.parse(request.source)
        digest.update(f"redis\t{redact(address.server)}\t{address.stream}\t{address.group}".encode())
    elif list(request.inputs) == ["-"]:  # live stdin cannot be read again: each execution is its own
        digest.update(f"stdin\t{uuid.uuid4().hex}".encode())
    elif request.follow:  # the files grow: their paths, not their contents, name the stream
        digest.update(b"follow\t" + "\t".join(os.path.abspath(p) for p in request.inputs).encode())
    else:
        digest.update(f"files\t{inputs_fingerprint(files)}".encode())
    return "s" + digest.hexdigest()[:15]


def stream_config(request: StreamRequest) -> PipelineConfig:
    """The job's settings: the config file, then the command line's overrides."""
    return dataclasses.replace(load_config(request.config_path), **request.overrides)


def open_stream_output(request: StreamRequest, out_dir: Path, *, lock: bool) -> filelock.FileLock | None:
    """Check that the output directory is writable and the source URL usable; with ``lock`` (the
    process that prepares the job), take the output's lock and return it, or refuse in one line."""
    _prepare_out_dir(out_dir)
    if request.source:
        try:
            address = StreamAddress.parse(request.source)
        except StreamError as exc:
            raise RunError(str(exc)) from None
        if not address.group:
            raise RunError(f"stream {redact(request.source)}: a stream job needs &group=NAME")
    return lock_output(out_dir) if lock else None


@dataclass(frozen=True)
class PreparedStream:
    """What every process of one stream job runs with: found once by the process that prepares
    the job (it holds the output's lock), and handed to a local cluster's processes as it is."""

    config: PipelineConfig
    out_dir: Path
    identity: str
    run_id: str
    files: tuple[InputFile, ...]
    audit_url: str
    #: The audit store's schema after its migrations (``None`` where another process ran them).
    schema_version: str | None
    recovery: Path | None


def prepare_stream(
    request: StreamRequest, config: PipelineConfig, out_dir: Path, *, coordinate: bool
) -> PreparedStream:
    """Find the inputs and name the stream; when ``coordinate`` (the one process holding the
    output's lock), also clear a killed run's temporary files, migrate the audit store, check the
    models, and create or check the recovery store."""
    if coordinate:
        remove_temporary_files(out_dir)
    rules = build_enrich_settings(config).rules
    if request.follow:
        FileTail(list(request.inputs), rules.max_record_bytes)  # every pattern must match now
    live_stdin = not request.source and list(request.inputs) == ["-"]
    if live_stdin and request.recovery_dir:
        raise RunError("stdin cannot be read again after a restart: --recovery-dir is for files and streams")
    files = (
        []
        if request.source or request.follow or live_stdin
        else discover_inputs(list(request.inputs), out_dir / "_staging" / "stdin.jsonl")
    )
    identity = stream_id(request, files)
    audit_url = request.audit_url or database.default_url(out_dir)
    schema_version = None
    if coordinate:
        try:
            engine = database.open_engine(audit_url)
            schema_version = database.upgrade(engine).after
            engine.dispose()
        except Exception as exc:
            raise RunError(
                f"audit store {redact(audit_url)} is unusable: {database.describe_error(exc, audit_url)}"
            ) from exc
        if config.needs_vectors:
            _check_models(config, out_dir)
    recovery: Path | None = None
    if not live_stdin:
        recovery = (request.recovery_dir or out_dir / "_recovery" / identity).resolve()
        if coordinate:
            _open_recovery_store(recovery, out_dir, identity, config, request.workers * cluster_size(request))
        else:  # Bytewax wants the folder, even empty: the cluster as a whole holds the partitions
            recovery.mkdir(parents=True, exist_ok=True)
    return PreparedStream(
        config=config,
        out_dir=out_dir,
        identity=identity,
        run_id=f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{identity}",
        files=tuple(files),
        audit_url=audit_url,
        schema_version=schema_version,
        recovery=recovery,
    )


def cluster_size(request: StreamRequest) -> int:
    """How many processes run the job (1 without a cluster)."""
    return max(request.processes, len(request.addresses))


def _open_recovery_store(
    recovery: Path, out_dir: Path, identity: str, config: PipelineConfig, workers: int
) -> None:
    """Create the recovery store (one partition per worker of the first execution) or check that a
    restart keeps the settings its state was made with. Bytewax lets a restart rescale: another
    number of processes or workers resumes from the same partitions."""
    from bytewax.recovery import init_db_dir

    if not recovery.exists() or not any(recovery.iterdir()):
        written = next(out_dir.glob(f"*/dt=*/part-{identity}-*.parquet"), None)
        if written is not None:
            raise RunError(
                f"{str(out_dir)!r} holds this stream's files ({written.name}) but its recovery"
                f" store {str(recovery)!r} is new: resuming without it would rewrite them from what"
                " the source can still give; give the original --recovery-dir, or a fresh --out"
            )
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, workers)
    _check_state_settings(recovery, identity, config)


#: Settings the stream's state is shaped by: a restart must keep them (its state and files were
#: made with them), or start over with a fresh recovery store and output.
STATE_SETTINGS = (
    "batch_size",  # a file source's position counts batches
    "split_mb",
    "shards",
    "window_seconds",
    "features_window_seconds",
    "allowed_lateness_seconds",
    "embeddings",
    "moderation",
)


def _check_state_settings(recovery: Path, identity: str, config: Any) -> None:
    """Record the settings the state depends on beside the recovery store on first start;
    refuse, in one line, a restart that changes any of them."""
    record = recovery / "aiep-stream.json"
    wanted = {"stream_id": identity, **{name: getattr(config, name) for name in STATE_SETTINGS}}
    if not record.exists():
        record.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
        return
    try:
        kept = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"recovery store {str(recovery)!r}: cannot read {record.name}: {exc}") from None
    changed = [f"{k} {kept.get(k)!r} -> {v!r}" for k, v in wanted.items() if kept.get(k) != v]
    if changed:
        raise RunError(
            f"recovery store {str(recovery)!r} holds the state of a stream run with other settings"
            f" ({'; '.join(changed)}); restart with the same ones, or use a fresh --recovery-dir and --out"
        )
