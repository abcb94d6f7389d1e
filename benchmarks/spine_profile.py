"""Where the spine spends its time: ``run_batch`` in-process under cProfile, a script.

    python benchmarks/spine_profile.py --events 200000 [--data-dir bench-data] [--seed 1]

Runs the same generated file as ``spine_throughput.py`` through ``run_batch`` (DirectRunner,
SQLite audit store) in this process, then prints the functions with the most own time, and
own time summed by the area of code it is spent in (project modules, Beam, pyarrow, …).
cProfile slows per-call-heavy Python several-fold, so read shares, not seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.event_files import event_file
from benchmarks.measure import REPO

#: Fragments of a profiled function's file (or, for a built-in, its name) that name an area
#: of code, checked in order; the first match wins.
AREAS = (
    ("transforms/", "project: transforms"),
    ("connectors/", "project: connectors"),
    ("pipelines/", "project: pipelines"),
    ("marshal.", "imports"),
    ("_imp.", "imports"),
    ("importlib", "imports"),
    ("_pickle", "pickle (Beam coders)"),
    ("_thread.lock", "waiting on locks"),
    ("apache_beam/", "beam"),
    ("pyarrow", "pyarrow"),
    ("sqlalchemy/", "sqlalchemy"),
    ("sqlite3", "sqlite3"),
    ("orjson", "orjson"),
    ("hashlib", "hashlib"),
    ("unicodedata", "unicodedata"),
    ("site-packages/", "other libraries"),
    ("<built-in", "other built-ins"),
    ("<method", "other built-ins"),
    ("python3.11/", "stdlib"),
)
#: The spine's stages, whose cumulative time is listed one by one. Reading is a generator, so its
#: time is that of the reader function that yields the batches; every other stage is the
#: ``__call__`` of its class in ``pipelines/stages.py``.
STAGES = (
    "ValidateHashPrice",
    "CollapseDuplicates",
    "CompareWithStore",
    "ResolveTiers",
    "ApplyRateLimits",
    "OrderForSinks",
    "WriteEvents",
    "WriteViolations",
    "WriteDeadLetters",
)


def step_functions() -> list[tuple[str, int | None, str, str]]:
    """``(file suffix, first line or None, function name, label)`` of each profiled step."""
    from pipelines import stages

    steps: list[tuple[str, int | None, str, str]] = [
        ("connectors/jsonl_source.py", None, "read_jsonl", "ReadInputs")
    ]
    for name in STAGES:
        # WriteEvents writes what it gathered when it flushes; every other stage when called.
        method = "flush" if name == "WriteEvents" else "__call__"
        code = getattr(getattr(stages, name), method).__code__
        steps.append(("pipelines/stages.py", code.co_firstlineno, method, name))
    return steps


def area_of(filename: str) -> str:
    """The area of code a profiled function belongs to.

    >>> area_of("/work/main/transforms/validate.py")
    'project: transforms'
    """
    return next((area for fragment, area in AREAS if fragment in filename), "other")


def print_areas(stats: pstats.Stats) -> None:
    """Own time summed by area, largest first."""
    own: Counter[str] = Counter()
    for (filename, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        own[area_of(filename if filename != "~" else name)] += row[2]
    total = sum(own.values())
    print(f"\nown time by area (total {total:.1f} profiled s):")
    for area, seconds in own.most_common():
        print(f"  {area:<24}{seconds:>8.2f} s {100 * seconds / total:>6.1f} %")


def print_steps(stats: pstats.Stats) -> None:
    """Cumulative time of each spine step: the rest of the run is the engine and start-up."""
    steps = step_functions()
    cumulative: Counter[tuple[str, int | None, str, str]] = Counter()
    for (filename, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        step = next(
            (s for s in steps if filename.endswith(s[0]) and name == s[2] and s[1] in (None, line)), None
        )
        if step:
            cumulative[step] += row[3]
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\ncumulative time per spine step (run total {total:.1f} profiled s):")
    for step in steps:
        seconds = cumulative[step]
        print(f"  {step[3]:<24}{seconds:>8.2f} s {100 * seconds / total:>6.1f} %")
    rest = total - sum(cumulative.values())
    print(f"  {'(engine, start-up)':<24}{rest:>8.2f} s {100 * rest / total:>6.1f} %")


def main(argv: list[str] | None = None) -> int:
    """Profile one spine run; print the top functions and the time by area."""
    parser = argparse.ArgumentParser(prog="spine_profile.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, metavar="N")
    parser.add_argument("--data-dir", type=Path, default=REPO / "bench-data", metavar="DIR")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--top", type=int, default=30, help="functions to list (default: 30)")
    parser.add_argument("--save", type=Path, metavar="FILE", help="also dump the raw pstats here")
    args = parser.parse_args(argv)
    from pipelines.batch_run import RunRequest, run_batch  # after argument errors: Beam is slow

    source = event_file(args.data_dir.resolve(), args.events, args.seed)
    out = Path(tempfile.mkdtemp(prefix="profile-", dir=source.path.parent))
    profiler = cProfile.Profile()
    try:
        # The spine alone: the embedding stage has its own benchmark (embedding_throughput.py).
        request = RunRequest(
            inputs=[str(source.path)], out_dir=out, overrides={"embeddings": False, "moderation": False}
        )
        summary = profiler.runcall(run_batch, request)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"profiled run: {summary.events_read:,} events in {summary.seconds:.1f} s (under cProfile)")
    if args.save:
        profiler.dump_stats(args.save)
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(args.top)
    print_steps(stats)
    print_areas(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
