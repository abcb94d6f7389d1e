"""How fast the spine runs, next to how fast it could run: a benchmark script, not a test.

    python benchmarks/spine_throughput.py --events 1000000 [--data-dir bench-data] [--seed 1]
    python benchmarks/spine_throughput.py --rss-scaling 1000000,2000000
    python benchmarks/spine_throughput.py --events 1000000 --baseline 5047fa5

Measures, in one run on one generated file (made once per size and seed under ``--data-dir``):

1. **raw parse**: ``pyarrow.json.read_json`` of the file, the ceiling of any JSONL reader;
2. **DuckDB peer**: the same validate, dedup, hash, price and rate-limit logic as one DuckDB
   statement (``benchmarks/peer_sql.py``), what a data engineer would write instead, pinned to
   2 threads (the machine's cores);
3. **spine**: ``runner.py run`` (``run_batch``, DirectRunner, SQLite audit store, model stages
   off) in a child process, events_read / run seconds, and its peak RSS;

the peer and the spine alternately, ``--rounds`` times (default 3), so that load from other work
falls on both; then prints the spine's ratio to each anchor, per round and the median. The last
line of the output is ``spine / DuckDB peer (median) = R``. ``--baseline REF`` also runs the spine
of an older commit in each round, on the same file, and prints the two side by side (throughput
and result counts).
``--rss-scaling`` runs only the spine at several sizes to show whether memory stays flat as the
input grows. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from benchmarks.anchors import PEER_SIMPLIFICATIONS, duckdb_peer, raw_parse
from benchmarks.event_files import event_file
from benchmarks.measure import REPO, Measurement, checkout_commit, run_spine
from benchmarks.report import (
    environment,
    print_agreement,
    print_before_after,
    print_environment,
    print_ratios,
    print_scaling,
    print_table,
)

#: The peer's threads: this machine's two cores, as the spine may use them.
PEER_THREADS = 2

_SPINE_ARG_HELP = (
    "a Beam pipeline option for the spine, repeatable "
    "(e.g. --spine-arg=--direct_num_workers=2 --spine-arg=--direct_running_mode=multi_processing)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine_throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        metavar="N",
        help="lines in the generated input (default: 1,000,000)",
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
        "--rss-scaling",
        metavar="N,N,...",
        type=_sizes,
        default=None,
        help="run only the spine at these sizes and print peak RSS per size",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="K",
        help="alternate the DuckDB peer and the spine K times; ratios are the median's (default: 3)",
    )
    parser.add_argument(
        "--spine-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help=_SPINE_ARG_HELP,
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the spine of this git commit (checked out in a scratch worktree) on the same "
        "input, right before the current tree's, and print both side by side with their counts",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="keep the spine's and the peer's output folders under --data-dir",
    )
    return parser


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1000000,2000000; got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers; got {text!r}")
    return sizes


def compare(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Measure raw parse once, then the DuckDB peer (2 threads), the baseline's spine (if asked)
    and the spine, alternately, ``--rounds`` times on one file."""
    source = event_file(args.data_dir, args.events, args.seed)
    print(
        f"input: {source.path} ({source.path.stat().st_size / 2**20:,.0f} MiB, {source.lines:,} lines)",
        flush=True,
    )
    raw = _measured(raw_parse(source))
    checkout = checkout_commit(args.baseline, scratch / "baseline-tree") if args.baseline else None
    peers: list[Measurement] = []
    spines: list[Measurement] = []
    baselines: list[Measurement] = []
    for round_ in range(max(1, args.rounds)):
        print(f"round {round_ + 1}:", flush=True)
        peers.append(_measured(duckdb_peer(source, scratch / "duckdb-peer", threads=PEER_THREADS)))
        if checkout is not None:
            out = scratch / f"baseline-{round_}"
            baselines.append(_measured(run_spine(source.path, out, tuple(args.spine_arg), repo=checkout)))
            _drop(out, args.keep_outputs)
        out = scratch / f"spine-{round_}"
        spines.append(_measured(run_spine(source.path, out, tuple(args.spine_arg))))
        _drop(out, args.keep_outputs)
    peer, spine = _median_run(peers), _median_run(spines)
    baseline = _median_run(baselines) if baselines else None
    print()
    print_table([raw, peer, *([baseline] if baseline else []), spine])
    ratios = print_ratios([raw, peer, spine])
    per_round = [s.events_per_s / p.events_per_s for p, s in zip(peers, spines, strict=True)]
    median = statistics.median(per_round)
    print(f"  per round, spine / DuckDB peer: {', '.join(f'{r:.3f}' for r in per_round)}")
    ratios["spine / DuckDB peer (median of rounds)"] = round(median, 4)
    agreement = print_agreement(spine, peer)
    if baseline:
        ratios["spine / spine at baseline"] = print_before_after(baseline, spine)
    print("\nDuckDB peer simplifications:")
    for line in PEER_SIMPLIFICATIONS:
        print(f"  - {line}")
    return {
        "input": {"path": str(source.path), "manifest": source.manifest},
        "measurements": [_as_json(m) for m in [raw, *peers, *baselines, *spines]],
        "ratios": ratios,
        "agreement": agreement,
        "peer_simplifications": list(PEER_SIMPLIFICATIONS),
        "headline": f"spine / DuckDB peer (median) = {median:.3f}",
    }


