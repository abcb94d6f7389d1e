"""The audit store: the seed's tables in SQLite (embedded default) or MySQL/MariaDB, by URL.

Tables come from the versioned migrations in ``schemas/migrations`` (Alembic); the writer reflects
them, so column lists are never restated here. Writes are batched, one transaction per batch, and
keyed by ``event_id`` so a replay inserts nothing twice.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import mysql, sqlite

import schemas
from connectors.retry import transient_retry
from transforms.event_batch import FINGERPRINT

MYSQL_PASSWORD_ENV = "AIEP_MYSQL_PASSWORD"

log = logging.getLogger("aiep.audit")

#: events column -> ai_audit_trail column, for every column the pipeline writes.
AUDIT_COLUMNS = {
    "event_id": "event_id",
    "user_id": "user_id",
    "operation_type": "operation_type",
    "input_hash": "input_hash",
    "output_hash": "output_hash",
    "cost": "cost",
    "event_time": "created_at",
    "model": "model",
    "ai_tier": "ai_tier",
    "cost_status": "cost_status",
    "rate_limited": "rate_limited",
    "image_hash": "image_hash",
    "hash_mode": "hash_mode",
    FINGERPRINT: "payload_fingerprint",
}

#: Event ids per ``SELECT ... WHERE event_id IN (...)``.
LOOKUP_CHUNK = 1000

sqlite3.register_adapter(Decimal, str)


def default_url(out_dir: Path) -> str:
    """``sqlite:///<out>/audit.sqlite``: the embedded store beside the Parquet outputs."""
    return f"sqlite:///{out_dir.resolve() / 'audit.sqlite'}"


def redact(url: str) -> str:
    """The URL with any password replaced, for logs, errors and summaries.

    >>> redact("mysql+pymysql://app:s3cr%40t@db:3306/prod")
    'mysql+pymysql://app:***@db:3306/prod'
    """
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable database URL>"


def resolve_url(url: str) -> sa.URL:
    """Parse ``url``; a MySQL URL without a password takes it from ``$AIEP_MYSQL_PASSWORD``.

    A password in the URL itself must be percent-encoded (``p%40ss`` for ``p@ss``).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(f"not a database URL: {redact(url)}") from None
    if parsed.get_backend_name() in ("mysql", "mariadb") and parsed.password is None:
        password = os.environ.get(MYSQL_PASSWORD_ENV)
        if password:
            parsed = parsed.set(password=password)
    return parsed


def root_cause(exc: BaseException) -> BaseException:
    """The database driver's error behind ``exc`` (through engine and SQLAlchemy wrappers), else
    the innermost explicit cause."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        inner = getattr(current, "orig", None) or current
        if isinstance(inner, (pymysql.err.MySQLError, sqlite3.Error)):
            return inner
        current = current.__cause__ or current.__context__
    return seen[-1] if seen else exc


def describe_error(exc: BaseException) -> str:
    """A one-line, password-free description of a database error."""
    inner = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(inner, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"{type(inner).__name__} ({args[0]}) {args[1]}"
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text}"[:300]


def open_engine(url: str) -> sa.Engine:
    """An engine for ``url``.

    MySQL/MariaDB sessions use UTC (``time_zone = '+00:00'``, so TIMESTAMPs are stored as given)
    and ``utf8mb4``; SQLite gets WAL and a busy timeout so parallel workers can write.
    """
    parsed = resolve_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        return sa.create_engine(
            parsed,
            # Positional parameters: batches bind tuples, not a dict per row (measured ~15% of the
            # sink's own CPU in benchmarks/audit_mysql.py).
            paramstyle="format",
            pool_pre_ping=True,
            # Every use commits, rolls back or invalidates its connection itself; a reset on
            # return would only meet sockets a failure already closed, and log them as errors.
            pool_reset_on_return=None,
            pool_recycle=3600,
            connect_args={
                "charset": "utf8mb4",
                "init_command": "SET time_zone = '+00:00'",
                "connect_timeout": 10,
            },
        )
    engine = sa.create_engine(parsed, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            # 16 KiB pages (takes effect only when the file is new): ~20 % faster bulk inserts
            # into the three indexed columns than the default 4 KiB, measured here.
            dbapi_conn.execute("PRAGMA page_size=16384")
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            dbapi_conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the event_id index stays hot

    return engine


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(schemas.MIGRATIONS_DIR))
    return config


