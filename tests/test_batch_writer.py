"""BatchWriter on SQLite: rows staged in a file of their own, then inserted with ``INSERT ... SELECT``.

Checked against what the same keyed statement stores when the rows are bound to it directly
(the way MySQL is written, and SQLite was before): the same values, of the same storage class,
and per batch the same counts of rows changed.
"""

from __future__ import annotations

import sqlite3
import tempfile
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from connectors.audit_sink import keyed_insert
from connectors.database import BatchWriter, _StagedRows, open_engine, upgrade

AUDIT = "ai_audit_trail"
COLUMNS = [
    "event_id", "user_id", "cost", "created_at", "rate_limited", "payload_fingerprint", "model",
    "inputs_fingerprint",
]  # fmt: skip
#: The value of a column every row has alike: the staged writer binds it once per statement.
MARK = "0123456789abcdef"


def audit_store(path: Path) -> sa.Engine:
    engine = open_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # from here on the pool holds one connection, the writer's
    return engine


def cost_text(i: int) -> str:
    """Exact decimal text as the audit sink sends it: whole (``"4.000000"``) or not."""
    return f"{i}.000000" if i % 3 == 1 else str(Decimal(i).scaleb(-6))


def rows_table(n: int, offset: int = 0) -> dict[str, pa.Array]:
    """``n`` rows whose values cover each storage class the audit columns meet: text that reads as
    a number, exact decimals, NULLs, 64-bit integers, blobs, non-ASCII text."""
    ids = [f"ev-{offset + i:06d}-é" for i in range(n)]
    return {
        "event_id": pa.array(ids),
        "user_id": pa.array([None if i % 7 == 0 else 2**62 + i for i in range(n)], pa.int64()),
        "cost": pa.array([None if i % 5 == 0 else cost_text(i) for i in range(n)]),
        "created_at": pa.array([f"2026-11-{1 + i % 28:02d} 12:00:{i % 60:02d}" for i in range(n)]),
        "rate_limited": pa.array([i % 2 for i in range(n)], pa.int8()),
        "payload_fingerprint": pa.array([bytes([i % 256]) * 16 for i in range(n)], pa.binary()),
        "model": pa.array(["0042" if i % 3 == 0 else "gpt-4o" for i in range(n)]),
        "inputs_fingerprint": pa.array([MARK] * n),
    }


def stored(path: Path) -> list[tuple[object, ...]]:
    """Every written column with its storage class, in key order, read with plain sqlite3."""
    picked = ", ".join(f"{c}, typeof({c})" for c in COLUMNS)
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT {picked} FROM {AUDIT} ORDER BY event_id").fetchall()


def direct_insert(engine: sa.Engine, path: Path, columns: dict[str, pa.Array], batch_rows: int) -> list[int]:
    """The same statement, rows bound to it directly, one ``executemany`` per batch; changed rows."""
    compiled = keyed_insert(engine).compile(dialect=engine.dialect, column_keys=COLUMNS)
    values = [columns[name].to_pylist() for name in compiled.positiontup or []]
    rows = list(zip(*values, strict=True))
    counts = []
    with closing(sqlite3.connect(path)) as conn:
        for start in range(0, len(rows), batch_rows):
            cursor = conn.executemany(str(compiled), rows[start : start + batch_rows])
            counts.append(cursor.rowcount)
        conn.commit()
    return counts


def test_staged_rows_are_stored_exactly_as_rows_bound_directly(tmp_path: Path) -> None:
    staged_path, direct_path = tmp_path / "staged.sqlite", tmp_path / "direct.sqlite"
    staged_engine, direct_engine = audit_store(staged_path), audit_store(direct_path)
    writer = BatchWriter(
        staged_engine, keyed_insert(staged_engine), COLUMNS, 7, 1, constants={"inputs_fingerprint": MARK}
    )

    # A first write, then one that overlaps it: the stored keys must count 0 in their batches.
    first, second = rows_table(30), rows_table(40, offset=20)
    without_mark = [{k: v for k, v in t.items() if k != "inputs_fingerprint"} for t in (first, second)]
    staged_counts = [n for _, _, n in writer.write_batches(without_mark[0], 30)]
    staged_counts += [n for _, _, n in writer.write_batches(without_mark[1], 40)]
    direct_counts = direct_insert(direct_engine, direct_path, first, 7)
    direct_counts += direct_insert(direct_engine, direct_path, second, 7)

    assert staged_counts == direct_counts
    assert staged_counts == [7, 7, 7, 7, 2, 0, 4, 7, 7, 7, 5]  # ids 20..29 were stored
    assert stored(staged_path) == stored(direct_path)
    assert len(stored(staged_path)) == 60
    types = {row[1 + 2 * COLUMNS.index("cost")] for row in stored(staged_path)}
    assert types == {"real", "integer", "null"}  # NUMERIC affinity applied once, as directly
    marks = {
        row[2 * COLUMNS.index("inputs_fingerprint") : 2 + 2 * COLUMNS.index("inputs_fingerprint")]
        for row in stored(staged_path)
    }
    assert marks == {(MARK, "text")}
    staged_engine.dispose()
    direct_engine.dispose()


