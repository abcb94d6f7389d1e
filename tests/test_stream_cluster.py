"""The stream job as a Bytewax cluster: 2 local processes of 2 workers each, talking TCP.

- From a Redis stream into MariaDB and Parquet, and from a file into SQLite and Parquet, the
  cluster writes what one worker writes, and its summary (written by process 0) counts the same.
- kill -9 of one process mid-run fails the whole cluster: the runner exits 1 with one line and
  leaves no process behind; the same command resumes from the recovery store, and nothing is lost
  or doubled.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, MySQLDatabase, drop_database, make_database, run_cli, run_cli_in_process
from tests.test_stream import (
    audit_rows,
    free_port,
    rows,
    run_sqlite,
    scrape,
    stream_args,
    stream_name,  # noqa: F401 (a fixture)
    stream_summary,
)

pytestmark = pytest.mark.slow

EVENTS = 300
#: Small batches and 1 s epochs: the input spans many batches and snapshots. The default lateness
#: (5 minutes) on an input out of order by hours: windows close and events arrive late as it runs.
#: Four user shards (each writes its files per call): Bytewax routes one of them to process 1.
CONFIG = "[stream]\nsnapshot_seconds = 1\nstatus_seconds = 1\n[pipeline]\nbatch_size = 20\nshards = 4\n"
CLUSTER = ("--processes", "2", "--workers", "2")
#: Counts two runs of one input agree on, whatever ran them.
COUNTS = (
    "events_read",
    "events_processed",
    "events_dead_lettered",
    "duplicates_collapsed",
    "late_events",
    "events_in_windows_change",
    "rate_limited",
    "rate_limit_violations",
    "audit_rows_inserted",
    "dead_letters_by_reason",
    "cost_total",
)
#: Datasets compared row for row, and the order they are sorted in.
DATASETS = (
    ("events", "event_id"),
    ("late_events", "event_id, aggregate"),
    ("rate_limit_violations", "user_id, window_start"),
    ("dead_letter", "reason, event_id, raw"),
)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cluster")
    events = folder / "events.jsonl"
    generated = run_cli("generate", "--events", EVENTS, "--out", events, "--seed", 18)
    assert generated.returncode == 0, generated.stderr
    config = folder / "config.toml"
    config.write_text(CONFIG)
    return {"folder": folder, "events": events, "config": config}


@pytest.fixture(scope="module")
def reference(
    workload: dict[str, Path], redis_server: tuple[str, int], mysql_server: tuple[str, int]
) -> Iterator[dict[str, Any]]:
    """The input published to a stream and read by one worker into MariaDB and Parquet."""
    import redis

    stream = f"aiep-cluster-{os.getpid()}-{time.time_ns() % 10**9:x}"
    db = make_database(*mysql_server)
    try:
        publish(workload["events"], stream)
        out = workload["folder"] / "one-worker"
        args = stream_args(
            stream, "one", out, "--until-end", "--audit-db", db.root_url, "--config", workload["config"],
            image_root=workload["folder"],
        )  # fmt: skip
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        yield {"stream": stream, "db": db, "out": out, "summary": stream_summary(out)}
    finally:
        drop_database(db)
        client = redis.Redis(*redis_server)
        client.delete(stream)
        client.close()


def publish(source: Path, stream: str) -> None:
    """XADD each line of ``source`` to ``stream``, in this process (a runner would take seconds)."""
    from connectors.redis_stream import StreamAddress, file_lines
    from connectors.redis_stream import publish as xadd

    xadd(StreamAddress.parse(f"redis://127.0.0.1:6379/0?stream={stream}"), file_lines(source))


def same_counts(summary: dict[str, Any], expected: dict[str, Any]) -> None:
    assert {k: summary[k] for k in COUNTS} == {k: expected[k] for k in COUNTS}


def cluster_pids(stderr: str) -> list[int]:
    """The pids the runner says it started its processes with."""
    return [int(pid) for pid in re.findall(r"stream cluster: process \d+ of \d+ \(pid (\d+)\)", stderr)]


def test_two_processes_of_two_workers_read_a_stream_as_one_worker_does(
    workload: dict[str, Path], reference: dict[str, Any], mysql_server: tuple[str, int], tmp_path: Path
) -> None:
    db = make_database(*mysql_server)
    try:
        out = tmp_path / "cluster"
        args = stream_args(
            reference["stream"], "cluster", out, "--until-end", "--audit-db", db.root_url,
            "--config", workload["config"], *CLUSTER, image_root=workload["folder"],
        )  # fmt: skip
        done = run_cli(*args)
        assert done.returncode == 0, done.stderr
        assert len(cluster_pids(done.stderr)) == 2

        summary = json.loads(done.stdout)  # process 0's, printed by the runner that started it
        assert summary == stream_summary(out)
        assert (summary["processes"], summary["workers"]) == (2, 2)
        same_counts(summary, reference["summary"])
        assert summary["entries_acknowledged"] == EVENTS
        assert summary["events_read"] == EVENTS and summary["late_events"] > 0

        assert audit_rows(db) == audit_rows(reference["db"])
        for dataset, order in DATASETS:
            assert rows(out, dataset, order) == rows(reference["out"], dataset, order), dataset
    finally:
        drop_database(db)


def test_two_processes_joined_by_their_addresses_read_a_file_as_one_worker_does(
    workload: dict[str, Path], tmp_path: Path
) -> None:
    # Two commands, as on two machines: each its own --process-id, both every process's address.
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    args = ["run", "--engine", "bytewax", "--input", workload["events"], "--config", workload["config"]]
    done = run_cli(*args, "--out", one)
    assert done.returncode == 0, done.stderr
    expected = json.loads(done.stdout)

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    joined = [*args, "--out", cluster, "--workers", "2", "--addresses", addresses]
    argv = [sys.executable, str(ROOT / "runner.py"), *map(str, joined), "--no-embeddings", "--no-moderation"]
    # Process 1's output goes to files: read after process 0's, a full pipe would stall it.
    with (tmp_path / "out1").open("w+b") as out_file, (tmp_path / "err1").open("w+b") as err_file:
        second = subprocess.Popen([*argv, "--process-id", "1"], cwd=ROOT, stdout=out_file, stderr=err_file)
        first = subprocess.Popen(
            [*argv, "--process-id", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        (out0, err0), _ = first.communicate(timeout=300), second.wait(timeout=300)
    out1, err1 = (tmp_path / "out1").read_bytes(), (tmp_path / "err1").read_bytes()
    assert (first.returncode, second.returncode) == (0, 0), (err0.decode(), err1.decode())
    assert out1 == b"" and "process 0 wrote the summary" in err1.decode()
    summary = json.loads(out0)  # process 0's: the whole cluster's counts
    assert (summary["processes"], summary["workers"]) == (2, 2)
    same_counts(summary, expected)
    assert summary["events_read"] == EVENTS and summary["events_in_windows_change"] == 0
    # Four workers in two processes wrote the one SQLite audit store.
    assert run_sqlite(cluster / "audit.sqlite") == run_sqlite(one / "audit.sqlite")
    for dataset, order in DATASETS:
        assert rows(cluster, dataset, order) == rows(one, dataset, order), dataset


def test_a_killed_process_stops_the_cluster_and_a_restart_loses_and_doubles_nothing(
    workload: dict[str, Path],
    reference: dict[str, Any],
    mysql_server: tuple[str, int],
    stream_name: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    lines = workload["events"].read_bytes().splitlines(keepends=True)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(lines[: EVENTS // 2]))
    second.write_bytes(b"".join(lines[EVENTS // 2 :]))
    db: MySQLDatabase = make_database(*mysql_server)
    try:
        out = tmp_path / "killed"
        common = stream_args(
            stream_name, "killed", out, "--audit-db", db.root_url, "--config", workload["config"],
            "--no-embeddings", "--no-moderation", image_root=workload["folder"],
        )  # fmt: skip
        args = [*common, *CLUSTER]
        publish(first, stream_name)
        proc, port, log = start(args, tmp_path / "killed.log")
        try:
            # The first half read, and the counts still for two seconds: a snapshot holds it.
            half = lambda m, last: m.get("aiep_events_in_total") == EVENTS // 2 and m == last  # noqa: E731
            metrics = wait_for(port, proc, half, log)
            wait_for(port, proc, lambda m, last: m == metrics, log)
            publish(second, stream_name)
            # Mid-run: the second half is being read when process 1 (two of the workers) dies.
            reading = lambda m, last: m.get("aiep_events_in_total", 0) > EVENTS // 2  # noqa: E731
            wait_for(port, proc, reading, log, poll=0.02)
            pids = cluster_pids(log.read_text())
            os.kill(pids[1], signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        stderr = log.read_text()
        assert proc.returncode == 1, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert errors == [stderr.splitlines()[-1]], stderr
        assert "process 1 was killed by SIGKILL" in errors[0] and "the others were stopped" in errors[0]
        for pid in pids:  # every process of the cluster is gone, reaped: none left behind
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not list((out / "_runs").glob("*.stream.json"))  # no summary from a failed cluster

        # The same command resumes; once it is idle, SIGTERM to the runner drains every process.
        proc, port, log = start(args, tmp_path / "resumed.log")
        try:
            idle = lambda m, last: m.get("aiep_source_lag_entries") == 0 and m == last  # noqa: E731
            wait_for(port, proc, idle, log)
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, log.read_text()
        drained = json.loads(stdout)
        assert drained["ended_by"] == "sigterm" and drained["processes"] == 2
        assert re.search(r"^stream +\d+s: read ", log.read_text(), re.MULTILINE)  # process 0's status
        # Rescaled: one process of three workers takes the state over, to the end of the stream.
        finished = run_cli(*common, "--workers", "3", "--until-end")
        assert finished.returncode == 0, finished.stderr
        assert (json.loads(finished.stdout)["processes"], json.loads(finished.stdout)["workers"]) == (1, 3)
        # Resumed from snapshots that hold the first half: at most the second is read again.
        assert drained["events_read"] + json.loads(finished.stdout)["events_read"] <= EVENTS - EVENTS // 2

        ids = db.query("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM ai_audit_trail")[0]
        assert ids[0] == ids[1] == reference["summary"]["events_processed"]
        assert audit_rows(db) == audit_rows(reference["db"])
        positions = ("source", "line_no", "position", "detail")  # entry ids: another stream's
        for dataset, order in DATASETS:
            assert rows(out, dataset, order, positions) == rows(
                reference["out"], dataset, order, positions
            ), dataset
        assert not list(out.glob("*/dt=*/.part-*.tmp")), "a temporary file was left behind"
    finally:
        drop_database(db)


def start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``runner.py`` with ``args`` and a metrics port, its stderr into ``log``."""
    port = free_port()
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "runner.py"), *args, "--metrics-port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    return proc, port, log


