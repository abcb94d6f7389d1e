"""MySQL/MariaDB as the system of record, against the real server: migrations, users, idempotent
batched sinks, least-privilege grants, and a password that never leaks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.database import head_version
from tests.conftest import MySQLDatabase, read_dataset, run_cli, run_pipeline

pytestmark = pytest.mark.usefixtures("mysql_server")


def upgrade(db: MySQLDatabase) -> str:
    result = run_cli("db", "upgrade", "--audit-db", db.root_url)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def columns(db: MySQLDatabase, table: str) -> dict[str, str]:
    rows = db.query(
        "SELECT column_name, column_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s",
        db.name,
        table,
    )
    return {name: kind for name, kind in rows}


def test_migrations_apply_the_seed_ddl_and_a_second_run_changes_nothing(mysql_db: MySQLDatabase) -> None:
    first = upgrade(mysql_db)
    assert "no users table: creating a minimal users" in first
    assert "upgraded from empty" in first
    audit = columns(mysql_db, "ai_audit_trail")
    assert audit["id"] == "bigint(20) unsigned" and audit["user_id"] == "bigint(20) unsigned"
    assert (audit["operation_type"], audit["input_hash"], audit["cost"]) == (
        "varchar(50)",
        "char(64)",
        "decimal(10,6)",
    )
    assert audit["created_at"] == "timestamp" and audit["event_id"] == "varchar(128)"
    decisions = columns(mysql_db, "moderation_decisions")
    assert (
        decisions["decision"] == "enum('approved','flagged','rejected')"
        and decisions["score"] == "decimal(3,2)"
    )
    assert columns(mysql_db, "users")["ai_tier"] == "enum('free','pro','enterprise')"
    schema_before = mysql_db.query(
        "SELECT table_name, column_name, column_type, column_key FROM information_schema.columns "
        "WHERE table_schema = %s ORDER BY 1, 2",
        mysql_db.name,
    )
    second = upgrade(mysql_db)
    assert "already up to date" in second and "creating" not in second
    assert schema_before == mysql_db.query(
        "SELECT table_name, column_name, column_type, column_key FROM information_schema.columns "
        "WHERE table_schema = %s ORDER BY 1, 2",
        mysql_db.name,
    )
    status = run_cli("db", "status", "--audit-db", mysql_db.root_url)
    assert status.returncode == 0 and f"schema version {head_version()}" in status.stdout
    assert "(up to date)" in status.stdout


def test_an_existing_users_table_is_altered_not_replaced(mysql_db: MySQLDatabase) -> None:
    mysql_db.query("CREATE TABLE users (id BIGINT UNSIGNED PRIMARY KEY, email VARCHAR(200))")
    mysql_db.query("INSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com')")
    output = upgrade(mysql_db)
    assert "creating a minimal users" not in output
    assert mysql_db.query("SELECT id, email, ai_tier, personalization_prefs FROM users ORDER BY id") == [
        (1, "a@example.com", "free", None),
        (2, "b@example.com", "free", None),
    ]


def _events(path: Path, specs: list[tuple[str, int, str | None]], seconds_apart: int = 1) -> Path:
    lines = []
    for i, (event_id, user_id, tier) in enumerate(specs):
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_time": f"2025-07-03T09:00:{i * seconds_apart % 60:02d}Z",
            "user_id": user_id,
            "operation_type": "chat_completion",
            "model": "gpt-4o-mini",
            "input": {"text": f"question {i}"},
            "usage": {"input_tokens": 100 + i, "output_tokens": 50},
        }
        if tier:
            event["ai_tier"] = tier
        lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tiers_come_from_users_when_events_name_none(mysql_db: MySQLDatabase, tmp_path: Path) -> None:
    upgrade(mysql_db)
    mysql_db.query(
        "INSERT INTO users (id, ai_tier, personalization_prefs) VALUES "
        "(10, 'free', '{\"topics\": [\"go\"]}'), (20, 'pro', NULL), (30, 'enterprise', '[1, 2]'), "
        "(40, 'pro', '\"just a string\"')"
    )
    mysql_db.grant_pipeline_privileges()
    specs = [(f"{user}-{i}", user, None) for user in (10, 20, 30, 40, 50) for i in range(4)]
    specs += [("20-own-tier-a", 20, "free"), ("20-own-tier-b", 20, "free")]
    config = tmp_path / "quotas.toml"
    config.write_text("[rate_limit]\nquotas = { free = 1, pro = 2, enterprise = 3 }\n")
    result = run_pipeline(
        [_events(tmp_path / "in.jsonl", specs)],
        tmp_path / "out",
        "--audit-db",
        mysql_db.url(),
        "--config",
        config,
    )
    events = {e["event_id"]: e for e in read_dataset(tmp_path / "out", "events", "event_id")}
    assert {
        (e["user_id"], e["ai_tier"], e["tier_source"])
        for e in events.values()
        if e["user_id"] != 20 or "own" not in e["event_id"]
    } == {
        (10, "free", "users"),
        (20, "pro", "users"),
        (30, "enterprise", "users"),
        (40, "pro", "users"),
        (50, "free", "default"),
    }
    assert (events["20-own-tier-a"]["ai_tier"], events["20-own-tier-a"]["tier_source"]) == ("free", "event")
    limited = {
        user: sum(e["rate_limited"] for e in events.values() if e["user_id"] == user)
        for user in (10, 30, 40, 50)
    }
    assert limited == {10: 3, 30: 1, 40: 2, 50: 3}
    # Prefs of the wrong shape (MariaDB only stores valid JSON) are logged and ignored; the run goes on.
    assert "user 30: personalization_prefs is list, not an object; ignored" in result.stderr
    assert "user 40: personalization_prefs is str, not an object; ignored" in result.stderr
    assert mysql_db.query("SELECT ai_tier, count(*) FROM ai_audit_trail GROUP BY ai_tier ORDER BY 1") == [
        ("enterprise", 4),
        ("free", 10),
        ("pro", 8),
    ]


def _audit_rows(db: MySQLDatabase) -> list[tuple[Any, ...]]:
    return db.query(
        "SELECT event_id, user_id, operation_type, input_hash, output_hash, cost, created_at, model, "
        "ai_tier, cost_status, rate_limited, image_hash, hash_mode FROM ai_audit_trail ORDER BY event_id"
    )


@pytest.fixture(scope="module")
def generated_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    source = tmp_path_factory.mktemp("mysql-gen") / "events.jsonl"
    result = run_cli("generate", "--events", 3000, "--out", source, "--seed", 5, "--images")
    assert result.returncode == 0, result.stderr
    return source, json.loads(Path(f"{source}.manifest.json").read_text())


def test_replays_and_overlapping_halves_store_each_event_once(
    mysql_server: tuple[str, int], generated_events: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from tests.conftest import drop_database, make_database

    source, manifest = generated_events
    # Quotas nobody reaches: rate limits depend on which events share a run, the rest must not.
    config = tmp_path / "no-limits.toml"
    config.write_text("[rate_limit]\nquotas = { free = 100000, pro = 100000, enterprise = 100000 }\n")
    whole, halves = make_database(*mysql_server), make_database(*mysql_server)
    try:
        for db in (whole, halves):
            upgrade(db)
            db.grant_pipeline_privileges()
        run_pipeline([source], tmp_path / "a", "--audit-db", whole.url(), "--config", config)
        once = _audit_rows(whole)
        replay = run_pipeline([source], tmp_path / "b", "--audit-db", whole.url(), "--config", config)
        assert _audit_rows(whole) == once
        assert len(once) == manifest["valid_unique"] and replay.summary()["audit_rows_inserted"] == 0

        lines = source.read_bytes().splitlines(keepends=True)
        cut_a, cut_b = len(lines) * 2 // 5, len(lines) * 3 // 5
        first, second = source.parent / "first.jsonl", source.parent / "second.jsonl"
        first.write_bytes(b"".join(lines[:cut_b]))
        second.write_bytes(b"".join(lines[cut_a:]))
        run_pipeline([first], tmp_path / "c", "--audit-db", halves.url(), "--config", config)
        run_pipeline([second], tmp_path / "d", "--audit-db", halves.url(), "--config", config)
        assert _audit_rows(halves) == once
    finally:
        drop_database(whole)
        drop_database(halves)


def test_password_round_trips_and_never_shows(mysql_db: MySQLDatabase, tmp_path: Path) -> None:
    from urllib.parse import quote

    upgrade(mysql_db)
    mysql_db.grant_pipeline_privileges()
    source = _events(tmp_path / "in.jsonl", [("pw-1", 1, "pro"), ("pw-2", 2, None)])
    in_url = run_pipeline([source], tmp_path / "a", "--audit-db", mysql_db.url())
    from_env = run_pipeline(
        [source],
        tmp_path / "b",
        "--audit-db",
        mysql_db.url(with_password=False),
        env={"AIEP_MYSQL_PASSWORD": mysql_db.password},
    )
    wrong = run_cli(
        "run",
        "--input",
        source,
        "--out",
        tmp_path / "c",
        "--audit-db",
        mysql_db.url(with_password=False),
        env={"AIEP_MYSQL_PASSWORD": "wrong:p@ss%"},
    )
    assert wrong.returncode == 1 and "Access denied" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert mysql_db.query("SELECT count(*) FROM ai_audit_trail") == [(2,)]
    status = run_cli("db", "status", "--audit-db", mysql_db.url())
    everything = "".join(
        [r.stdout + r.stderr for r in (in_url, from_env, wrong, status)]
        + [p.read_text() for p in tmp_path.glob("*/_runs/*.json")]
    )
    assert "***" in everything
    for secret in (mysql_db.password, quote(mysql_db.password, safe=""), "wrong:p@ss%"):
        assert secret not in everything
    help_text = run_cli("run", "--help").stdout + run_cli("db", "upgrade", "--help").stdout
    assert mysql_db.password not in help_text


def test_least_privilege_user_cannot_change_the_schema(mysql_db: MySQLDatabase) -> None:
    upgrade(mysql_db)
    mysql_db.grant_pipeline_privileges()
    import pymysql

    con = pymysql.connect(
        host=mysql_db.host,
        port=mysql_db.port,
        user=mysql_db.user,
        password=mysql_db.password,
        database=mysql_db.name,
    )
    try:
        with con.cursor() as cur, pytest.raises(pymysql.err.OperationalError, match="denied"):
            cur.execute("DROP TABLE ai_audit_trail")
    finally:
        con.close()


def test_a_database_error_ends_the_run_with_one_line_naming_it(
    mysql_db: MySQLDatabase, tmp_path: Path
) -> None:
    upgrade(mysql_db)
    mysql_db.grant_pipeline_privileges()
    mysql_db.query(f"REVOKE SELECT ON `{mysql_db.name}`.`users` FROM '{mysql_db.user}'@'%'")
    source = _events(tmp_path / "in.jsonl", [(f"deny-{i}", i + 1, None) for i in range(50)])
    result = run_cli("run", "--input", source, "--out", tmp_path / "out", "--audit-db", mysql_db.url())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [text for text in result.stderr.splitlines() if text.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: pipeline failed: OperationalError (1142)") and "denied" in line
