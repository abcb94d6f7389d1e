"""MySQL/MariaDB outages in the middle of a run: a connection killed by the server, and the server
itself stopped and started again.

The guarantee under test, for both: the run either survives (its retry policy carries the audit
batches through) or fails loudly (exit 1, one line on stderr saying what failed, no traceback);
and a rerun of the same input leaves every processed event in ``ai_audit_trail`` exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pymysql
import pytest

from tests.conftest import (
    ROOT,
    MySQLDatabase,
    mysql_admin,
    read_dataset,
    run_cli,
    run_pipeline,
    service_missing,
)

pytestmark = pytest.mark.slow

#: Enough events that the audit sink is still writing when the outage comes.
N_EVENTS = 15_000
#: Small transactions: the audit sink commits ~150 batches, so an outage lands between and inside them.
AUDIT_BATCH_ROWS = 100
#: How long the test keeps killing the pipeline's connections, at most.
KILL_WINDOW_SECONDS = 60.0
#: How long the test waits for one run to end.
RUN_TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class Workload:
    """A generated input file, the number of events a run processes from it, and a run config."""

    input: Path
    valid_unique: int
    config: Path


@dataclass(frozen=True)
class RunOutcome:
    """How a ``runner.py run`` process ended."""

    returncode: int
    stderr: str

    def assert_survived_or_failed_loudly(self) -> None:
        """Exit 0, or exit 1 with one last ``error:`` line naming the database error, no traceback."""
        if self.returncode == 0:
            return
        assert self.returncode == 1, f"exit {self.returncode}, expected 0 or 1:\n{self.stderr}"
        assert "Traceback" not in self.stderr, f"a failed run printed a traceback:\n{self.stderr}"
        errors = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"expected one error line, got {len(errors)}:\n{self.stderr}"
        assert self.stderr.rstrip().splitlines()[-1] == errors[0], f"error is not last:\n{self.stderr}"
        # What failed is the database: the line names its error and code, e.g. "OperationalError (2013)".
        assert re.search(r"\w+Error \(\d+\) \S", errors[0]), f"does not say what failed: {errors[0]}"


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """``N_EVENTS`` generated lines and a config with ``audit_batch_rows = AUDIT_BATCH_ROWS``."""
    folder = tmp_path_factory.mktemp("outage_load")
    events = folder / "events.jsonl"
    generated = run_cli("generate", "--events", str(N_EVENTS), "--out", events, "--seed", "11")
    assert generated.returncode == 0, generated.stderr
    manifest = json.loads(Path(f"{events}.manifest.json").read_text())
    config = folder / "small_audit_batches.toml"
    config.write_text(f"[pipeline]\naudit_batch_rows = {AUDIT_BATCH_ROWS}\n")
    return Workload(events, manifest["valid_unique"], config)


def run_args(load: Workload, audit_url: str) -> list[str]:
    """The options of ``runner.py run`` after ``--input`` and ``--out``: audit store and config."""
    return [
        "--audit-db",
        audit_url,
        "--config",
        str(load.config),
        "--no-progress",
        "--no-embeddings",
        "--no-moderation",
    ]


@contextmanager
def started_run(
    load: Workload, out: Path, audit_url: str, log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``runner.py run`` in the background, its stderr in ``log_dir/stderr``; killed if left running."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stdout").open("wb") as stdout, (log_dir / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "runner.py"),
                "run",
                "--input",
                str(load.input),
                "--out",
                str(out),
                *run_args(load, audit_url),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish_run(proc: subprocess.Popen[bytes], log_dir: Path) -> RunOutcome:
    """Wait for a run started by ``started_run`` and read how it ended."""
    try:
        returncode = proc.wait(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the run did not end within {RUN_TIMEOUT_SECONDS:.0f}s")
    return RunOutcome(returncode, (log_dir / "stderr").read_text(errors="replace"))


def upgrade_schema(root_url: str) -> None:
    """``runner.py db upgrade``: the migrations, applied by an administrator before any run."""
    upgraded = run_cli("db", "upgrade", "--audit-db", root_url)
    assert upgraded.returncode == 0, upgraded.stderr


def audit_counts(connect: pymysql.Connection) -> tuple[int, int]:
    """``count(*)`` and ``count(DISTINCT event_id)`` of ``ai_audit_trail``."""
    with connect.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT event_id) FROM ai_audit_trail")
        total, distinct = cur.fetchone()
    return int(total), int(distinct)


def assert_every_event_audited_once(connect: pymysql.Connection, load: Workload, out: Path) -> None:
    """The audit trail holds exactly the events of the run's Parquet output, each once."""
    assert audit_counts(connect) == (load.valid_unique, load.valid_unique)
    with connect.cursor() as cur:
        cur.execute("SELECT event_id FROM ai_audit_trail")
        audited = {row[0] for row in cur.fetchall()}
    assert audited == {row["event_id"] for row in read_dataset(out, "events", "event_id")}


# --- a killed connection -----------------------------------------------------------------------