def wait_for(
    port: int, proc: subprocess.Popen[bytes], done: Any, log: Path, poll: float = 1.0
) -> dict[str, float]:
    """Scrape process 0's metrics every ``poll`` seconds until ``done(metrics, last)``."""
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        time.sleep(poll)
        assert proc.poll() is None, log.read_text()
        metrics = scrape(port)
        if metrics and done(metrics, last):
            return metrics
        last = metrics
    raise AssertionError(f"waited in vain; metrics: {last}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "2", "--process-id", "0", "--addresses", "h:1;h:2"], "not both"),
        (["--process-id", "0"], "--process-id and --addresses go together"),
        (["--addresses", "h:1;h:2"], "--process-id and --addresses go together"),
        (["--process-id", "2", "--addresses", "h:1;h:2"], "--process-id must be 0 to 1 for 2 addresses"),
        (["--process-id", "0", "--addresses", "h:1;h"], "'h' is not HOST:PORT"),
        (["--process-id", "0", "--addresses", "h:1;h:70000"], "'h:70000' is not HOST:PORT"),
        (["--process-id", "1", "--addresses", "h:1;h:1"], "'h:1' is given twice"),
        (["--processes", "0"], "--processes must be 1 to 64"),
    ],
)
def test_bad_cluster_flags_are_refused_in_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    done = run_cli_in_process(
        "run", "--engine", "bytewax", "--input", "x.jsonl", "--out", tmp_path / "out", *argv
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_stdin_and_beam_refuse_a_cluster(tmp_path: Path) -> None:
    stdin = run_cli_in_process(
        "run", "--engine", "bytewax", "--input", "-", "--out", tmp_path, "--processes", "2"
    )
    assert stdin.returncode == 2 and "stdin ('-') is read by one process" in stdin.stderr
    beam = run_cli_in_process("run", "--input", "x.jsonl", "--out", tmp_path, "--processes", "2")
    assert beam.returncode == 2 and "--processes is for --engine bytewax" in beam.stderr
