"""Timing and memory probes: wall and CPU seconds in-process, and the spine in a child process.

The spine runs as ``runner.py run`` in a child, so its peak RSS is its own: a poller reads the
kernel's high-water mark (``VmHWM``) of the child and of any helper process it starts, and the
summed RSS of the whole tree, every 0.1 s. ``ru_maxrss`` from ``os.wait4`` is not used for the
headline: a child started by vfork + exec inherits its parent's high-water mark, so it reports
the benchmark's own peak (a million parsed rows) whenever that is the larger.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

REPO = Path(__file__).resolve().parent.parent
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measurement:
    """One measured way of doing the work, and exactly what was measured."""

    name: str
    what: str  # the operation timed and the input it read, in words
    events: int  # the numerator of events/s
    wall_s: float
    cpu_s: float  # user + system, all threads (and child processes for the spine)
    peak_rss_mb: float | None = None
    others_cores: float | None = None  # CPU cores other processes kept busy meanwhile (noise)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        """Events per wall-clock second."""
        return self.events / self.wall_s if self.wall_s > 0 else float("nan")


MeasuredT = TypeVar("MeasuredT")
"""A measurement dataclass with a ``name``, a ``wall_s`` and a ``details`` dict."""


def best_of(times: int, measure: Callable[[int], MeasuredT]) -> MeasuredT:
    """Call ``measure(attempt)`` ``times`` times; keep the fastest, noting every wall time."""
    runs = []
    for attempt in range(times):
        runs.append(measure(attempt))
        print(f"  measured {runs[-1].name}: {runs[-1].wall_s:.2f} s", flush=True)  # type: ignore[attr-defined]
    return fastest(runs)


def fastest(runs: list[MeasuredT]) -> MeasuredT:
    """The run with the least wall time, with every run's wall time noted in its details."""
    best: Any = min(runs, key=lambda m: m.wall_s)  # type: ignore[attr-defined]
    walls = [round(m.wall_s, 3) for m in runs]  # type: ignore[attr-defined]
    return dataclasses.replace(best, details={**best.details, "walls_s": walls})  # type: ignore[no-any-return]


