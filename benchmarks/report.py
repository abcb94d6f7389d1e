"""What the spine benchmark prints: the machine and versions, the tables, the ratios."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib.metadata import version
from typing import Any

from benchmarks.measure import Measurement, git_state


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            return round(int(fh.readline().split()[1]) / 2**20, 1)  # MemTotal, KiB
    except (OSError, ValueError, IndexError):
        return None


def environment(packages: tuple[str, ...] = ("apache-beam", "pyarrow", "duckdb")) -> dict[str, Any]:
    """Machine, versions (of ``packages``), the commit and the exact command line."""
    return {
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in packages},
        "git": git_state(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def print_environment(env: dict[str, Any]) -> None:
    """The header: what ran, where, on which code."""
    git = env["git"]
    print(f"command: {env['command']}   (cwd {env['cwd']})")
    print(
        f"machine: {env['nproc']} CPUs ({env['cpu_model']}), {env['memory_gib']} GiB RAM; "
        f"Python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    )
    dirty = (
        f"dirty: {len(git['modified_tracked_files'])} modified tracked file(s) "
        f"{git['modified_tracked_files'][:8]}"
        if git["dirty"]
        else "clean tracked files"
    )
    print(f"code:    commit {git['commit']}, {dirty}, {git['untracked_entries']} untracked entries")
    load = env["load_average"]
    busy = " (other work is running: timings will be noisy)" if load[0] > 0.5 else ""
    print(f"load:    {load[0]} {load[1]} {load[2]} (1, 5, 15 min){busy}\n")


def _rss(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:,.0f} MB"


def _cores(cores: float | None) -> str:
    return "-" if cores is None else f"{cores:.2f}"


def print_table(rows: list[Measurement]) -> None:
    """One line per measurement, then exactly what each one measured."""
    print(
        f"{'':3}{'measurement':<24}{'events':>11}{'wall s':>9}{'cpu s':>9}{'events/s':>11}"
        f"{'peak RSS':>11}{'others':>8}"
    )
    for i, m in enumerate(rows, start=1):
        print(
            f"{i:>2} {m.name:<24}{m.events:>11,}{m.wall_s:>9.2f}{m.cpu_s:>9.2f}"
            f"{m.events_per_s:>11,.0f}{_rss(m.peak_rss_mb):>11}{_cores(m.others_cores):>8}"
        )
    print(f"{'':3}others: CPU cores other processes kept busy during the measurement (noise)\n")
    for i, m in enumerate(rows, start=1):
        print(f"{i:>2} {m.what}")
    spine = rows[-1]
    print(
        f"   spine: process wall {spine.details['process_wall_s']:.2f} s (adds interpreter start "
        f"and imports); cpu/wall {spine.cpu_s / spine.details['process_wall_s']:.2f} cores; "
        f"peak RSS {_rss(spine.peak_rss_mb)} (VmHWM of {spine.details['processes_seen']} "
        f"process(es)); summed tree RSS polled each 0.1 s peaked at "
        f"{_rss(spine.details['peak_tree_rss_mb_polled'])}, its summed PSS (shared pages once), polled "
        f"each 1 s, at {_rss(spine.details.get('peak_tree_pss_mb_polled'))}; wait4 ru_maxrss "
        f"{_rss(spine.details['ru_maxrss_mb'])} (may be the parent's, see measure.py)"
    )
    print(f"   spine RSS over the run (s: MB): {rss_timeline(spine)}")
    code = spine.details["git_at_start"]
    print(f"   spine code: commit {code['commit']}, modified tracked files {code['modified_tracked_files']}")


def _code(spine: Measurement) -> str:
    """The commit a spine run imported, with ``+N`` for N modified tracked files it may import
    (tests, benchmarks and Markdown files left out)."""
    code = spine.details["git_at_start"]
    modified = [
        path
        for path in code["modified_tracked_files"]
        if not path.startswith(("tests/", "benchmarks/")) and not path.endswith(".md")
    ]
    return str(code["commit"]) + (f"+{len(modified)} modified" if modified else "")


def rss_timeline(spine: Measurement, points: int = 10) -> str:
    """About ``points`` evenly spaced samples of the spine's RSS, as ``seconds: MB`` pairs."""
    timeline = spine.details["rss_timeline_mb"]
    step = max(1, len(timeline) // points)
    picked = [*timeline[::step], timeline[-1]] if timeline else []
    return ", ".join(f"{t:.0f}: {mb:,}" for t, mb in dict(picked).items())


def print_ratios(rows: list[Measurement]) -> dict[str, float]:
    """The spine's events/s over each anchor's."""
    spine = rows[-1]
    print("\nratios (events/s):")
    ratios = {}
    for anchor in rows[:-1]:
        ratio = spine.events_per_s / anchor.events_per_s
        ratios[f"spine / {anchor.name}"] = round(ratio, 4)
        print(f"  spine / {anchor.name:<24} = {ratio:6.3f}   ({1 / ratio:5.1f}x slower)")
    return ratios


def print_before_after(before: Measurement, after: Measurement) -> float:
    """The spine of an older commit and of the work tree on the same input: throughput, memory
    and the result counts, which must be equal (a refactor changes no output)."""
    counts = ("events_read", "events_processed", "events_dead_lettered", "duplicates_collapsed",
              "rate_limited", "unpriced_events", "cost_total", "rate_limit_violations")  # fmt: skip
    ratio = after.events_per_s / before.events_per_s
    print(f"\nbefore / after ({before.name} vs the work tree):")
    speeds = f"{before.events_per_s:>16,.0f} {after.events_per_s:>16,.0f}"
    print(f"  {'events/s':<22} {speeds}   ratio {ratio:.3f}")
    print(f"  {'peak RSS MB':<22} {before.peak_rss_mb or 0:>16,.0f} {after.peak_rss_mb or 0:>16,.0f}")
    for name in counts:
        ours, theirs = before.details["summary"].get(name), after.details["summary"].get(name)
        mark = "" if ours == theirs else "   DIFFERENT"
        print(f"  {name:<22} {ours!s:>16} {theirs!s:>16}{mark}")
    return round(ratio, 4)


def print_agreement(spine: Measurement, peer: Measurement) -> dict[str, Any]:
    """The spine's and the peer's results side by side: evidence the work was equivalent."""
    summary, peer_out = spine.details["summary"], peer.details
    pairs = {
        "events written": (summary["events_processed"], peer_out["rows_written"]),
        "rate_limited": (summary["rate_limited"], peer_out["rate_limited"]),
        "unpriced": (summary["unpriced_events"], peer_out["unpriced"]),
        "cost_total": (summary["cost_total"], peer_out["cost_total"]),
    }
    print("\nresults, spine vs DuckDB peer:")
    for name, (ours, theirs) in pairs.items():
        print(f"  {name:<15} {ours!s:>16} {theirs!s:>16}")
    extra = peer_out["rows_written"] - summary["events_processed"]
    print(
        f"  the peer keeps {extra:,} more events: lines the contract rejects that its reader "
        f"accepts (of {summary['events_dead_lettered']:,} the spine dead-lettered)"
    )
    return {name: {"spine": ours, "peer": theirs} for name, (ours, theirs) in pairs.items()}


def print_scaling(runs: list[Measurement]) -> None:
    """Peak RSS and throughput of the spine at each input size, and how RSS grows with it."""
    print(
        f"{'events read':>12}{'run s':>9}{'events/s':>10}{'cpu s':>9}{'peak RSS':>11}"
        f"{'tree RSS':>11}{'tree PSS':>11}{'ΔRSS per 1M more':>18}{'others':>8}  code"
    )
    previous: Measurement | None = None
    for m in runs:
        growth = "-"
        if previous is not None and m.events != previous.events and m.peak_rss_mb and previous.peak_rss_mb:
            slope = (m.peak_rss_mb - previous.peak_rss_mb) / (m.events - previous.events) * 1e6
            growth = f"{slope:,.0f} MB"
        print(
            f"{m.events:>12,}{m.wall_s:>9.1f}{m.events_per_s:>10,.0f}{m.cpu_s:>9.1f}"
            f"{_rss(m.peak_rss_mb):>11}{_rss(m.details['peak_tree_rss_mb_polled']):>11}"
            f"{_rss(m.details.get('peak_tree_pss_mb_polled')):>11}{growth:>18}"
            f"{_cores(m.others_cores):>8}  {_code(m)}"
        )
        previous = m
    if len({_code(m) for m in runs}) > 1:
        print("warning: the code changed between these runs; compare only rows with the same code")
    for m in runs:
        print(f"RSS over the run at {m.events:,} events (s: MB): {rss_timeline(m)}")
    print("peak RSS: the kernel's VmHWM of the run's process(es);")
    print("tree RSS: their summed RSS, polled each 0.1 s (a page every process maps, such as a")
    print("  library's, counts once per process);")
    print("tree PSS: their summed proportional set size, polled each 1 s (each page counted once);")
    print("others: CPU cores other processes kept busy during the run (noise)")
