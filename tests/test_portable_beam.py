"""Beam through the portability framework, the path Flink, Spark and Dataflow take for Python: a
job service and a worker pool in processes of their own, SDK workers talking gRPC, every DoFn and
element serialised. Where the machine allows it (here it does: under CI=true it must), the pool
runs in a network namespace of its own, so that its workers reach the job service and the audit
database only through a veth pair, never through a shared loopback, and work in a temporary
folder of their own. Every output must equal the DirectRunner's on the same input.

The model stages stay off: the DirectRunner alone took 57 s (27 s of CPU) for 200 events with
embeddings and moderation on, here, and each SDK worker loads the models again; the portable
path's model stages are the same DoFns as the spine's, serialised the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from connectors.beam_services import PortableServices, ServiceError, isolation_unavailable
from tests.conftest import (
    ROOT,
    MySQLDatabase,
    drop_database,
    make_database,
    mysql_admin,
    read_dataset,
    run_cli_in_process,
    run_pipeline,
    service_missing,
)

#: Counts of the summary that do not depend on the runner.
RUN_COUNTS = (
    "events_read",
    "events_processed",
    "events_dead_lettered",
    "duplicates_collapsed",
    "rate_limited",
    "unpriced_events",
    "cost_total",
    "rate_limit_violations",
    "audit_rows_inserted",
    "blank_lines",
    "dead_letters_by_reason",
    "inputs",
    "inputs_fingerprint",
    "config",
)
#: Audit columns that differ from one run to the next whatever the runner: the row's number (in
#: the order of the inserts, which two workers interleave) and when it was written.
PER_RUN_COLUMNS = {"id", "created_at"}


def _isolate() -> bool:
    """Whether the worker pool gets a network namespace: where the machine allows it; under
    CI=true it must."""
    reason = isolation_unavailable()
    if reason and os.environ.get("CI") == "true":
        pytest.fail(f"the worker pool needs its own network namespace under CI=true: {reason}")
    return reason is None


@contextlib.contextmanager
def _private_mariadb(workdir: Path, address: str) -> Iterator[tuple[str, int]]:
    """A MariaDB server of this test's own, listening on ``address`` only (the veth's end on this
    side: the shared server listens on the loopback, which the namespace's workers cannot reach).
    Its root may connect from anywhere, without a password; it is this server's alone."""
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        service_missing("the isolated workers need a MariaDB server of their own: mariadbd is not installed")
    data = workdir / "mariadb"
    install = subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root"],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    init = workdir / "mariadb-init.sql"
    init.write_text("CREATE USER 'root'@'%';\nGRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n")
    import socket

    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    log = (workdir / "mariadb.log").open("wb")
    server = subprocess.Popen(
        [
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--port={port}", f"--bind-address={address}",
            f"--socket={data / 'mariadb.sock'}", "--user=root", "--skip-name-resolve", "--skip-log-bin",
            f"--init-file={init}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import tenacity

        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(0.2), reraise=True
        ):
            with attempt:
                assert server.poll() is None, (workdir / "mariadb.log").read_text()
                mysql_admin(address, port).close()
        yield address, port
    finally:
        server.terminate()
        server.wait(30)
        log.close()
        shutil.rmtree(data)  # 100 MB of system tables


@contextlib.contextmanager
def _audit_databases(workdir: Path, services: PortableServices) -> Iterator[tuple[MySQLDatabase, ...]]:
    """Two fresh databases, one per runner, on a server the pool's workers reach: a private one on
    the veth when the pool is isolated, the shared one otherwise."""
    with contextlib.ExitStack() as stack:
        if services.namespace:
            host, port = stack.enter_context(_private_mariadb(workdir, services.host_address))
        else:
            host, port = "127.0.0.1", 3306
        databases = []
        for _ in range(2):
            db = make_database(host, port)
            stack.callback(drop_database, db)
            db.query(f"GRANT ALL PRIVILEGES ON `{db.name}`.* TO '{db.user}'@'%'")
            databases.append(db)
        yield tuple(databases)


def _run_on_a_terminal(*args: str | Path, timeout_s: float = 240) -> tuple[int, bytes, str]:
    """``runner.py run ARGS`` with its stderr on a terminal (as a user sees it); exit status, what
    the terminal showed, stdout. Killed after ``timeout_s``: a worker that cannot reach the job
    service would otherwise wait for gRPC's deadline, five minutes."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "runner.py"), "run", *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
    )
    os.close(follower)
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    terminal = b""
    try:
        with contextlib.suppress(OSError):  # EIO: the run closed the terminal
            while chunk := os.read(leader, 4096):
                terminal += chunk
        stdout, _ = proc.communicate(timeout=timeout_s)
    finally:
        watchdog.cancel()
        os.close(leader)
    return proc.returncode, terminal, stdout.decode()


def _audit_rows(db: MySQLDatabase) -> list[dict[str, Any]]:
    con = mysql_admin(db.host, db.port, db.name)
    try:
        with con.cursor() as cur:
            cur.execute("SELECT * FROM ai_audit_trail ORDER BY event_id")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()
    return [{k: v for k, v in row.items() if k not in PER_RUN_COLUMNS} for row in rows]


def _datasets(out: Path) -> dict[str, Any]:
    return {
        "files": sorted(str(p.relative_to(out)) for p in out.glob("*/dt=*/*.parquet")),
        "events": read_dataset(out, "events", "event_id"),
        "dead_letter": read_dataset(out, "dead_letter", "source, line_no, position"),
        "rate_limit_violations": read_dataset(out, "rate_limit_violations", "user_id, window_start"),
    }


@pytest.mark.slow
def test_the_job_service_and_two_sdk_workers_give_the_direct_runners_outputs(tmp_path: Path) -> None:
    from loadgen.generate import generate_events

    source = tmp_path / "in" / "events.jsonl"
    generate_events(200, source, seed=18, dup_rate=0.1, bad_rate=0.05, images=True)
    with contextlib.ExitStack() as stack:
        services = stack.enter_context(PortableServices.start(tmp_path / "services", isolate=_isolate()))
        direct_db, portable_db = stack.enter_context(_audit_databases(tmp_path, services))
        direct = run_pipeline([source], tmp_path / "direct", "--audit-db", direct_db.url()).summary()

        out = tmp_path / "portable"
        code, terminal, stdout = _run_on_a_terminal(
            "--input", source, "--out", out, "--audit-db", portable_db.url(), "--no-embeddings",
            "--no-moderation", "--", *services.beam_args(sdk_workers=2),
        )  # fmt: skip
        shown = terminal.decode(errors="replace")
        assert code == 0, shown[-3000:]  # the bar redraws its line five times a second
        if services.namespace:  # its workers cannot reach this side's loopback
            probe = "import socket; socket.create_connection(('127.0.0.1', 3306), timeout=5)"
            reached = subprocess.run(
                services.namespace.command([sys.executable, "-c", probe]), capture_output=True, text=True
            )
            assert reached.returncode != 0 and "Connection refused" in reached.stderr
        assert services.sdk_workers_started() == 2
        service_logs = [p.read_text(errors="replace") for p in (tmp_path / "services").glob("*.log")]
        audit_rows = _audit_rows(portable_db), _audit_rows(direct_db)

    assert (
        services.namespace is None
        or services.namespace.name
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    with pytest.raises(ProcessLookupError):
        os.kill(services.pool_pid, 0)

    portable = sorted((out / "_runs").glob("*.json"))[-1].read_text()
    summary = json.loads(portable)
    assert {k: summary[k] for k in RUN_COUNTS} == {k: direct[k] for k in RUN_COUNTS}
    assert (
        summary["events_processed"] > 0
        and summary["rate_limited"] > 0
        and summary["events_dead_lettered"] > 0
    )
    assert summary["engine_args"] == services.beam_args(sdk_workers=2)
    assert _datasets(out) == _datasets(tmp_path / "direct")
    assert audit_rows[0] == audit_rows[1] and len(audit_rows[1]) == direct["events_processed"]
    # The run said where its spill files go; the bar showed time, never a count it cannot know.
    staging = out / "_staging" / summary["run_id"] / "spill"
    assert f"they spill batches under {staging}" in shown
    assert "running: " in shown and "reading:" not in shown
    assert "finished in" in stdout and not (out / "_staging").exists()
    secrets = (portable_db.password, quote(portable_db.password, safe=""))
    assert not [s for s in secrets for text in [shown, stdout, portable, *service_logs] if s in text]


def test_services_that_do_not_answer_in_time_fail_in_one_line_and_are_stopped(tmp_path: Path) -> None:
    isolate = _isolate()
    with pytest.raises(ServiceError) as failed:
        PortableServices.start(tmp_path, isolate=isolate, timeout_s=0.01)
    message = str(failed.value)
    assert "\n" not in message and "did not answer on" in message and str(tmp_path) in message
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout if isolate else ""
    assert f"aiep-{os.getpid()}-" not in listed
    assert _processes_working_in(tmp_path) == []


def _processes_working_in(folder: Path) -> list[int]:
    """The processes whose working directory is ``folder`` or below it (the services' are)."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "runner",
    ["DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"],
)
def test_the_dask_runner_is_refused_in_one_line(runner: str, tmp_path: Path) -> None:
    result = run_cli_in_process(
        "run", "--input", tmp_path / "x.jsonl", "--out", tmp_path / "out", "--", "--runner", runner
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "tagged outputs" in result.stderr and runner in result.stderr
    assert not (tmp_path / "out").exists()
