"""A password never shows, however malformed the URL that carries it: redaction hides everything
between the user and the host, and a URL whose password would move the host is refused in one
line instead of connecting somewhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.database_url import redact, resolve_url
from tests.conftest import MySQLDatabase, read_dataset, run_cli

#: Characters that break a URL when a password holds them raw.
AWKWARD = "@:/%#?&=+ !\\\"'"


@given(st.text(alphabet=st.sampled_from(AWKWARD) | st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_redaction_never_shows_a_raw_password(secret: str) -> None:
    password = f"ZQX{secret}QXZ"  # a marker no other part of the URL holds
    for url in (
        f"mysql+pymysql://app:{password}@db.internal:3306/governance",
        f"mysql+pymysql://app:{password}@db.internal/governance?charset=utf8mb4",
        f"mysql://app:{password}@[::1]:3306/x",
    ):
        shown = redact(url)
        assert "ZQX" not in shown and "QXZ" not in shown, shown
        assert shown.startswith("mysql") and "***" in shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+pymysql://root:Secret@Part2@db:3306/x", "mysql+pymysql://root:***@db:3306/x"),
        ("mysql+pymysql://root:a@:/%#b@db:3306/x", "mysql+pymysql://root:***@db:3306/x"),
        (
            "mysql+pymysql://app@db/x?password=hunter2&charset=utf8mb4",
            "mysql+pymysql://app@db/x?password=***&charset=utf8mb4",
        ),
        ("sqlite:////data/a@b:c/audit.sqlite", "sqlite:////data/a@b:c/audit.sqlite"),
        ("not a url at all", "not a url at all"),
        ("app:Secret@db/x", "app:***@db/x"),  # the scheme forgotten
        ("mysql+pymysql:/app:Secret@db/x", "mysql+pymysql:/app:***@db/x"),  # one slash
        ("mysql+pymysql:///app:Secret@db/x", "mysql+pymysql:///app:***@db/x"),  # three
        ("mysql+pymysql://app@db/x?pass%77ord=Secret", "mysql+pymysql://app@db/x?pass%77ord=***"),
    ],
)
def test_redaction_of_malformed_urls(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_a_raw_at_in_the_password_is_refused_not_sent_to_another_host() -> None:
    with pytest.raises(ValueError, match="percent-encode") as raised:
        resolve_url("mysql+pymysql://root:Secret@Part2@db:3306/x")
    assert "Part2" not in str(raised.value) and "Secret" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:Secret@Part2@127.0.0.1:3306/aiep_nowhere",
        "mysql+pymysql://root:a@:/%#b@127.0.0.1:3306/aiep_nowhere",
        "mysql+pymysql://root:Secret.Part2@127.0.0.1:notaport/aiep_nowhere",
        "mysql+pymysql://nobody@127.0.0.1:3306/aiep_nowhere?password=Secret.Part2",
        "mysql+pymysql://nobody@127.0.0.1:3306/aiep_nowhere?pass%77ord=Secret.Part2",
        "nobody:Secret.Part2@127.0.0.1/aiep_nowhere",
        "mysql+pymysql:///nobody:Secret.Part2@127.0.0.1:3306/aiep_nowhere",
        "mysql+pymysql://nobody:Secret.Part2@127.0.0.1:3306",  # no database
        "mysql+pymysql://nobody:Secret.Part2@127.0.0.1:3306/aiep%0Anowhere",  # a newline in a name
        "mysql+pymysql://root:Secret@127.0.0.2/Part2@127.0.0.1:3306/aiep_nowhere",  # '@' and '/' raw
        "mysql+pymysql://ro/ot:Secret.Part2@127.0.0.1:3306/aiep_nowhere",  # a '/' in the user
    ],
)
@pytest.mark.parametrize("command", ["run", "db upgrade", "db status"])
def test_a_malformed_url_fails_in_one_line_that_shows_no_part_of_the_password(
    tmp_path: Path, url: str, command: str
) -> None:
    (tmp_path / "in.jsonl").write_text("{}\n")
    args = [*command.split(), "--audit-db", url]
    if command == "run":
        args += ["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]
    result = run_cli(*args)
    assert result.returncode == 1
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything and len(result.stderr.strip().splitlines()) == 1, everything
    for part in ("Secret", "Part2", "a@:", "%#b"):
        assert part not in everything, everything


def test_an_in_memory_sqlite_store_is_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("{}\n")
    result = run_cli(
        "run", "--input", tmp_path / "in.jsonl", "--out", tmp_path / "out", "--audit-db", "sqlite://"
    )
    assert result.returncode == 1 and "in-memory SQLite store" in result.stderr.strip().splitlines()[-1]


def test_db_status_of_a_missing_sqlite_file_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("db", "status", "--audit-db", f"sqlite:///{tmp_path / 'nope.sqlite'}")
    assert result.returncode == 1 and "no audit store at" in result.stderr
    assert not (tmp_path / "nope.sqlite").exists()


def test_a_password_beyond_ascii_logs_in(mysql_db: MySQLDatabase, tmp_path: Path) -> None:
    password = "p\u00e4ssw\u00f6rd\u20ac\u2713"
    mysql_db.query(f"ALTER USER '{mysql_db.user}'@'%%' IDENTIFIED BY %s", password)
    mysql_db.query(f"GRANT ALL ON `{mysql_db.name}`.* TO '{mysql_db.user}'@'%'")
    mysql_db.password = password
    for env, target in (({}, mysql_db.url()), ({"AIEP_MYSQL_PASSWORD": password}, mysql_db.url(False))):
        result = run_cli("db", "upgrade", "--audit-db", target, env=env)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr


def test_a_hmac_key_that_is_not_utf8_is_used_as_its_bytes(tmp_path: Path) -> None:
    import hashlib
    import hmac
    import os

    key = b"\xff\xfe-raw-key"
    (tmp_path / "in.jsonl").write_text(
        '{"event_id": "k", "event_time": "2025-07-01T00:00:00Z", "user_id": 1, "operation_type": "chat", '
        '"model": "gpt-4o", "input": {"text": "hi"}}\n'
    )
    (tmp_path / "hmac.toml").write_text('[hashing]\nmode = "hmac-sha256"\n')
    env = {k: v for k, v in os.environ.items()} | {"AIEP_HMAC_KEY": os.fsdecode(key)}
    result = run_cli(
        "run",
        "--input",
        tmp_path / "in.jsonl",
        "--out",
        tmp_path / "out",
        "--config",
        tmp_path / "hmac.toml",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (row,) = read_dataset(tmp_path / "out", "events", "event_id")
    assert row["input_hash"] == hmac.new(key, b"hi", hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:Secret@127.0.0.2/Part2@127.0.0.1:3306/db",
        "mysql+pymysql://root:Sec@ret/Part2@127.0.0.1/db",
        "mysql+pymysql://ro/ot:Secret@127.0.0.1:3306/db",
    ],
)
def test_a_url_that_could_name_another_host_is_refused_before_connecting(url: str) -> None:
    with pytest.raises(ValueError, match="percent-encode") as raised:
        resolve_url(url)
    assert "Secret" not in str(raised.value) and "Part2" not in str(raised.value)


def test_raw_slash_colon_and_hash_in_a_password_are_read_as_they_are() -> None:
    parsed = resolve_url("mysql+pymysql://app:a/b:c#d?e@db.internal:3306/governance")
    assert (parsed.password, parsed.host, parsed.database) == ("a/b:c#d?e", "db.internal", "governance")
