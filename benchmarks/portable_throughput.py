"""The spine through a Beam job service and SDK workers, beside the DirectRunner in one process:
a benchmark script, not a test.

    python benchmarks/portable_throughput.py [--events 1000000] [--sdk-workers 2] [--isolate no]
        [--data-dir bench-data] [--seed 1] [--repeat K]

On one generated file (``benchmarks/event_files.py``: made once per size and seed), in one run:

1. **DirectRunner**: ``runner.py run --no-embeddings --no-moderation`` (the spine, SQLite audit
   store), Beam's in-process FnApiRunner;
2. **job service**: the same command with ``-- --runner=PortableRunner ...`` for a job service and
   a worker pool started here (``connectors/beam_services.py``; starting them is not timed), its
   jobs on ``--sdk-workers`` SDK workers, each a process of its own that the pool starts.

Events/s is ``events_read`` over the run's own ``seconds`` (``run_batch`` end to end, from its
summary: for the job service that includes submitting the job and starting the SDK workers). The
CPU column of the job service's row adds the job service's and the SDK workers' CPU to the
launcher's, and its peak RSS sums theirs. The SDK workers are counted twice: processes seen under
the pool while the run goes, and the starts the pool logged. The results' counts of the two runs
are printed side by side; they must be equal. Timings are printed, never asserted.

On a machine of few cores this shows the cost of the portable path (every element serialised and
sent over gRPC, the job service's Python runner doing each shuffle, a process per worker) far more
than any speed-up from a second worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.event_files import EventFile, event_file
from benchmarks.measure import (
    REPO,
    Measurement,
    TreeRssPoller,
    _tree_pids,
    best_of,
    others_cores,
    run_spine,
    system_busy_s,
)
from benchmarks.report import environment, print_environment
from connectors.beam_services import PortableServices

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_COUNTS = (
    "events_read",
    "events_processed",
    "events_dead_lettered",
    "duplicates_collapsed",
    "rate_limited",
    "rate_limit_violations",
    "unpriced_events",
    "cost_total",
    "audit_rows_inserted",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable_throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000, metavar="N", help="default: 1,000,000")
    parser.add_argument(
        "--sdk-workers", type=int, default=2, metavar="N", help="SDK workers of the job (default: 2)"
    )
    parser.add_argument(
        "--isolate",
        choices=["auto", "yes", "no"],
        default="no",
        help="the worker pool in its own network namespace (default: no, the shared loopback)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / "bench-data",
        metavar="DIR",
        help="where inputs are cached and runs write (default: bench-data/)",
    )
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default: 1)")
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="K", help="measure each K times, keep the fastest"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    return parser


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process (live, or a zombie not yet reaped) and of the children it reaped
    (user + system); 0 for one already gone, whose seconds its parent's reaped count holds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / _CLOCK_TICKS  # utime stime cutime cstime


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def through_job_service(
    source: EventFile, out: Path, services: PortableServices, sdk_workers: int
) -> Measurement:
    """The spine through ``services``; CPU and memory of the launcher, job service and workers."""
    job, pool = services.job_service_pid, services.pool_pid
    cpu_before, starts_before = _cpu_s(job) + _cpu_s(pool), services.sdk_workers_started()
    earlier = set(_tree_pids(pool))  # the pool, and zombies of an earlier job's workers
    poller = TreeRssPoller(pool)
    poller.start()
    busy_before, wall_before = system_busy_s(), time.perf_counter()
    try:
        run = run_spine(source.path, out, tuple(services.beam_args(sdk_workers)))
    finally:
        poller.stop()
    wall = time.perf_counter() - wall_before
    # The pool reaps an SDK worker only when asked to stop it: a finished job's stay zombies,
    # whose CPU seconds are still theirs.
    workers = [pid for pid in poller.hwm_kb if pid not in earlier]
    services_cpu = _cpu_s(job) + _cpu_s(pool) - cpu_before + sum(_cpu_s(pid) for pid in workers)
    cpu = run.cpu_s + services_cpu
    peak = (run.peak_rss_mb or 0.0) + poller.peak_hwm_kb / 1024 + _peak_rss_mb(job)
    where = (
        f"in network namespace {services.namespace.name}" if services.namespace else "on the shared loopback"
    )
    return dataclasses.replace(
        run,
        name=f"job service, {sdk_workers} SDK wkr",
        what=f"`runner.py run` over {source.path.name} through a job service and {sdk_workers} SDK "
        f"worker(s) of a pool {where}, --no-embeddings --no-moderation, SQLite audit; CPU and peak "
        "RSS of the launcher, job service and workers together",
        cpu_s=cpu,
        peak_rss_mb=peak,
        others_cores=others_cores(system_busy_s() - busy_before, cpu, wall),
        details={
            **run.details,
            "sdk_workers_seen": len(workers),
            "sdk_workers_started": services.sdk_workers_started() - starts_before,
            "launcher_cpu_s": round(run.cpu_s, 2),
            "services_cpu_s": round(services_cpu, 2),
            "worker_peak_rss_mb": {str(pid): round(poller.hwm_kb[pid] / 1024) for pid in workers},
        },
    )


def in_process(source: EventFile, out: Path) -> Measurement:
    """The spine on the DirectRunner, in the launcher's process."""
    run = run_spine(source.path, out)
    return dataclasses.replace(run, name="DirectRunner, in process")


