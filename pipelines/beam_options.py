"""What the launcher reads from a run's Beam pipeline options before Beam is imported.

The runner the options name (spelt as Beam accepts it), whether ``run`` refuses that runner,
whether the run's workers read the inputs in this process, and the worker processes the
DirectRunner gets for a large input.
Parsed as Beam parses them (argparse, no abbreviations, unknown options left alone), without
importing Beam, which takes a second: a refusal is immediate.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

#: Runners ``run`` refuses, by their key (see ``runner_key``), and why, in one line.
REFUSED_RUNNERS = {
    "dask": "Beam 2.77's DaskRunner sends tagged outputs to the wrong consumer (dead letters and "
    "rate-limit violations would reach the wrong step); use the DirectRunner, the PortableRunner, "
    "Flink, Spark or Dataflow",
}


def _parsed(beam_args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--runner")
    parser.add_argument("--direct_running_mode")
    parser.add_argument("--direct_num_workers", type=int)
    known, _ = parser.parse_known_args(list(beam_args))
    return known


def runner_key(name: str | None) -> str:
    """The runner ``name`` names, as Beam resolves it: case aside, with or without ``Runner``,
    or as the last part of a dotted class path; ``direct`` when no runner is named.

    >>> [runner_key(n) for n in ("DirectRunner", "direct", None, "PortableRunner", "dask_runner")]
    ['direct', 'direct', 'direct', 'portable', 'dask']
    >>> runner_key("apache_beam.runners.dask.dask_runner.DaskRunner")
    'dask'
    """
    if not name:
        return "direct"
    short = name.rsplit(".", 1)[-1].lower().replace("_", "")
    return short.removesuffix("runner") or short


def runner_of(beam_args: Sequence[str]) -> str | None:
    """The ``--runner`` the options name, as given (``None``: Beam's default, the DirectRunner)."""
    runner: str | None = _parsed(beam_args).runner
    return runner


def refusal(beam_args: Sequence[str]) -> str | None:
    """Why ``run`` refuses the runner the options name, in one line; ``None`` when it does not."""
    name = runner_of(beam_args)
    why = REFUSED_RUNNERS.get(runner_key(name))
    return None if why is None else f"--runner={name} is not supported: {why}"


def reads_in_this_process(beam_args: Sequence[str]) -> bool:
    """Whether the run's sources read the inputs in this process, so that
    :mod:`pipelines.progress` sees every byte: the DirectRunner in memory or in threads, not in
    worker processes (``--direct_running_mode=multi_processing``) nor on any other runner.

    >>> reads_in_this_process([]), reads_in_this_process(["--direct_running_mode=multi_threading"])
    (True, True)
    >>> reads_in_this_process(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    False
    """
    options = _parsed(beam_args)
    return runner_key(options.runner) == "direct" and options.direct_running_mode != "multi_processing"


#: A run gets one DirectRunner worker process per core once its input holds this many splits per
#: process (``split_mb`` each, 32 MiB by default). Each process costs ~2 s to start and its own
#: models; below that the run stays in one process (measured at 200k events, 3 splits: the same
#: wall time either way; at 1M events, 15 splits, two processes gave 1.3x).
SPLITS_PER_PROCESS = 4


def with_worker_processes(beam_args: Sequence[str], splits: int, cpus: int | None) -> list[str]:
    """The options a run goes with: ``beam_args``, plus, for the DirectRunner on a large input
    when they choose neither a running mode nor a worker count, one worker process per core.

    The DirectRunner runs every stage in one process, on one core, unless told otherwise; its
    ``multi_processing`` mode splits each stage's input among worker processes.

    >>> with_worker_processes([], splits=15, cpus=2)
    ['--direct_running_mode=multi_processing', '--direct_num_workers=2']
    >>> with_worker_processes([], splits=3, cpus=2), with_worker_processes([], splits=15, cpus=1)
    ([], [])
    >>> with_worker_processes(["--direct_num_workers=1"], splits=15, cpus=2)
    ['--direct_num_workers=1']
    """
    options = _parsed(beam_args)
    chosen = options.direct_running_mode is not None or options.direct_num_workers is not None
    processes = min(cpus or 1, splits // SPLITS_PER_PROCESS)
    if runner_key(options.runner) != "direct" or chosen or processes < 2:
        return list(beam_args)
    return [*beam_args, "--direct_running_mode=multi_processing", f"--direct_num_workers={processes}"]


def balanced_split_bytes(content_bytes: int, split_bytes: int, cpus: int | None) -> int:
    """The size to cut ``content_bytes`` of input into: at most ``split_bytes``, and such that the
    splits come out a multiple of the worker processes ``with_worker_processes`` would start.

    The DirectRunner hands each process an equal share of a stage's inputs, by count: 15 splits
    on 2 processes leave one process a split (about 0.4 s at 1M events) to read alone at the end.

    >>> balanced_split_bytes(475 << 20, 32 << 20, cpus=2) / 2**20  # 16 splits, not 15
    29.6875
    >>> balanced_split_bytes(64 << 20, 32 << 20, cpus=2) == 32 << 20  # one process: as asked
    True
    """
    splits = -(-content_bytes // split_bytes)
    processes = min(cpus or 1, splits // SPLITS_PER_PROCESS)
    if processes < 2:
        return split_bytes
    return -(-content_bytes // (-(-splits // processes) * processes))


def counts_bytes_read(beam_args: Sequence[str]) -> bool:
    """Whether the launcher sees the bytes the run's sources read (``pipelines.progress``): on the
    DirectRunner, in any running mode; elsewhere the progress bar shows elapsed time only.

    >>> counts_bytes_read(["--direct_running_mode=multi_processing"]), counts_bytes_read(["--runner=flink"])
    (True, False)
    """
    return runner_key(_parsed(beam_args).runner) == "direct"
