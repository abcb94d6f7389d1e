"""The audit store's database toolkit: SQLite (embedded default) or MySQL/MariaDB, by URL.

Engines (UTC sessions, strict SQL modes, SQLite pragmas), the versioned migrations in
``schemas/migrations`` (Alembic) run under a lock, batched keyed writes retried whole on
transient errors, and error descriptions with passwords hidden. The sinks that write the seed's
tables (``connectors.audit_sink``, ``connectors.decision_sink``) are built on it; they reflect the
tables, so column lists are never restated in code.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import filelock
import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import sqlalchemy as sa
from pymysql.constants import CLIENT

import schemas
from connectors.database_url import hide_secrets, resolve_url
from connectors.retry import transient_retry

if TYPE_CHECKING:  # alembic loads where migrations run, not in every worker process (~75 ms)
    from alembic.config import Config

log = logging.getLogger("aiep.database")

#: What a transaction's work returns (``in_transaction``).
Outcome = TypeVar("Outcome")

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
        # Row counts are rows *changed* (MySQL's own default), as on SQLite: an upsert that
        # keeps every value counts 0, so a replay reports no change. SQLAlchemy adds FOUND_ROWS
        # (rows *matched*) for its ORM, which this project does not use.
        connect_args["client_flag"] = int(str(parsed.query.get("client_flag", 0))) & ~CLIENT.FOUND_ROWS
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
    from alembic.config import Config

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
            from alembic import command

            with engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, target)
    return SchemaUpgrade(before, current_version(engine) or "")


@contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    # A SQLite file's lock is its own; a server's is server-wide: one name per database.
    database = hashlib.sha256(str(engine.url.database).encode()).hexdigest()[:32]
    with named_lock(engine, "migrations" if engine.dialect.name == "sqlite" else f"migrate.{database}"):
        yield


@contextmanager
def named_lock(engine: sa.Engine, name: str, timeout: float = MIGRATION_LOCK_SECONDS) -> Iterator[None]:
    """Hold the store's lock ``name`` (at most 59 characters) for the ``with`` block, waiting up to
    ``timeout`` seconds for another holder (0: not at all); TimeoutError if it is still held.

    On MySQL/MariaDB it is ``GET_LOCK('aiep.<name>')``: server-wide, and freed by the server when
    the connection holding it ends, so a killed process never leaves it behind. On SQLite it is a
    lock file beside the database file (``<file>.<name>.lock``), freed by the system likewise.
    """
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        # filelock.Timeout is a TimeoutError.
        with filelock.FileLock(f"{database}.{name}.lock", timeout=timeout):
            yield
        return
    with engine.connect() as conn:
        # The connection sits idle while the lock is held (a whole run): the server's wait_timeout
        # (8 h by default) must not end it, which would free the lock without telling us.
        conn.execute(sa.text("SET SESSION wait_timeout = 31536000"))
        granted = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :seconds)"), {"name": f"aiep.{name}", "seconds": timeout}
        ).scalar()
        if granted != 1:
            raise TimeoutError(f"another process holds the lock {name!r} of the audit store")
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": f"aiep.{name}"})
            except sa.exc.DBAPIError as exc:  # a lost connection freed it already; the run's own
                log.warning("lock %r: release failed (%s)", name, type(exc.orig).__name__)  # outcome stands


def has_audit_rows(engine: sa.Engine) -> bool:
    """Whether ``ai_audit_trail`` holds any row (an empty store has nothing to compare with)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT 1 FROM ai_audit_trail LIMIT 1")).first() is not None


def current_version(engine: sa.Engine) -> str | None:
    """The applied migration version, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_version() -> str:
    """The newest migration this code ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


Rows = list[tuple[object, ...]] | list[dict[str, object]]


