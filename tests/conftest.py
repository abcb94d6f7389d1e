"""Shared fixtures: run the pipeline the way users do, and read its outputs back independently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class CliResult:
    """What a ``runner.py`` process did: exit code, output, and the run summary if one was written."""

    returncode: int
    stdout: str
    stderr: str
    out_dir: Path | None

    def summary(self) -> dict[str, Any]:
        assert self.out_dir is not None
        runs = sorted((self.out_dir / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
        assert runs, f"no run summary in {self.out_dir}; stderr:\n{self.stderr}"
        return json.loads(runs[-1].read_text())


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    out_dir: Path | None = None,
    embeddings: bool = False,
    moderation: bool = False,
) -> CliResult:
    """Run ``runner.py`` in a fresh process, exactly as a user would.

    A ``run`` skips the embedding stage (``--no-embeddings``) unless ``embeddings=True``, and
    moderation (``--no-moderation``) unless ``moderation=True``: most tests are about other
    stages, and loading the models costs seconds.
    """
    argv = [str(arg) for arg in args]
    for flag, wanted in (("--no-embeddings", embeddings), ("--no-moderation", moderation)):
        if argv[:1] == ["run"] and not wanted and flag not in argv:
            argv.insert(argv.index("--") if "--" in argv else len(argv), flag)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), *argv],
        cwd=cwd or ROOT,
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), out_dir)


def run_cli_in_process(*args: str | Path) -> CliResult:
    """``runner.main(args)`` in this process, its output captured: for the commands that only read
    outputs (``sql``, ``report``, ``dashboard``), whose process start-up would cost more than their
    work. Exit codes, argparse's errors included, are returned as a subprocess's would be."""
    import contextlib
    import io

    import runner

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = runner.main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse: --help, bad flags
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue(), None)


def run_pipeline(
    inputs: list[Path | str],
    out_dir: Path,
    *extra: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    embeddings: bool = False,
    moderation: bool = False,
) -> CliResult:
    """``runner.py run --input ... --out out_dir extra...``; fails the test unless it exits 0."""
    result = run_cli(
        "run",
        "--input",
        *inputs,
        "--out",
        out_dir,
        *extra,
        cwd=cwd,
        stdin=stdin,
        env=env,
        out_dir=out_dir,
        embeddings=embeddings,
        moderation=moderation,
    )
    assert result.returncode == 0, f"run failed ({result.returncode}):\n{result.stderr}"
    return result


#: A ``sitecustomize`` that lets a child process reach local sockets only, and logs what it blocked.
NETWORK_GUARD = """
import os, socket
LOG = os.environ["AIEP_TEST_NETWORK_LOG"]
open(LOG, "a").write("guard installed\\n")
LOCAL = ("127.0.0.1", "::1", "localhost")
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
        open(LOG, "a").write(f"blocked connect {address!r}\\n")
        raise OSError(f"network blocked by the test: {address!r}")
    return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL and host is not None:
        open(LOG, "a").write(f"blocked lookup {host!r}\\n")
        raise socket.gaierror(f"network blocked by the test: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""


def offline_env(base: Path) -> dict[str, str]:
    """The environment of a child process that can reach no non-local address (the guard logs to
    ``env["AIEP_TEST_NETWORK_LOG"]``), with ``HF_HUB_OFFLINE`` unset: models must load anyway."""
    guard = base / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    return {
        "PYTHONPATH": str(guard),
        "AIEP_TEST_NETWORK_LOG": str(base / "network.log"),
        "HF_HUB_OFFLINE": "0",
    }


def read_dataset(out_dir: Path, dataset: str, order_by: str) -> list[dict[str, Any]]:
    """Every row of a Parquet dataset, read by DuckDB with Hive partitioning (``dt`` included)."""
    files = list((out_dir / dataset).glob("dt=*/*.parquet"))
    if not files:
        return []
    pattern = str(out_dir / dataset / "dt=*" / "*.parquet")
    con = duckdb.connect()
    cur = con.execute(
        f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true) ORDER BY {order_by}"
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A small real PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def service_missing(message: str) -> NoReturn:
    """A service an integration test needs is missing: under ``CI=true`` the test fails (CI must
    run every integration test); on a developer's machine it skips with ``message``."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --- MySQL / MariaDB -------------------------------------------------------------------------
MYSQL_HOST, MYSQL_PORT = "127.0.0.1", 3306
START_HINT = "start it with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`"


def mysql_admin(host: str = MYSQL_HOST, port: int = MYSQL_PORT, database: str | None = None) -> Any:
    """A root connection to a MariaDB/MySQL server (autocommit)."""
    import pymysql

    return pymysql.connect(
        host=host, port=port, user="root", password="", database=database, autocommit=True, charset="utf8mb4"
    )


@pytest.fixture(scope="session")
def mysql_server() -> tuple[str, int]:
    """The shared MariaDB on 127.0.0.1:3306. Under CI=true a missing server fails; locally it skips."""
    import pymysql

    try:
        mysql_admin().close()
    except pymysql.err.OperationalError as exc:
        message = f"MariaDB is not answering on {MYSQL_HOST}:{MYSQL_PORT} ({exc.args[1]}); {START_HINT}"
        service_missing(message)
    return MYSQL_HOST, MYSQL_PORT


@dataclass
class MySQLDatabase:
    """A throwaway database and a least-privilege-ready user with an awkward password."""

    name: str
    user: str
    password: str
    host: str
    port: int

    @property
    def root_url(self) -> str:
        return f"mysql+pymysql://root@{self.host}:{self.port}/{self.name}"

    def url(self, with_password: bool = True) -> str:
        from urllib.parse import quote

        secret = f":{quote(self.password, safe='')}" if with_password else ""
        return f"mysql+pymysql://{self.user}{secret}@{self.host}:{self.port}/{self.name}"

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        con = mysql_admin(self.host, self.port, self.name)
        try:
            with con.cursor() as cur:
                cur.execute(sql, params or None)
                return list(cur.fetchall())
        finally:
            con.close()

    def grant_pipeline_privileges(self) -> None:
        """The least-privilege grants the README documents for running the pipeline."""
        for sql in (
            f"GRANT SELECT ON `{self.name}`.`users` TO '{self.user}'@'%'",
            f"GRANT SELECT ON `{self.name}`.`alembic_version` TO '{self.user}'@'%'",
            f"GRANT SELECT, INSERT, UPDATE ON `{self.name}`.`ai_audit_trail` TO '{self.user}'@'%'",
            f"GRANT SELECT, INSERT, UPDATE ON `{self.name}`.`moderation_decisions` TO '{self.user}'@'%'",
        ):
            self.query(sql)


def make_database(host: str, port: int) -> MySQLDatabase:
    import secrets

    token = secrets.token_hex(4)
    db = MySQLDatabase(f"aiep_test_{token}", f"aiep_{token}", f"p@ss:w/rd%{token}", host, port)
    con = mysql_admin(host, port)
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{db.user}'@'%%' IDENTIFIED BY %s", (db.password,))
    con.close()
    return db


def drop_database(db: MySQLDatabase) -> None:
    con = mysql_admin(db.host, db.port)
    with con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db.name}`")
        cur.execute(f"DROP USER IF EXISTS '{db.user}'@'%'")
    con.close()


@pytest.fixture
def mysql_db(mysql_server: tuple[str, int]) -> Any:
    """A fresh database (random name) and user on the shared server, dropped after the test."""
    db = make_database(*mysql_server)
    try:
        yield db
    finally:
        drop_database(db)


@pytest.fixture(params=["sqlite", "mariadb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty audit store's URL: an embedded SQLite file, then a fresh MariaDB database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return str(request.getfixturevalue("mysql_db").root_url)


# --- Redis -----------------------------------------------------------------------------------
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_START_HINT = (
    "start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no`"
)


@pytest.fixture(scope="session")
def redis_server() -> tuple[str, int]:
    """The shared Redis on 127.0.0.1:6379. Under CI=true a missing server fails; locally it skips."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT} ({exc}); {REDIS_START_HINT}"
        service_missing(message)
    finally:
        client.close()
    return REDIS_HOST, REDIS_PORT


def enrich_settings(shards: int) -> Any:
    """The first stage's settings from the shipped contracts, as every worker builds them."""
    from connectors.config import PipelineConfig
    from pipelines.stages import build_enrich_settings

    return build_enrich_settings(PipelineConfig(shards=shards))


@pytest.fixture(scope="session")
def analytics_run(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """A real run for the analysts' commands (report, sql, dashboard, validate): generated events
    with images, duplicates and bad lines, every stage on, hourly quotas low enough for violations,
    two shards, ``--validate``, with the network blocked. Read its outputs; don't change them (copy
    them first).

    Made once per test session: under xdist the first worker to ask makes it in the session's
    shared temporary folder while holding a lock, and the others wait and read it."""
    import filelock

    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent  # pytest-of-USER/pytest-N: this session's, shared by its workers
    base = shared / "analytics-run"
    record = base / "run.json"
    with filelock.FileLock(str(shared / "analytics-run.lock")):
        if not record.exists():
            base.mkdir(exist_ok=True)
            record.write_text(json.dumps(_make_analytics_run(base)))
    found: dict[str, Any] = json.loads(record.read_text())
    return found


def _make_analytics_run(base: Path) -> dict[str, Any]:
    events = base / "events.jsonl"
    made = run_cli("generate", "--events", "400", "--out", events, "--seed", "16", "--images")
    assert made.returncode == 0, made.stderr
    config = base / "config.toml"
    config.write_text(
        "[rate_limit]\nquotas = { free = 3, pro = 6, enterprise = 12 }\nwindow_seconds = 3600\n"
        "[pipeline]\nshards = 2\n"
    )
    offline = offline_env(base)
    out = base / "out"
    result = run_pipeline(
        [events], out, "--config", config, "--validate", env=offline, embeddings=True, moderation=True
    )
    return {
        "out": str(out),
        "stdout": result.stdout,
        "network_log": Path(offline["AIEP_TEST_NETWORK_LOG"]).read_text(),
    }


@pytest.fixture(scope="session")
def analytics_out(analytics_run: dict[str, Any]) -> Path:
    """The shared analytics run's output directory."""
    return Path(analytics_run["out"])
