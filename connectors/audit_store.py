"""The audit store: the seed's tables in SQLite (embedded default) or MySQL/MariaDB, by URL.

Tables come from the versioned migrations in ``schemas/migrations`` (Alembic); the writer reflects
them, so column lists are never restated here. Writes are batched, one transaction per batch, and
keyed by ``event_id`` so a replay inserts nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import filelock
import numpy as np
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
from connectors.database_url import hide_secrets, resolve_url
from connectors.retry import transient_retry
from transforms.dedup import STORED, Verdict, judge_against_store
from transforms.event_batch import FINGERPRINT

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
        # ``raise … from None`` means the context is not the cause: stop there.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen[-1] if seen else exc


def describe_error(exc: BaseException, url: str | None = None) -> str:
    """A one-line description of a database error, with the password of ``url`` hidden."""
    inner = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(inner, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"{type(inner).__name__} ({args[0]}) {args[1]}"
        if isinstance(inner, OSError) and inner.filename:
            text += f": {inner.filename}"
    else:
        text = f"{type(inner).__name__}: {inner}".rstrip(": ")
    # One line: a server may quote a name that holds a newline.
    return hide_secrets(" ".join(text.split()), url)[:500]


def open_engine(url: str, create: bool = True) -> sa.Engine:
    """An engine for ``url``; with ``create=False`` a SQLite file that does not exist is an error
    (FileNotFoundError) instead of a new, empty store.

    MySQL/MariaDB sessions use UTC (``time_zone = '+00:00'``, so TIMESTAMPs are stored as given)
    and ``utf8mb4``; SQLite gets WAL and a busy timeout so parallel workers can write.
    """
    parsed = resolve_url(url)
    if not create and parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists():
        raise FileNotFoundError(f"no audit store at {parsed.database}")
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        connect_args: dict[str, Any] = {
            "charset": "utf8mb4",
            # TRADITIONAL: a value that does not fit is an error, never silently cut or changed.
            "init_command": "SET time_zone = '+00:00', sql_mode = 'TRADITIONAL'",
            "connect_timeout": 10,
        }
        if parsed.password and not parsed.password.isascii():
            # PyMySQL sends a str password as Latin-1; servers store what clients send, UTF-8.
            connect_args["password"] = parsed.password.encode("utf-8")
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
            connect_args=connect_args,
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


#: How long ``upgrade`` waits for another process's migrations to end before it gives up.
MIGRATION_LOCK_SECONDS = 300


@dataclass(frozen=True)
class SchemaUpgrade:
    """What ``upgrade`` found and left: the versions before and after (``None``: an empty store)."""

    before: str | None
    after: str


def upgrade(engine: sa.Engine, revision: str = "head") -> SchemaUpgrade:
    """Apply every migration not yet applied (up to ``revision``).

    Safe when several processes start on one fresh store at once: migrations run under a lock
    (a named server lock on MySQL, a file lock beside a SQLite file), so one migrates and the
    others then find the schema up to date (``before`` is read under the lock, so each process
    reports what it did itself).
    """
    target = head_version() if revision == "head" else revision
    before = current_version(engine)
    if before == target:
        return SchemaUpgrade(before, target)
    config = _alembic_config()
    with _migration_lock(engine):
        before = current_version(engine)
        if before != target:
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, target)
    return SchemaUpgrade(before, current_version(engine) or "")


@contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with filelock.FileLock(f"{database}.migrations.lock", timeout=MIGRATION_LOCK_SECONDS):
            yield
        return
    # Server-wide lock names: one per database; at most 64 characters.
    name = "aiep.migrate." + hashlib.sha256(str(engine.url.database).encode()).hexdigest()[:32]
    with engine.connect() as conn:
        granted = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :seconds)"), {"name": name, "seconds": MIGRATION_LOCK_SECONDS}
        ).scalar()
        if granted != 1:
            raise TimeoutError(f"another process held the migration lock for {MIGRATION_LOCK_SECONDS}s")
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})


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
        return sum(changed for _, _, changed in self.write_batches(columns, num_rows))

    def write_batches(
        self, columns: dict[str, pa.Array | pa.ChunkedArray], num_rows: int
    ) -> Iterator[tuple[int, int, int]]:
        """Write the rows batch by batch, yielding ``(start, stop, rows changed)`` after each commit."""
        for start in range(0, num_rows, self._batch_rows):
            values = [columns[name].slice(start, self._batch_rows).to_pylist() for name in self._order]
            rows: Rows = list(zip(*values, strict=True))
            if not self._positional:
                rows = [dict(zip(self._order, row, strict=True)) for row in rows]
            for attempt in transient_retry(self._retry_attempts):
                with attempt:
                    changed = self._execute(rows)
            yield start, start + len(rows), changed

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


class AuditRowsLost(RuntimeError):
    """The audit store did not keep rows it was given and holds nothing under their event ids."""


@dataclass
class AuditOutcome:
    """What one ``AuditWriter.write`` did: rows inserted, and events another run stored otherwise."""

    inserted: int = 0
    #: Stored meanwhile, with another payload, by another run: conflicting duplicates. (One stored
    #: meanwhile with the same payload is the same event: this run writes it to its Parquet too.)
    conflicting: list[str] = field(default_factory=list)


class AuditWriter:
    """One ``ai_audit_trail`` row per event, keyed by ``event_id``: a stored event is kept as is.

    Every batch is checked: when the database inserts fewer rows than the batch holds new events,
    the rows it skipped are read back and compared exactly. One stored meanwhile by another run
    with the same payload is the same event; one with another payload is a conflict
    (``AuditOutcome``); one that is not there at all means the store loses events (a loose
    collation, a trigger), and the write fails with ``AuditRowsLost`` instead of reporting success.
    """

    def __init__(
        self, engine: sa.Engine, batch_rows: int, retry_attempts: int = 8, inputs_fingerprint: str = ""
    ) -> None:
        table = sa.Table("ai_audit_trail", sa.MetaData(), autoload_with=engine)
        statement: sa.Insert
        if _dialect(engine) == "sqlite":
            statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        else:
            statement = mysql.insert(table).prefix_with("IGNORE")
        self._writer = BatchWriter(
            engine, statement, [*AUDIT_COLUMNS.values(), "inputs_fingerprint"], batch_rows, retry_attempts
        )
        self._engine = engine
        self._retry_attempts = retry_attempts
        self.inputs_fingerprint = inputs_fingerprint
        stored = sa.table("ai_audit_trail", sa.column("event_id"), sa.column("payload_fingerprint"))
        self._stored_query = sa.select(stored.c.event_id, stored.c.payload_fingerprint).where(
            stored.c.event_id.in_(sa.bindparam("ids", expanding=True))
        )

    def stored_fingerprints(self, event_ids: list[str]) -> dict[str, bytes | None]:
        """The ``payload_fingerprint`` of each of ``event_ids`` the audit trail holds (absent:
        nothing stored; ``None``: stored before fingerprints were kept)."""
        found: dict[str, bytes | None] = {}
        for start in range(0, len(event_ids), LOOKUP_CHUNK):
            chunk = event_ids[start : start + LOOKUP_CHUNK]
            rows = fetch_all(self._engine, self._stored_query, {"ids": chunk}, self._retry_attempts)
            found.update((row[0], None if row[1] is None else bytes(row[1])) for row in rows)
        return found

    def write(self, events: pa.Table) -> AuditOutcome:
        """Insert one audit row per event (``STORED`` marks those already stored); see the class."""
        # In key order, each batch touches the unique index's pages once, not at random.
        events = events.select([*AUDIT_COLUMNS, STORED]).sort_by("event_id")
        columns = {AUDIT_COLUMNS[name]: events.column(name) for name in AUDIT_COLUMNS}
        # TIMESTAMP holds whole seconds; Arrow's %S would print the microseconds too.
        seconds = columns["created_at"].cast(pa.timestamp("s", tz="UTC"), safe=False)
        columns["created_at"] = pc.strftime(seconds, "%Y-%m-%d %H:%M:%S")
        columns["rate_limited"] = pc.cast(columns["rate_limited"], pa.int8())
        # Exact decimal text ("0.000200"): both drivers take it for DECIMAL/NUMERIC, with no
        # Decimal object per row.
        columns["cost"] = pc.cast(columns["cost"], pa.string())
        columns["inputs_fingerprint"] = pa.array([self.inputs_fingerprint] * events.num_rows, pa.string())
        outcome = AuditOutcome()
        for start, stop, inserted in self._writer.write_batches(columns, events.num_rows):
            batch = events.slice(start, stop - start)
            new = batch.filter(pc.invert(batch.column(STORED)))
            if inserted < new.num_rows:
                self._account_for_skipped(new, inserted, outcome)
            outcome.inserted += inserted
        return outcome

    def _account_for_skipped(self, new: pa.Table, inserted: int, outcome: AuditOutcome) -> None:
        ids = new.column("event_id")
        verdicts = judge_against_store(new, self.stored_fingerprints(ids.to_pylist()))
        lost = np.flatnonzero(verdicts == Verdict.NEW)
        if lost.size:
            raise AuditRowsLost(
                f"the audit store inserted {inserted} of {new.num_rows} new rows and holds nothing under "
                f"{lost.size} of their event ids (e.g. {ids[int(lost[0])].as_py()[:128]!r}): does a "
                "collation or a trigger compare event ids loosely? (migration 0004 gives "
                "ai_audit_trail.event_id a binary one)"
            )
        outcome.conflicting.extend(ids.filter(pa.array(verdicts == Verdict.CONFLICT)).to_pylist())


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