def test_decimals_bools_and_dictionaries_are_staged_as_python_binds_them(tmp_path: Path) -> None:
    """A decimal column goes in as its exact text (the ``Decimal`` adapter's), a bool one as 0/1,
    a dictionary one as its values."""
    staged_path, direct_path = tmp_path / "staged.sqlite", tmp_path / "direct.sqlite"
    staged_engine, direct_engine = audit_store(staged_path), audit_store(direct_path)
    rows = rows_table(12)
    rows["cost"] = pa.array(
        [None if i % 5 == 0 else Decimal(i).scaleb(-6) for i in range(12)], pa.decimal128(10, 6)
    )
    rows["rate_limited"] = pa.array([i % 3 == 0 for i in range(12)])
    rows["model"] = rows["model"].dictionary_encode()
    writer = BatchWriter(staged_engine, keyed_insert(staged_engine), COLUMNS, 5, 1)
    assert writer.write(rows, 12) == 12
    assert direct_insert(direct_engine, direct_path, rows, 5) == [5, 5, 2]
    assert stored(staged_path) == stored(direct_path)
    staged_engine.dispose()
    direct_engine.dispose()


def attached_names(engine: sa.Engine) -> list[str]:
    """The schema names attached to the pool's one connection (the writer's)."""
    raw = engine.raw_connection()
    cursor = raw.cursor()
    try:
        return [row[1] for row in cursor.execute("PRAGMA database_list").fetchall()]
    finally:
        cursor.close()
        raw.close()


def test_each_write_stages_in_a_file_it_removes_and_a_failed_one_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # where tempfile makes its files
    path = tmp_path / "audit.sqlite"
    engine = audit_store(path)
    writer = BatchWriter(engine, keyed_insert(engine), COLUMNS, batch_rows=4, retry_attempts=1)
    # The file is gone from its folder while its rows are inserted: a killed write leaves none.
    seen_while_inserting: list[list[Path]] = []
    insert = _StagedRows.insert

    def watched(self: _StagedRows, cursor: object, first: int, last: int) -> int:
        seen_while_inserting.append(list(staging.iterdir()))
        return insert(self, cursor, first, last)

    monkeypatch.setattr(_StagedRows, "insert", watched)
    assert writer.write(rows_table(10), 10) == 10
    assert seen_while_inserting == [[], [], []]
    assert list(staging.iterdir()) == []
    assert set(attached_names(engine)) <= {"main", "temp"}  # the staging file is detached

    # The last batch breaks a NOT NULL: the transaction is rolled back whole, the file removed.
    bad = rows_table(10, offset=100)
    bad["event_id"] = pa.array([*bad["event_id"].to_pylist()[:9], None])
    with pytest.raises(sqlite3.IntegrityError):
        writer.write(bad, 10)
    assert len(stored(path)) == 10
    assert list(staging.iterdir()) == []

    # The writer goes on: the next write stages its own rows, numbered from 1 again.
    assert writer.write(rows_table(10, offset=200), 10) == 10
    assert [row[0] for row in stored(path)][-1] == "ev-000209-é"
    assert list(staging.iterdir()) == []
    assert set(attached_names(engine)) <= {"main", "temp"}  # the staging file is detached
    engine.dispose()


def test_a_column_of_a_type_the_staging_would_change_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    engine = audit_store(path)
    writer = BatchWriter(engine, keyed_insert(engine), COLUMNS, batch_rows=4, retry_attempts=1)
    rows = rows_table(5)
    rows["created_at"] = pa.array([0] * 5, pa.timestamp("s"))  # Python would bind a datetime otherwise
    with pytest.raises(TypeError, match="'created_at': timestamp"):
        writer.write(rows, 5)
    assert stored(path) == []
    engine.dispose()


def test_a_write_whose_columns_hold_fewer_rows_than_it_says_or_stray_constants_are_refused(
    tmp_path: Path,
) -> None:
    engine = audit_store(tmp_path / "audit.sqlite")
    statement = keyed_insert(engine)
    with pytest.raises(ValueError, match="constants"):
        BatchWriter(engine, statement, COLUMNS, 4, 1, constants={"not_a_column": 1})
    with pytest.raises(ValueError, match="constants"):
        BatchWriter(engine, statement, ["event_id"], 4, 1, constants={"event_id": "x"})
    writer = BatchWriter(engine, statement, COLUMNS, 4, 1)
    with pytest.raises(ValueError, match="fewer than the 12 rows"):
        writer.write(rows_table(10), 12)
    assert stored(tmp_path / "audit.sqlite") == []
    engine.dispose()