class BatchWriter:
    """Writes rows into one table in batches of ``batch_rows`` (one statement each), in
    transactions retried whole.

    ``statement`` is the dialect's keyed insert (ignore or upsert), compiled once; the writer only
    binds values. MySQL commits every batch. SQLite commits once per ``write`` call: in WAL mode
    a commit appends every page the transaction touched to the log, and rows inserted in key
    order spread over the whole unique index, so a commit costs about the index's size, not the
    batch's (measured: 34 ms per commit at 1M rows, most of the audit sink's time in small
    transactions). A transaction that meets a transient error (lost connection, deadlock, lock
    wait) is retried with backoff: it either committed or rolled back, and the statement is
    keyed, so a retry never duplicates a row. Past the attempts the error propagates.

    On SQLite the rows of a ``write`` are first staged in a database file of their own, straight
    from the Arrow columns (see :class:`_StagedRows`), then each batch goes in as one ``INSERT ...
    SELECT`` in the staged (key) order. Staging runs outside the store's one write lock, so
    parallel workers stage at the same time and hold the lock only for the index work and the
    commit.
    """

    def __init__(
        self,
        engine: sa.Engine,
        statement: sa.Insert,
        columns: list[str],
        batch_rows: int,
        retry_attempts: int,
        constants: Mapping[str, object] | None = None,
    ) -> None:
        self._engine = engine
        self._batch_rows = batch_rows
        self._retry_attempts = retry_attempts
        # Columns of ``columns`` with one value in every row the writer writes (on SQLite bound
        # once per statement, not staged with each row); ``write`` takes the others.
        self._constants = dict(constants or {})
        if not self._constants.keys() < set(columns):
            raise ValueError("constants must be some of the written columns, and not all of them")
        self._one_transaction = dialect(engine) == "sqlite"
        if self._one_transaction:
            self._staged = _StagedRows(engine.dialect, statement, columns, self._constants)
            self._order = [name for name in columns if name not in self._constants]
            return
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
    ) -> list[tuple[int, int, int]]:
        """Write the rows; ``(start, stop, rows changed)`` of each batch, all committed."""
        bounds = [
            (start, min(start + self._batch_rows, num_rows)) for start in range(0, num_rows, self._batch_rows)
        ]
        per_transaction = len(bounds) if self._one_transaction else 1
        done: list[tuple[int, int, int]] = []
        for first in range(0, len(bounds), max(per_transaction, 1)):
            group = bounds[first : first + per_transaction]
            for attempt in transient_retry(self._retry_attempts):
                with attempt:
                    changed = self._execute(columns, group)
            done += [(start, stop, n) for (start, stop), n in zip(group, changed, strict=True)]
        return done

    def _slices(
        self, columns: dict[str, pa.Array | pa.ChunkedArray], start: int, stop: int
    ) -> dict[str, pa.Array | pa.ChunkedArray]:
        """Rows ``start:stop`` of each written column that is not a constant, by name."""
        count = stop - start
        values = {
            name: columns[name].slice(start, count) for name in self._order if name not in self._constants
        }
        if any(len(column) != count for column in values.values()):
            raise ValueError(f"a column holds fewer than the {stop} rows the write was given")
        return values

    def _rows(self, columns: dict[str, pa.Array | pa.ChunkedArray], start: int, stop: int) -> Rows:
        """One batch's rows for a driver's ``executemany``: tuples, or dicts for pyformat ones."""
        sliced = self._slices(columns, start, stop)
        values = [
            [self._constants[name]] * (stop - start) if name in self._constants else sliced[name].to_pylist()
            for name in self._order
        ]
        rows = list(zip(*values, strict=True))
        if self._positional:
            return rows
        return [dict(zip(self._order, row, strict=True)) for row in rows]

    def _execute(
        self, columns: dict[str, pa.Array | pa.ChunkedArray], batches: list[tuple[int, int]]
    ) -> list[int]:
        """One transaction, then its commit; the rows each batch changed. SQLite: the rows of
        every batch staged at once, then one ``INSERT ... SELECT`` per batch; MySQL: one
        ``executemany`` of Python values per batch."""
        raw = self._engine.raw_connection()
        try:
            if self._one_transaction:
                start, stop = batches[0][0], batches[-1][1]
                with self._staged.attached(raw, self._slices(columns, start, stop)) as cursor:
                    try:
                        # Staged rows are numbered 1, 2, 3, ... from the write's first row.
                        counts = [self._staged.insert(cursor, a - start + 1, b - start) for a, b in batches]
                        raw.commit()
                    except BaseException:
                        # SQLite keeps a closed connection's transaction, write lock included,
                        # until its last statement is finalized, and the raised error's traceback
                        # holds one: roll back now, or the retry (or the next write) waits on this
                        # very transaction. The staged rows can be detached only after it.
                        with contextlib.suppress(sqlite3.Error):
                            raw.rollback()
                        raise
                return counts
            cursor, counts = raw.cursor(), []
            for start, stop in batches:
                cursor.executemany(self._sql, self._rows(columns, start, stop))
                counts.append(max(cursor.rowcount, 0))
            raw.commit()
            return counts
        except BaseException:
            # The connection may be dead (killed, server gone): never hand it back to the pool.
            raw.invalidate()
            raise
        finally:
            raw.close()