def upgrade(engine: sa.Engine) -> str:
    """Apply every migration not yet applied; return the version now in force."""
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return current_version(engine) or ""


def has_audit_rows(engine: sa.Engine) -> bool:
    """Whether ``ai_audit_trail`` holds any row (an empty store has nothing to compare with)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM ai_audit_trail LIMIT 1")).first() is not None


def current_version(engine: sa.Engine) -> str | None:
    """The applied migration version, or ``None`` for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_version() -> str:
    """The newest migration this code ships."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


Rows = list[tuple[object, ...]] | list[dict[str, object]]


class BatchWriter:
    """Writes rows into one table in batches: one transaction per batch, retried whole.

    ``statement`` is the dialect's keyed insert (ignore or upsert), compiled once; the writer only
    binds values. A batch that meets a transient error (lost connection, deadlock, lock wait) is
    retried with backoff: its transaction either committed or rolled back, and the statement is
    keyed, so a retry never duplicates a row. Past the attempts the error propagates.
    """

    def __init__(
        self,
        engine: sa.Engine,
        statement: sa.Insert,
        columns: list[str],
        batch_rows: int,
        retry_attempts: int,
    ) -> None:
        self._engine = engine
        self._batch_rows = batch_rows
        self._retry_attempts = retry_attempts
        compiled = statement.compile(dialect=engine.dialect, column_keys=columns)
        self._sql = str(compiled)
        # Positional drivers take tuples in the compiled order; pyformat ones take dicts.
        self._positional = compiled.positiontup is not None
        self._order = list(compiled.positiontup or columns)

    def write(self, columns: dict[str, pa.Array | pa.ChunkedArray], num_rows: int) -> int:
        """Write ``num_rows`` rows given as columns by name; return the rows the database changed."""
        changed = 0
        for start in range(0, num_rows, self._batch_rows):
            values = [columns[name].slice(start, self._batch_rows).to_pylist() for name in self._order]
            rows: Rows = list(zip(*values, strict=True))
            if not self._positional:
                rows = [dict(zip(self._order, row, strict=True)) for row in rows]
            for attempt in transient_retry(self._retry_attempts):
                with attempt:
                    changed += self._execute(rows)
        return changed

    def _execute(self, rows: Rows) -> int:
        raw = self._engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.executemany(self._sql, rows)
            count = max(cursor.rowcount, 0)
            raw.commit()
            return count
        except BaseException:
            # The connection may be dead (killed, server gone): never hand it back to the pool.
            raw.invalidate()
            raise
        finally:
            raw.close()


def fetch_all(
    engine: sa.Engine, statement: sa.Executable, params: dict[str, Any], retry_attempts: int
) -> list[Any]:
    """Rows of one read, retried on transient errors like every write."""
    for attempt in transient_retry(retry_attempts):
        with attempt:
            conn = engine.connect()
            try:
                rows = list(conn.execute(statement, params).all())
                conn.rollback()
                return rows
            except BaseException:
                # The connection may be dead (killed, server gone): never hand it back to the pool.
                conn.invalidate()
                raise
            finally:
                conn.close()
    raise AssertionError("unreachable: transient_retry re-raises")


def _dialect(engine: sa.Engine) -> str:
    name = engine.dialect.name
    if name not in ("sqlite", "mysql", "mariadb"):
        raise ValueError(f"audit store: unsupported database {name!r}")
    return "sqlite" if name == "sqlite" else "mysql"


class AuditWriter:
    """One ``ai_audit_trail`` row per event, keyed by ``event_id``: a stored event is kept as is."""

    def __init__(self, engine: sa.Engine, batch_rows: int, retry_attempts: int = 8) -> None:
        table = sa.Table("ai_audit_trail", sa.MetaData(), autoload_with=engine)
        statement: sa.Insert
        if _dialect(engine) == "sqlite":
            statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        else:
            statement = mysql.insert(table).prefix_with("IGNORE")
        self._writer = BatchWriter(
            engine, statement, list(AUDIT_COLUMNS.values()), batch_rows, retry_attempts
        )
        self._engine = engine
        self._retry_attempts = retry_attempts
        stored = sa.table("ai_audit_trail", sa.column("event_id"), sa.column("payload_fingerprint"))
        self._stored_query = sa.select(stored.c.event_id, stored.c.payload_fingerprint).where(
            stored.c.event_id.in_(sa.bindparam("ids", expanding=True))
        )

    def stored_fingerprints(self, event_ids: list[str]) -> dict[str, bytes | None]:
        """The ``payload_fingerprint`` of each of ``event_ids`` an earlier run stored (absent: none)."""
        found: dict[str, bytes | None] = {}
        for start in range(0, len(event_ids), LOOKUP_CHUNK):
            chunk = event_ids[start : start + LOOKUP_CHUNK]
            rows = fetch_all(self._engine, self._stored_query, {"ids": chunk}, self._retry_attempts)
            found.update((row[0], None if row[1] is None else bytes(row[1])) for row in rows)
        return found

    def write(self, events: pa.Table) -> int:
        """Insert one audit row per event; return how many were new."""
        # In key order, each batch touches the unique index's pages once, not at random.
        events = events.select(list(AUDIT_COLUMNS)).sort_by("event_id")
        columns = {AUDIT_COLUMNS[name]: events.column(name) for name in AUDIT_COLUMNS}
        # TIMESTAMP holds whole seconds; Arrow's %S would print the microseconds too.
        seconds = columns["created_at"].cast(pa.timestamp("s", tz="UTC"), safe=False)
        columns["created_at"] = pc.strftime(seconds, "%Y-%m-%d %H:%M:%S")
        columns["rate_limited"] = pc.cast(columns["rate_limited"], pa.int8())
        # Exact decimal text ("0.000200"): both drivers take it for DECIMAL/NUMERIC, with no
        # Decimal object per row.
        columns["cost"] = pc.cast(columns["cost"], pa.string())
        return self._writer.write(columns, events.num_rows)


class DecisionWriter:
    """One ``moderation_decisions`` row per distinct content, keyed by ``content_hash``.

    An automatic decision updates a stored one only while no human has reviewed it
    (``reviewed_by`` is NULL): a human decision is never overwritten.
    """

    COLUMNS = ("content_hash", "decision", "score")

    def __init__(self, engine: sa.Engine, batch_rows: int, retry_attempts: int = 8) -> None:
        table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
        unreviewed = table.c.reviewed_by.is_(None)
        statement: sa.Insert
        if _dialect(engine) == "sqlite":
            lite = sqlite.insert(table)
            statement = lite.on_conflict_do_update(
                index_elements=["content_hash"],
                set_={"decision": lite.excluded.decision, "score": lite.excluded.score},
                where=unreviewed,
            )
        else:
            my = mysql.insert(table)
            statement = my.on_duplicate_key_update(
                decision=sa.case((unreviewed, my.inserted.decision), else_=table.c.decision),
                score=sa.case((unreviewed, my.inserted.score), else_=table.c.score),
            )
        self._writer = BatchWriter(engine, statement, list(self.COLUMNS), batch_rows, retry_attempts)

    def write(self, decisions: pa.Table) -> int:
        """Upsert ``content_hash, decision, score`` rows; return the rows the database changed."""
        decisions = decisions.sort_by("content_hash")
        return self._writer.write({name: decisions.column(name) for name in self.COLUMNS}, decisions.num_rows)
