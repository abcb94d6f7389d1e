"""Upgrading a store that already holds rows keeps them, resumes after an interruption, and says
truthfully what each process did."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import schemas
from connectors.database import head_version, open_engine, upgrade
from tests.conftest import ROOT, MySQLDatabase, run_cli


def seeded_store(kind: str, tmp_path: Path, db: MySQLDatabase) -> str:
    """A store at the seed's schema whose audit trail the application already filled."""
    url = f"sqlite:///{tmp_path / 'legacy.sqlite'}" if kind == "sqlite" else db.root_url
    engine = open_engine(url)
    upgrade(engine, "0001_seed")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO ai_audit_trail (user_id, operation_type, cost) "
            "VALUES (1, 'chat', 0.5), (2, 'image', 1.25)"
        )
    engine.dispose()
    return url


def audit_rows(kind: str, tmp_path: Path, db: MySQLDatabase) -> list[tuple[object, ...]]:
    sql = "SELECT id, event_id, user_id, operation_type FROM ai_audit_trail ORDER BY id"
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "legacy.sqlite") as con:
            return [tuple(r) for r in con.execute(sql)]
    return [tuple(r) for r in db.query(sql)]


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_rows_stored_before_the_pipeline_survive_every_migration(
    tmp_path: Path, mysql_db: MySQLDatabase, kind: str
) -> None:
    url = seeded_store(kind, tmp_path, mysql_db)
    result = run_cli("db", "upgrade", "--audit-db", url)
    assert result.returncode == 0, result.stderr
    assert f"schema version {head_version()} (upgraded from 0001_seed)" in result.stdout
    assert audit_rows(kind, tmp_path, mysql_db) == [
        (1, "legacy-audit-row-1", 1, "chat"),
        (2, "legacy-audit-row-2", 2, "image"),
    ]


def test_a_migration_interrupted_halfway_on_mysql_resumes(tmp_path: Path, mysql_db: MySQLDatabase) -> None:
    url = seeded_store("mariadb", tmp_path, mysql_db)
    # MySQL commits each DDL statement: an upgrade killed inside 0002 leaves some columns behind,
    # under the old version number.
    mysql_db.query(
        "ALTER TABLE ai_audit_trail ADD COLUMN event_id VARCHAR(128) NULL, ADD COLUMN model VARCHAR(100)"
    )
    result = run_cli("db", "upgrade", "--audit-db", url)
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in audit_rows("mariadb", tmp_path, mysql_db)] == [
        "legacy-audit-row-1",
        "legacy-audit-row-2",
    ]


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_of_processes_upgrading_one_fresh_store_at_once_one_says_it_migrated(
    tmp_path: Path, mysql_db: MySQLDatabase, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}" if kind == "sqlite" else mysql_db.root_url
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "runner.py"), "db", "upgrade", "--audit-db", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sum("(upgraded from empty)" in out for out in outputs) == 1, outputs
    assert sum("(already up to date)" in out for out in outputs) == 3, outputs


def test_an_event_whose_id_is_a_legacy_rows_is_a_conflict_not_lost(
    tmp_path: Path, mysql_db: MySQLDatabase
) -> None:
    url = seeded_store("sqlite", tmp_path, mysql_db)
    assert run_cli("db", "upgrade", "--audit-db", url).returncode == 0
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"event_id": "legacy-audit-row-1", "event_time": "2025-07-01T00:00:00Z", "user_id": 99, '
        '"operation_type": "image", "model": "gpt-4o"}\n'
    )
    result = run_cli("run", "--input", source, "--out", tmp_path / "out", "--audit-db", url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(next((tmp_path / "out" / "_runs").glob("*.json")).read_text())
    assert summary["dead_letters_by_reason"] == {"conflicting_duplicate": 1}
    assert audit_rows("sqlite", tmp_path, mysql_db)[0] == (1, "legacy-audit-row-1", 1, "chat")


# --- 0005: decision provenance and the review queue's index -----------------------------------

DECISION_PROVENANCE = {"categories", "scorer", "scorer_version"}
REVIEW_QUEUE_INDEX = "ix_moderation_decisions_review_queue"


def downgrade(engine: sa.Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(schemas.MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def decision_schema(engine: sa.Engine) -> tuple[set[str], set[str | None]]:
    inspector = sa.inspect(engine)
    columns = {c["name"] for c in inspector.get_columns("moderation_decisions")}
    return columns, {i["name"] for i in inspector.get_indexes("moderation_decisions")}


def test_0005_adds_decision_provenance_and_comes_off_again_keeping_every_decision(store_url: str) -> None:
    engine = open_engine(store_url)
    upgrade(engine, "0004_exact_keys_and_inputs")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO moderation_decisions (content_hash, decision, score, reviewed_by) "
                "VALUES ('h1', 'flagged', 0.5, NULL), ('h2', 'rejected', 0.9, 7)"
            )
        )
    kept = "SELECT content_hash, decision, reviewed_by FROM moderation_decisions ORDER BY 1"
    assert upgrade(engine).after == "0005_decision_provenance" == head_version()
    columns, indexes = decision_schema(engine)
    assert columns >= DECISION_PROVENANCE and REVIEW_QUEUE_INDEX in indexes
    with engine.connect() as conn:
        # Older rows: what fired, and who scored, is not known.
        assert conn.execute(
            sa.text("SELECT DISTINCT categories, scorer FROM moderation_decisions")
        ).all() == [(None, None)]
        before = conn.execute(sa.text(kept)).all()

    downgrade(engine, "0004_exact_keys_and_inputs")
    columns, indexes = decision_schema(engine)
    assert not DECISION_PROVENANCE & columns and REVIEW_QUEUE_INDEX not in indexes
    with engine.connect() as conn:
        assert conn.execute(sa.text(kept)).all() == before
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # still one row per content
        conn.execute(sa.text("INSERT INTO moderation_decisions (content_hash) VALUES ('h1')"))
    assert upgrade(engine).before == "0004_exact_keys_and_inputs"
    engine.dispose()


def test_0005_interrupted_halfway_on_mysql_resumes(mysql_db: MySQLDatabase) -> None:
    engine = open_engine(mysql_db.root_url)
    upgrade(engine, "0004_exact_keys_and_inputs")
    # MySQL commits each DDL statement: an upgrade killed inside 0005 leaves a column behind.
    mysql_db.query(
        "ALTER TABLE moderation_decisions ADD COLUMN categories VARCHAR(512) "
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL"
    )
    assert upgrade(engine).after == "0005_decision_provenance"
    columns, indexes = decision_schema(engine)
    assert columns >= DECISION_PROVENANCE and REVIEW_QUEUE_INDEX in indexes
    engine.dispose()


def test_the_review_queue_reads_its_index_in_order_without_a_sort(store_url: str) -> None:
    engine = open_engine(store_url)
    upgrade(engine)
    queue = (
        "SELECT content_hash FROM moderation_decisions WHERE decision = 'flagged' AND reviewed_by IS NULL "
        "ORDER BY reviewed_at, content_hash LIMIT 100"
    )
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {queue}"))
            assert REVIEW_QUEUE_INDEX in plan and "TEMP B-TREE" not in plan, plan
        else:
            [row] = conn.exec_driver_sql(f"EXPLAIN {queue}").mappings().all()
            assert row["key"] == REVIEW_QUEUE_INDEX and "filesort" not in str(row["Extra"]), row
    engine.dispose()