#: The Arrow types a column is staged as it is: each as the storage class Python's ``sqlite3``
#: binds its values as (TEXT, INTEGER (a bool as 0 or 1), REAL, BLOB; NULL for a null).
_STAGED_TYPES = (
    pa.types.is_boolean,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
    pa.types.is_null,
)


def _staged_column(name: str, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``column`` as it is staged: as it is, a dictionary one decoded, a decimal one as its exact
    text (what Python's ``sqlite3`` binds a ``Decimal`` as, by the adapter above); TypeError for
    another type."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if pa.types.is_decimal(column.type):
        return pc.cast(column, pa.string())
    if not any(is_type(column.type) for is_type in _STAGED_TYPES):
        raise TypeError(f"column {name!r}: {column.type} can't be staged; cast it to text or a number")
    return column


#: The schema name a staging file is attached under, on the store's connection.
_STAGE = "aiep_staged"


class _StagedRows:
    """SQLite: a write's rows staged in a database file of their own, then inserted from it with
    the keyed statement.

    The rows go from the Arrow columns into the file through ADBC's SQLite driver
    (``adbc_ingest``), which binds every value in C: about 1.2 µs a row of 13 columns, against
    4.4 µs to make Python values of them and bind those into a TEMP table (measured here on the
    audit trail's rows). The file is then attached to the store's connection, and each batch goes
    in as one ``INSERT ... SELECT``.

    The driver links a SQLite library of its own. Two SQLite libraries in one process must never
    have one file open at once (each would drop the other's POSIX locks); here they never do: the
    driver's connection is closed before the file is attached, and the store itself is only ever
    opened by Python's ``sqlite3``. The file is a temporary one (``tempfile``: ``TMPDIR``), written
    without a journal or syncs (it is thrown away whatever happens) and removed after the write.

    The staging table has the target's column names and no declared types, so it keeps each value
    exactly as bound and the target applies its own column affinity once, as a direct insert
    would. A column in ``constants`` is not staged: each ``INSERT ... SELECT`` binds its value once.
    """

    def __init__(
        self,
        sql_dialect: sa.Dialect,
        statement: sa.Insert,
        columns: list[str],
        constants: Mapping[str, object],
    ) -> None:
        quote = sql_dialect.identifier_preparer.quote
        self._names = [column for column in columns if column not in constants]
        self._create = f"CREATE TABLE staged ({', '.join(quote(column) for column in self._names)})"
        staged = sa.table("staged", *(sa.column(column) for column in self._names), schema=_STAGE)
        self._params: dict[str, object] = {f"constant_{i}": constants[c] for i, c in enumerate(constants)}
        constant_params = {c: f"constant_{i}" for i, c in enumerate(constants)}
        picked = [
            sa.bindparam(constant_params[column]) if column in constants else staged.c[column]
            for column in columns
        ]
        rowid: sa.ColumnClause[Any] = sa.literal_column("rowid")
        # In rowid order: the order the rows were staged in, the caller's (key) order.
        select = sa.select(*picked).where(rowid.between(sa.bindparam("first"), sa.bindparam("last")))
        compiled = statement.from_select(columns, select.order_by(rowid)).compile(dialect=sql_dialect)
        self._insert = str(compiled)
        self._bounds = list(compiled.positiontup or ())

    @contextmanager
    def attached(self, raw: Any, values: Mapping[str, pa.Array | pa.ChunkedArray]) -> Iterator[Any]:
        """Stage ``values`` (every staged column, by name) as rows 1, 2, 3, ... of a new file,
        attach it to the DB-API connection ``raw`` and yield a cursor of it for the ``with``
        block; detach it after. The block must end the transaction that read the staged rows
        (SQLite detaches a file only outside one).

        The file is unlinked as soon as it is attached (the connection reads it through its open
        descriptor), so a process killed mid-write leaves no file behind. A detach that fails
        after the block ended well (its write committed) is logged and the connection is
        invalidated, not reported as a failed write; after a failed block it is left to the
        connection's invalidation, so the block's own error is the one raised."""
        rows = pa.table([_staged_column(name, values[name]) for name in self._names], names=self._names)
        handle, path = tempfile.mkstemp(prefix="aiep-staged-", suffix=".sqlite")
        os.close(handle)  # an empty file is an empty database to SQLite
        try:
            self._stage(path, rows)
            cursor = raw.cursor()
            cursor.execute(f"ATTACH DATABASE ? AS {_STAGE}", (path,))
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)
        try:
            yield cursor
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute(f"DETACH DATABASE {_STAGE}")
            raise
        try:
            cursor.execute(f"DETACH DATABASE {_STAGE}")
        except sqlite3.Error as exc:
            log.warning("staged rows: detach failed after the write committed (%s); connection dropped", exc)
            raw.invalidate()

    def _stage(self, path: str, rows: pa.Table) -> None:
        # Imported here: only a SQLite store's writers need the driver.
        import adbc_driver_sqlite.dbapi

        with adbc_driver_sqlite.dbapi.connect(path, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=OFF")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute(self._create)
            cursor.adbc_ingest("staged", rows, mode="append")  # one transaction

    def insert(self, cursor: Any, first: int, last: int) -> int:
        """Insert the staged rows ``first..last`` (rowids); the rows the store changed."""
        params = {"first": first, "last": last, **self._params}
        cursor.execute(self._insert, tuple(params[name] for name in self._bounds))
        return max(cursor.rowcount, 0)


def fetch_all(
    engine: sa.Engine, statement: sa.Executable, params: dict[str, Any], retry_attempts: int
) -> list[Any]:
    """Rows of one read, retried on transient errors like every write."""
    return in_transaction(
        engine, lambda conn: list(conn.execute(statement, params).all()), retry_attempts, commit=False
    )


def in_transaction(
    engine: sa.Engine,
    work: Callable[[sa.Connection], Outcome],
    retry_attempts: int,
    commit: bool = True,
) -> Outcome:
    """``work(connection)`` in one transaction, committed (or, with ``commit=False``, rolled back:
    a read), and retried whole on transient errors like every batch write.

    ``work`` may run more than once, so it must only touch the database: a retried transaction
    either committed or rolled back, never half.
    """
    for attempt in transient_retry(retry_attempts):
        with attempt:
            conn = engine.connect()
            try:
                result = work(conn)
                if commit:
                    conn.commit()
                else:
                    conn.rollback()
                return result
            except BaseException:
                # The connection may be dead (killed, server gone): never hand it back to the pool.
                conn.invalidate()
                raise
            finally:
                conn.close()
    raise AssertionError("unreachable: transient_retry re-raises")


def dialect(engine: sa.Engine) -> str:
    name = engine.dialect.name
    if name not in ("sqlite", "mysql", "mariadb"):
        raise ValueError(f"audit store: unsupported database {name!r}")
    return "sqlite" if name == "sqlite" else "mysql"