def _median_run(runs: list[Measurement]) -> Measurement:
    """The run of median wall time (the slower middle one of an even count), every wall noted."""
    ordered = sorted(runs, key=lambda m: m.wall_s)
    middle = ordered[len(ordered) // 2]
    return dataclasses.replace(
        middle, details={**middle.details, "walls_s": [round(m.wall_s, 3) for m in runs]}
    )


def _measured(m: Measurement) -> Measurement:
    print(f"  measured {m.name}: {m.wall_s:.2f} s", flush=True)
    return m


def _drop(out: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(out, ignore_errors=True)


def scaling(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Run only the spine at each size; print its throughput and peak RSS per size."""
    runs: list[Measurement] = []
    for size in args.rss_scaling:
        source = event_file(args.data_dir, size, args.seed)
        runs.append(run_spine(source.path, scratch / f"spine-{size}", tuple(args.spine_arg)))
        print(f"  measured spine at {size:,} events", flush=True)
        if not args.keep_outputs:
            shutil.rmtree(scratch / f"spine-{size}", ignore_errors=True)
    print()
    print_scaling(runs)
    return {"rss_scaling": [_as_json(m) for m in runs]}


def _as_json(m: Measurement) -> dict[str, Any]:
    details = {k: v for k, v in m.details.items() if k != "sql"}
    return {
        "name": m.name,
        "what": m.what,
        "events": m.events,
        "wall_s": round(m.wall_s, 3),
        "cpu_s": round(m.cpu_s, 3),
        "events_per_s": round(m.events_per_s),
        "peak_rss_mb": None if m.peak_rss_mb is None else round(m.peak_rss_mb, 1),
        "others_cores": None if m.others_cores is None else round(m.others_cores, 2),
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write ``--json`` if asked."""
    args = _parser().parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    print_environment(env)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.data_dir))
    try:
        results = scaling(args, scratch) if args.rss_scaling else compare(args, scratch)
    finally:
        if not args.keep_outputs:
            shutil.rmtree(scratch, ignore_errors=True)
    after = environment()["git"]
    if after != env["git"]:
        print(f"\nwarning: the work tree changed during the run; now {after}")
    if args.json:
        args.json.write_bytes(
            orjson.dumps({"environment": env, "git_after": after, **results}, option=orjson.OPT_INDENT_2)
            + b"\n"
        )
        print(f"\nwrote {args.json}")
    if "headline" in results:
        print(f"\n{results['headline']}")  # the last line: the figure issue 19 tracks
    return 0


if __name__ == "__main__":
    sys.exit(main())