def print_results(rows: list[Measurement]) -> float:
    """The table, what each row measured, the workers seen, the counts side by side, the ratio."""
    header = f"{'measurement':<28}{'events':>11}{'run s':>9}{'cpu s':>9}{'events/s':>11}{'peak RSS':>11}"
    print(f"{'':3}{header}{'others':>8}")
    for i, m in enumerate(rows, start=1):
        others = "-" if m.others_cores is None else f"{m.others_cores:.2f}"
        print(
            f"{i:>2} {m.name:<28}{m.events:>11,}{m.wall_s:>9.2f}{m.cpu_s:>9.2f}{m.events_per_s:>11,.0f}"
            f"{(m.peak_rss_mb or 0):>8,.0f} MB{others:>8}"
        )
    print(f"{'':3}others: CPU cores other processes kept busy meanwhile (noise)\n")
    for i, m in enumerate(rows, start=1):
        print(f"{i:>2} {m.what}")
    direct, portable = rows
    details = portable.details
    print(
        f"\nSDK worker processes: {details['sdk_workers_seen']} seen under the pool during the run, "
        f"{details['sdk_workers_started']} starts in its log; their peak RSS (MB): "
        f"{sorted(details['worker_peak_rss_mb'].values())}; CPU: launcher {details['launcher_cpu_s']} s, "
        f"job service and workers {details['services_cpu_s']} s"
    )
    print("\nresults (must be equal):")
    for name in _COUNTS:
        ours, theirs = direct.details["summary"].get(name), portable.details["summary"].get(name)
        print(f"  {name:<22}{ours!s:>18}{theirs!s:>18}{'' if ours == theirs else '   DIFFERENT'}")
    ratio = portable.events_per_s / direct.events_per_s
    how = f"{1 / ratio:.2f}x slower" if ratio < 1 else f"{ratio:.2f}x faster"
    print(f"\nratio (events/s): {portable.name} / {direct.name} = {ratio:.3f}   ({how})")
    # CPU seconds are what other work on the machine disturbs least.
    print(f"ratio (CPU s):    {portable.name} / {direct.name} = {portable.cpu_s / direct.cpu_s:.3f}")
    return ratio


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the ratio; write ``--json`` if asked."""
    args = _parser().parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    env = environment()
    print_environment(env)
    source = event_file(args.data_dir, args.events, args.seed)
    print(f"input: {source.path} ({source.path.stat().st_size / 2**20:,.0f} MiB, {source.lines:,} lines)")
    scratch = Path(tempfile.mkdtemp(prefix="portable-", dir=args.data_dir))
    isolate = {"auto": None, "yes": True, "no": False}[args.isolate]
    repeat = max(1, args.repeat)
    try:
        direct = best_of(repeat, lambda attempt: in_process(source, scratch / f"direct-{attempt}"))
        with PortableServices.start(scratch / "services", isolate=isolate) as services:
            portable = best_of(
                repeat,
                lambda attempt: through_job_service(
                    source, scratch / f"portable-{attempt}", services, args.sdk_workers
                ),
            )
        print()
        ratio = print_results([direct, portable])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        results: dict[str, Any] = {
            "environment": env,
            "input": {"path": str(source.path), "manifest": source.manifest},
            "measurements": [
                {**dataclasses.asdict(m), "events_per_s": round(m.events_per_s)} for m in (direct, portable)
            ],
            "ratio": round(ratio, 4),
        }
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2, default=str) + b"\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