def kill_pipeline_connections(db: MySQLDatabase, proc: subprocess.Popen[bytes]) -> list[tuple[int, str]]:
    """``KILL`` every connection of ``db.user`` on ``db.name`` while ``proc`` runs, every 50 ms.

    Starts once the first audit rows are committed (the run is then mid-write) and stops when the
    run ends or after ``KILL_WINDOW_SECONDS``. Returns the (id, command) of each connection killed.
    """
    killed: list[tuple[int, str]] = []
    admin = mysql_admin(db.host, db.port, db.name)
    deadline = time.monotonic() + KILL_WINDOW_SECONDS
    try:
        while proc.poll() is None and audit_counts(admin)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        while proc.poll() is None and time.monotonic() < deadline:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT id, command FROM information_schema.processlist WHERE user = %s AND db = %s",
                    (db.user, db.name),
                )
                for connection_id, command in cur.fetchall():
                    try:
                        cur.execute(f"KILL CONNECTION {int(connection_id)}")
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] != 1094:  # unknown thread id: it closed on its own meanwhile
                            raise
                    else:
                        killed.append((int(connection_id), command))
            time.sleep(0.05)
    finally:
        admin.close()
    return killed


def test_killed_connection_mid_run_leaves_each_event_once(
    mysql_db: MySQLDatabase, workload: Workload, tmp_path: Path
) -> None:
    upgrade_schema(mysql_db.root_url)
    mysql_db.grant_pipeline_privileges()
    out = tmp_path / "out"

    with started_run(workload, out, mysql_db.url(), tmp_path / "first") as proc:
        killed = kill_pipeline_connections(mysql_db, proc)
        first = finish_run(proc, tmp_path / "first")

    assert killed, "no connection of the pipeline was killed: the run ended before the test could"
    first.assert_survived_or_failed_loudly()
    admin = mysql_admin(mysql_db.host, mysql_db.port, mysql_db.name)
    try:
        if first.returncode == 0:  # a run that says it finished has audited everything already
            assert audit_counts(admin) == (workload.valid_unique, workload.valid_unique)
        run_pipeline([workload.input], out, *run_args(workload, mysql_db.url()))
        assert_every_event_audited_once(admin, workload, out)
    finally:
        admin.close()


# --- a server restart --------------------------------------------------------------------------


def mariadb_program(name: str) -> str:
    """The path of a MariaDB program; fails under ``CI=true`` when it is missing, else skips."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = f"{name} is not installed (apt-get install mariadb-server); it starts a private server"
        service_missing(message)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateMariaDB:
    """A MariaDB server of this test's own, which the test may stop and start at will."""

    datadir: Path
    port: int
    server: str
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start ``mariadbd`` on the data directory and wait until it answers root."""
        log = self.datadir.parent / "mariadbd.log"
        with log.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    self.server,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.datadir / 's.sock'}",
                    f"--pid-file={self.datadir / 'mariadbd.pid'}",
                    "--user=root",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                mysql_admin(port=self.port).close()
                return
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != 2003 or self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mariadbd did not start: see {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (SIGTERM: a clean shutdown) and wait for it; kill it if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_for_first_audit_rows(port: int, database: str, proc: subprocess.Popen[bytes]) -> None:
    """Return once ``ai_audit_trail`` has rows (the run is mid-write) or the run has ended."""
    watcher = mysql_admin(port=port, database=database)
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    try:
        while proc.poll() is None and audit_counts(watcher)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.close()


@pytest.fixture
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariaDB]:
    """A fresh MariaDB server on a free port, with its own data directory; stopped after the test."""
    install_db, server = mariadb_program("mariadb-install-db"), mariadb_program("mariadbd")
    datadir = tmp_path_factory.mktemp("private_mariadb") / "data"
    installed = subprocess.run(
        [
            install_db,
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",  # root@localhost, empty password, over TCP too
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    mariadb = PrivateMariaDB(datadir, free_port(), server)
    try:
        mariadb.start()
        yield mariadb
    finally:
        mariadb.stop()


def test_server_restart_mid_run_leaves_each_event_once(
    private_mariadb: PrivateMariaDB, workload: Workload, tmp_path: Path
) -> None:
    database, user, password = "governance", "aiep", "p@ss:w/rd%1"
    admin = mysql_admin(port=private_mariadb.port)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
    admin.close()
    host = f"127.0.0.1:{private_mariadb.port}"
    upgrade_schema(f"mysql+pymysql://root@{host}/{database}")
    audit_url = f"mysql+pymysql://{user}:{quote(password, safe='')}@{host}/{database}"
    out = tmp_path / "out"

    with started_run(workload, out, audit_url, tmp_path / "first") as proc:
        wait_for_first_audit_rows(private_mariadb.port, database, proc)
        restarted_mid_run = proc.poll() is None
        private_mariadb.stop()
        time.sleep(2)
        private_mariadb.start()
        first = finish_run(proc, tmp_path / "first")

    assert restarted_mid_run, "the run ended before the server was stopped"
    first.assert_survived_or_failed_loudly()
    admin = mysql_admin(port=private_mariadb.port, database=database)
    try:
        if first.returncode == 0:  # a run that says it finished has audited everything already
            assert audit_counts(admin) == (workload.valid_unique, workload.valid_unique)
        run_pipeline([workload.input], out, *run_args(workload, audit_url))
        assert_every_event_audited_once(admin, workload, out)
    finally:
        admin.close()
