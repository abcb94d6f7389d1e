"""Event ids are opaque: two ids that differ in any byte are two events, in every store and at
every step (dedup, the stored-row lookup, the audit trail's unique key). A store that compares
them loosely makes the run fail loudly, never report success with an event missing."""

from __future__ import annotations

import json
import re
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from connectors.database import open_engine, upgrade
from tests.conftest import MySQLDatabase, read_dataset, run_cli, run_pipeline

#: Pairs of distinct ids that MariaDB's default utf8mb4 collations (general_ci, unicode_ci) or
#: its padding utf8mb4_bin call equal.
LOOKALIKES = [
    "Case-ABC",
    "case-abc",  # case
    "pad",
    "pad ",  # trailing space
    "caf\u00e9",
    unicodedata.normalize("NFD", "caf\u00e9"),  # é composed and decomposed
    "cafe",  # an accent
    "\U0001f642",
    "\U0001f643",  # two emoji (general_ci weighs every supplementary character alike)
    "stra\u00dfe",
    "strasse",  # ß
    "nul\u0000a",
    "nul\u0000b",  # a NUL inside the id
]


def write_events(path: Path, ids: list[str], tokens: int = 10) -> Path:
    lines = [
        json.dumps(
            {
                "event_id": event_id,
                "event_time": "2025-07-01T12:00:00Z",
                "user_id": 1 + i,
                "operation_type": "chat",
                "model": "gpt-4o",
                "usage": {"input_tokens": tokens},
            }
        )
        for i, event_id in enumerate(ids)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def stored_ids(url_kind: str, out: Path, db: MySQLDatabase | None) -> list[str]:
    if url_kind == "sqlite":
        with sqlite3.connect(out / "audit.sqlite") as con:
            return sorted(row[0] for row in con.execute("SELECT event_id FROM ai_audit_trail"))
    assert db is not None
    return sorted(row[0] for row in db.query("SELECT event_id FROM ai_audit_trail"))


@pytest.fixture(params=["sqlite", "mariadb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, list[str], MySQLDatabase | None]:
    """(kind, extra CLI args, database) of a fresh audit store the pipeline user may write."""
    if request.param == "sqlite":
        return "sqlite", [], None
    db: MySQLDatabase = request.getfixturevalue("mysql_db")
    result = run_cli("db", "upgrade", "--audit-db", db.root_url)
    assert result.returncode == 0, result.stderr
    db.grant_pipeline_privileges()
    return "mariadb", ["--audit-db", db.url()], db


def test_ids_that_differ_in_any_byte_are_distinct_events(
    tmp_path: Path, store: tuple[str, list[str], MySQLDatabase | None]
) -> None:
    kind, args, db = store
    source = write_events(tmp_path / "in.jsonl", LOOKALIKES)
    summary = run_pipeline([source], tmp_path / "out", *args).summary()
    assert summary["events_processed"] == summary["audit_rows_inserted"] == len(LOOKALIKES)
    assert stored_ids(kind, tmp_path / "out", db) == sorted(LOOKALIKES)
    events = read_dataset(tmp_path / "out", "events", "event_id")
    assert sorted(e["event_id"] for e in events) == sorted(LOOKALIKES)

    # A replay finds each of them stored (exactly), and a differing copy of one conflicts with it alone.
    write_events(tmp_path / "again.jsonl", ["Case-ABC", "pad ", "\U0001f643"], tokens=99)
    again = run_pipeline([tmp_path / "again.jsonl"], tmp_path / "out", *args).summary()
    assert again["dead_letters_by_reason"] == {"conflicting_duplicate": 3}
    assert again["audit_rows_inserted"] == 0
    assert stored_ids(kind, tmp_path / "out", db) == sorted(LOOKALIKES)


def test_a_store_that_compares_ids_loosely_fails_the_run_instead_of_losing_an_event(
    tmp_path: Path, mysql_db: MySQLDatabase
) -> None:
    assert run_cli("db", "upgrade", "--audit-db", mysql_db.root_url).returncode == 0
    # A DBA "fixes" the column back to the server's default collation after the migration.
    mysql_db.query(
        "ALTER TABLE ai_audit_trail MODIFY event_id VARCHAR(128) CHARACTER SET utf8mb4 "
        "COLLATE utf8mb4_general_ci NOT NULL"
    )
    source = write_events(tmp_path / "in.jsonl", ["Case-ABC", "case-abc", "other"])
    result = run_cli("run", "--input", source, "--out", tmp_path / "out", "--audit-db", mysql_db.root_url)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(
        r"error: pipeline failed: AuditRowsLost: the audit store inserted \d+ of \d+ new rows", last
    )
    assert "'case-abc'" in last or "'Case-ABC'" in last
    assert not list((tmp_path / "out").glob("_runs/*.json"))  # no summary claims success


def test_migration_makes_an_existing_store_exact_and_keeps_its_rows(
    tmp_path: Path, mysql_db: MySQLDatabase
) -> None:
    mysql_db.query(f"ALTER DATABASE `{mysql_db.name}` CHARACTER SET latin1")  # a lax legacy default
    engine = open_engine(mysql_db.root_url)
    upgrade(engine, "0003_audit_payload_fingerprint")  # the store as the last release left it
    engine.dispose()
    mysql_db.query(
        "INSERT INTO ai_audit_trail (event_id, user_id, operation_type, created_at) "
        "VALUES ('Old-Event', 1, 'chat', '2025-07-01 00:00:00')"
    )
    assert run_cli("db", "upgrade", "--audit-db", mysql_db.root_url).returncode == 0

    collations = dict(
        mysql_db.query(
            "SELECT column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name IN ('ai_audit_trail', 'moderation_decisions') "
            "AND data_type IN ('char', 'varchar')",
            mysql_db.name,
        )
    )
    for column in (
        "event_id",
        "content_hash",
        "input_hash",
        "output_hash",
        "image_hash",
        "inputs_fingerprint",
    ):
        assert collations[column] == "utf8mb4_nopad_bin", column
    assert {c for name, c in collations.items() if name in ("model", "operation_type")} <= {
        "utf8mb4_general_ci",
        "utf8mb4_unicode_ci",
    }
    source = write_events(tmp_path / "in.jsonl", ["old-event", "\U0001f642 caf\u00e9"])
    run_pipeline([source], tmp_path / "out", "--audit-db", mysql_db.root_url)
    rows: list[Any] = mysql_db.query(
        "SELECT event_id, inputs_fingerprint IS NULL FROM ai_audit_trail ORDER BY 1"
    )
    assert rows == [("Old-Event", 1), ("old-event", 0), ("\U0001f642 caf\u00e9", 0)]