@dataclass
class Stopwatch:
    """Wall and CPU seconds of a ``with`` block (CPU of this process, all its threads)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    others_cores: float = 0.0  # cores other processes on the machine kept busy meanwhile


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """Measure the wall and CPU time of the block into the yielded :class:`Stopwatch`."""
    watch = Stopwatch()
    busy0, cpu0 = system_busy_s(), _cpu_seconds(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    try:
        yield watch
    finally:
        watch.wall_s = time.perf_counter() - wall0
        watch.cpu_s = _cpu_seconds(resource.RUSAGE_SELF) - cpu0
        watch.others_cores = others_cores(system_busy_s() - busy0, watch.cpu_s, watch.wall_s)


def system_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; not idle or iowait)."""
    with open("/proc/stat") as fh:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def others_cores(busy_s: float, own_cpu_s: float, wall_s: float) -> float:
    """Average cores kept busy by other processes: what makes a timing on a shared machine noisy.

    >>> others_cores(busy_s=3.0, own_cpu_s=2.0, wall_s=2.0)
    0.5
    """
    return max(0.0, busy_s - own_cpu_s) / wall_s if wall_s > 0 else 0.0


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    pending.extend(int(child) for child in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        pids.append(pid)
    return pids


def _memory_kb(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of one process in KiB: its RSS now and its peak RSS so far."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def _pss_kb(pid: int) -> int:
    """One process's proportional set size in KiB: its RSS with each page shared with other
    processes (the libraries every worker maps) counted as its share, so a tree's sum counts
    each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


class TreeRssPoller(threading.Thread):
    """Samples the memory of a process tree until stopped.

    Keeps each process's peak RSS (``VmHWM``, which the kernel tracks between samples too), the
    peak of the tree's summed RSS, and a timeline of the summed RSS, all in KiB; and, once a
    second (reading it walks the page tables), the peak of the tree's summed PSS.
    """

    def __init__(self, root: int, interval_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s, self.peak_kb, self.peak_pss_kb = root, interval_s, 0, 0
        self.hwm_kb: dict[int, int] = {}  # pid -> its VmHWM, the last one seen
        self.timeline: list[tuple[float, int]] = []  # (seconds since start, KiB), one a second
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Poll until :meth:`stop`."""
        started = time.perf_counter()
        while not self._stop_event.wait(self.interval_s):
            total = 0
            for pid in _tree_pids(self.root):
                rss, hwm = _memory_kb(pid)
                total += rss
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
            self.peak_kb = max(self.peak_kb, total)
            elapsed = time.perf_counter() - started
            if not self.timeline or elapsed - self.timeline[-1][0] >= 1.0:
                self.timeline.append((round(elapsed, 1), total))
                pss = sum(_pss_kb(pid) for pid in _tree_pids(self.root))
                self.peak_pss_kb = max(self.peak_pss_kb, pss)

    @property
    def peak_hwm_kb(self) -> int:
        """Sum of every process's peak RSS: exact for one process, an upper bound for several."""
        return sum(self.hwm_kb.values())

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop_event.set()
        self.join()


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    # rstrip only: porcelain lines start with a status column that may be a space
    return done.stdout.rstrip() if done.returncode == 0 else f"(git failed: {done.stderr.strip()})"


def git_state() -> dict[str, Any]:
    """The commit measured and whether the work tree differs from it."""
    tracked = _git("status", "--porcelain", "--untracked-files=no")
    modified = [line[3:] for line in tracked.splitlines()]
    untracked = _git("status", "--porcelain", "--untracked-files=normal").count("?? ")
    return {
        "commit": _git("log", "-1", "--format=%h"),
        "dirty": bool(modified),
        "modified_tracked_files": modified,
        "untracked_entries": untracked,
    }


@dataclass(frozen=True)
class ChildRun:
    """How one child process ran: its exit, its rusage, wall time, and the memory poller."""

    exit_code: int
    usage: resource.struct_rusage
    wall_s: float
    busy_s: float  # CPU seconds the whole machine was busy meanwhile
    memory: TreeRssPoller


def run_child(command: list[str], log: Path, cwd: Path = REPO) -> ChildRun:
    """Run ``command`` from ``cwd`` (the repository root), output to ``log``; watch its memory
    meanwhile."""
    with log.open("wb") as sink:
        busy0, started = system_busy_s(), time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
        poller = TreeRssPoller(child.pid)
        poller.start()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
        wall = time.perf_counter() - started
        busy = system_busy_s() - busy0
        poller.stop()
    child.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(child.returncode, usage, wall, busy, poller)


def _git_at(repo: Path) -> str:
    """The commit a checkout made by :func:`checkout_commit` holds."""
    marker = repo / ".baseline-commit"
    return marker.read_text().strip() if marker.exists() else str(repo)


def checkout_commit(ref: str, where: Path) -> Path:
    """A detached git worktree of ``ref`` at ``where`` (removed from git's list when it is made,
    so deleting the folder is all the cleanup it needs); returns its path."""
    add = ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(where), ref]
    subprocess.run(add, check=True)
    commit = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    # Forget it at once: the folder lives in the scratch directory and goes with it.
    (where / ".git").unlink()
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
    (where / ".baseline-commit").write_text(commit + "\n")
    return where


@functools.cache
def model_stage_flags(repo: Path) -> tuple[str, ...]:
    """The flags of ``repo``'s ``runner.py run`` that turn its model stages off
    (``--no-embeddings``, ``--no-moderation``), asked of its ``--help``: an older commit's runner,
    which lacks a stage, lacks its flag too."""
    command = [sys.executable, str(repo / "runner.py"), "run", "--help"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return tuple(flag for flag in ("--no-embeddings", "--no-moderation") if flag in done.stdout)


def run_spine(
    input_path: Path, out_dir: Path, engine_args: tuple[str, ...] = (), repo: Path = REPO
) -> Measurement:
    """Run ``runner.py run --no-progress`` over one file in a child; time it and read its summary.

    Events/s is ``events_read`` over the run's own ``seconds`` (``run_batch`` end to end, from
    its summary); the process wall time, which adds interpreter start and imports, is a detail.
    ``engine_args`` go to Beam after ``--`` (e.g. ``--direct_num_workers=2``). ``repo`` is the
    checkout whose ``runner.py`` runs (another commit's, for a before/after comparison).
    The model stages are turned off (``--no-embeddings``, ``--no-moderation``) where that runner
    has them, so the spine is measured alone; a commit older than a stage has nothing to turn off.
    """
    command = [sys.executable, str(repo / "runner.py"), "run", "--no-progress"]
    command += list(model_stage_flags(repo))
    command += ["--input", str(input_path.resolve()), "--out", str(out_dir.resolve())]
    command += ["--", *engine_args] if engine_args else []
    log = out_dir.with_name(out_dir.name + ".log")
    # The code the child imports: other people may be editing it meanwhile.
    code = git_state() if repo == REPO else {"checkout": str(repo)}
    # From the checkout: Beam starts its worker processes as ``python -m ...``, which import the
    # pipeline's modules from their working directory, so from anywhere else a baseline's workers
    # would run the work tree's code.
    run = run_child(command, log, cwd=repo)
    if run.exit_code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"spine run failed (exit {run.exit_code}): {' '.join(command)}\n{tail}")
    summary = orjson.loads(next((out_dir / "_runs").glob("*.json")).read_bytes())
    cpu = run.usage.ru_utime + run.usage.ru_stime
    options = "".join(f", {flag}" for flag in model_stage_flags(repo))
    options += f", Beam options {' '.join(engine_args)}" if engine_args else ""
    return Measurement(
        name="spine" if repo == REPO else f"spine at {_git_at(repo)}",
        what=f"run_batch via `runner.py run` (DirectRunner, SQLite audit) over {input_path.name}{options}",
        events=summary["events_read"],
        wall_s=summary["seconds"],
        cpu_s=cpu,
        peak_rss_mb=run.memory.peak_hwm_kb / 1024,
        others_cores=others_cores(run.busy_s, cpu, run.wall_s),
        details={
            "process_wall_s": round(run.wall_s, 3),
            "peak_tree_rss_mb_polled": round(run.memory.peak_kb / 1024, 1),
            "peak_tree_pss_mb_polled": round(run.memory.peak_pss_kb / 1024, 1),
            "processes_seen": len(run.memory.hwm_kb),
            # wait4's ru_maxrss can report the *parent's* peak: the child starts by vfork and
            # exec keeps the larger of the old and new high-water marks. Kept for reference.
            "ru_maxrss_mb": round(run.usage.ru_maxrss / 1024, 1),
            "rss_timeline_mb": [(t, round(kb / 1024)) for t, kb in run.memory.timeline],
            "git_at_start": code,
            "summary": {k: summary[k] for k in _SUMMARY_KEYS},
            "command": command,
        },
    )


_SUMMARY_KEYS = (
    "run_id",
    "seconds",
    "events_read",
    "events_processed",
    "events_dead_lettered",
    "duplicates_collapsed",
    "rate_limited",
    "rate_limit_violations",
    "unpriced_events",
    "cost_total",
    "audit_rows_inserted",
    "config",
)
