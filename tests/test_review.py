"""Human review: a reviewer's decision is recorded (even before the pipeline decided), the queue
lists what no human has reviewed, oldest first, and the command line says what it did in one
line. Run against both the embedded SQLite store and the real MariaDB server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from connectors.database import open_engine, upgrade
from connectors.decision_sink import DecisionSink
from connectors.review import (
    MAX_REVIEWER_ID,
    ReviewedDecision,
    decision_of,
    record_review,
    review_queue,
)
from tests.conftest import MySQLDatabase, run_cli

SCORER = "aiep-text-moderation"
START = datetime(2025, 7, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(store_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def decide(engine: sa.Engine, *rows: tuple[str, str, str, list[str]]) -> None:
    """Automatic decisions ``(text, decision, score, categories)``, as the pipeline writes them."""
    texts, verdicts, scores, categories = zip(*rows, strict=True)
    DecisionSink(engine, batch_rows=3).write(
        "0",
        pa.table(
            {
                "content_hash": [content_hash(t) for t in texts],
                "decision": list(verdicts),
                "score": pa.array([Decimal(s) for s in scores], pa.decimal128(3, 2)),
                "categories": pa.array(list(categories), pa.list_(pa.string())),
                "scorer": [SCORER] * len(rows),
                "scorer_version": ["1.0"] * len(rows),
            }
        ),
    )


def decided_at(engine: sa.Engine, times: dict[str, datetime]) -> None:
    """Set when each text's automatic decision was made (as if runs had decided them then)."""
    table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        for text, at in times.items():
            conn.execute(
                table.update()
                .where(table.c.content_hash == content_hash(text))
                .values(reviewed_at=at.astimezone(UTC).replace(tzinfo=None))
            )


def test_a_review_keeps_the_automatic_evidence_and_records_who_and_when(engine: sa.Engine) -> None:
    decide(engine, ("spam", "flagged", "0.72", ["spam", "hate"]))
    at = datetime(2025, 7, 2, 11, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2)))
    reviewed = record_review(engine, content_hash("spam"), "rejected", MAX_REVIEWER_ID, now=at)
    assert reviewed == ReviewedDecision(
        content_hash=content_hash("spam"),
        decision="rejected",
        score=Decimal("0.72"),
        categories=("hate", "spam"),
        scorer=SCORER,
        scorer_version="1.0",
        reviewed_by=MAX_REVIEWER_ID,
        reviewed_at=datetime(2025, 7, 2, 9, 30, 15, tzinfo=UTC),  # UTC, whole seconds
    )
    assert decision_of(engine, content_hash("spam")) == reviewed
    assert review_queue(engine, "flagged") == []


def test_a_review_of_content_the_pipeline_never_decided_is_a_preemptive_row(engine: sa.Engine) -> None:
    assert decision_of(engine, content_hash("unseen")) is None
    block = record_review(engine, content_hash("unseen"), "rejected", 9, now=START)
    assert block == ReviewedDecision(content_hash("unseen"), "rejected", None, (), None, None, 9, START)
    again = record_review(engine, content_hash("unseen"), "approved", 10, now=START + timedelta(hours=1))
    assert (again.decision, again.reviewed_by) == ("approved", 10)  # the last reviewer wins
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT categories, COUNT(*) FROM moderation_decisions GROUP BY 1")
        ).all() == [("", 1)]


def test_the_queue_is_unreviewed_rows_of_one_decision_oldest_first(engine: sa.Engine) -> None:
    decide(
        engine,
        ("newest", "flagged", "0.90", ["hate"]),
        ("oldest", "flagged", "0.55", []),
        ("tie-a", "flagged", "0.60", ["pii_email"]),
        ("tie-b", "flagged", "0.61", []),
        ("reviewed", "flagged", "0.99", []),
        ("approved", "approved", "0.01", []),
    )
    noon = START + timedelta(hours=4)
    decided_at(
        engine,
        {
            "newest": noon + timedelta(hours=1),
            "oldest": START,
            "tie-a": noon,
            "tie-b": noon,
            "reviewed": START,
        },
    )
    record_review(engine, content_hash("reviewed"), "flagged", 3)  # reviewed: off the queue, though flagged
    ties = sorted([content_hash("tie-a"), content_hash("tie-b")])  # same time: by content_hash
    expected = [content_hash("oldest"), *ties, content_hash("newest")]
    queue = review_queue(engine, "flagged")
    assert [row.content_hash for row in queue] == expected
    assert queue[0].reviewed_at == START and queue[0].score == Decimal("0.55")
    assert [row.content_hash for row in review_queue(engine, "flagged", limit=2)] == expected[:2]
    assert [row.content_hash for row in review_queue(engine, "approved")] == [content_hash("approved")]
    assert review_queue(engine, "rejected", limit=1000) == []


HASH = content_hash("x")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: record_review(e, HASH, "maybe", 1), "decision must be one of approved, flagged, rejected"),
        (lambda e: record_review(e, HASH, "Approved", 1), "got 'Approved'"),
        (lambda e: record_review(e, HASH.upper(), "approved", 1), "64 lowercase hex digits"),
        (lambda e: record_review(e, HASH[:-1], "approved", 1), "64 lowercase hex digits"),
        (lambda e: record_review(e, HASH + "\n", "approved", 1), "64 lowercase hex digits"),
        (lambda e: record_review(e, HASH, "approved", 0), "reviewer id must be an integer from 1"),
        (lambda e: record_review(e, HASH, "approved", 2**63), "reviewer id must be an integer from 1"),
        (lambda e: record_review(e, HASH, "approved", True), "reviewer id"),
        (lambda e: record_review(e, HASH, "approved", 1, now=datetime(2025, 1, 1)), "timezone-aware"),
        (lambda e: review_queue(e, "pending"), "decision must be one of"),
        (lambda e: review_queue(e, "flagged", limit=0), "limit must be an integer from 1 to 1000"),
        (lambda e: review_queue(e, "flagged", limit=1001), "limit must be an integer from 1 to 1000"),
        (lambda e: decision_of(e, "' OR 1=1 --"), "64 lowercase hex digits"),
    ],
)
def test_bad_arguments_are_refused_before_the_store_is_touched(
    tmp_path: Path, call: Any, message: str
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    upgrade(engine)
    with pytest.raises(ValueError, match=message):
        call(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM moderation_decisions")).scalar() == 0


# --- the command line ----------------------------------------------------------------------------


def test_the_command_line_records_a_decision_and_lists_the_queue(engine: sa.Engine, store_url: str) -> None:
    decide(engine, ("a", "flagged", "0.70", ["pii_email", "hate"]), ("b", "flagged", "0.65", []))
    decided_at(engine, {"a": START, "b": START + timedelta(minutes=1)})

    listed = run_cli("review", "--audit-db", store_url, "--list", "flagged", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {
            "content_hash": content_hash("a"),
            "decision": "flagged",
            "score": "0.70",
            "categories": ["hate", "pii_email"],
            "scorer": SCORER,
            "scorer_version": "1.0",
            "decided_at": "2025-07-01T08:00:00Z",
        },
        {
            "content_hash": content_hash("b"),
            "decision": "flagged",
            "score": "0.65",
            "categories": [],
            "scorer": SCORER,
            "scorer_version": "1.0",
            "decided_at": "2025-07-01T08:01:00Z",
        },
    ]

    recorded = run_cli(
        "review", "--audit-db", store_url, content_hash("a"), "--decision", "approved", "--reviewer", "42"
    )
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.splitlines() == [f"{content_hash('a')}: flagged → approved (reviewer 42)"]
    row = decision_of(engine, content_hash("a"))
    assert row is not None and (row.decision, row.reviewed_by) == ("approved", 42)

    table = run_cli("review", "--audit-db", store_url, "--list", "flagged", "--limit", "5")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["content_hash", "decision", "score", "categories", "decided_at"]
    assert [line.split() for line in lines] == [
        [content_hash("b"), "flagged", "0.65", "2025-07-01T08:01:00Z"]
    ]


def test_the_command_line_records_a_preemptive_decision(engine: sa.Engine, store_url: str) -> None:
    result = run_cli(
        "review", "--audit-db", store_url, content_hash("new"), "--decision", "rejected", "--reviewer", "7"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{content_hash('new')}: none → rejected (reviewer 7; pre-emptive: no automatic decision yet)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([HASH, "--decision", "maybe", "--reviewer", "1"], "argument --decision: decision must be one of"),
        ([HASH, "--decision", "approved", "--reviewer", "-1"], "argument --reviewer: must be a whole number"),
        ([HASH, "--decision", "approved", "--reviewer", "0"], "argument --reviewer: reviewer id must be"),
        (["NOT-A-HASH", "--decision", "approved", "--reviewer", "1"], "argument CONTENT_HASH"),
        ([HASH, "--decision", "approved"], "--reviewer is required with CONTENT_HASH"),
        ([HASH, "--decision", "approved", "--reviewer", "1", "--limit", "3"], "--limit goes with --list"),
        (["--list", "flagged", "--decision", "approved"], "--list cannot go with --decision"),
        (["--list", "pending"], "argument --list: decision must be one of"),
        (
            ["--list", "flagged", "--limit", "1001"],
            "argument --limit: limit must be an integer from 1 to 1000",
        ),
        (["--list", "flagged", "--format", "xml"], "argument --format: must be table or json"),
        ([], "give CONTENT_HASH with --decision and --reviewer, or --list DECISION"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    store = tmp_path / "audit.sqlite"
    result = run_cli("review", "--audit-db", f"sqlite:///{store}", *args)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"runner.py review: error: {message}")
    assert not store.exists() and result.stdout == ""


@pytest.mark.parametrize("args", [["--list", "flagged"], [HASH, "--decision", "rejected", "--reviewer", "1"]])
def test_an_unreachable_store_exits_1_in_one_line_without_its_password(args: list[str]) -> None:
    result = run_cli("review", "--audit-db", "mysql+pymysql://u:s3cret@127.0.0.1:1/x", *args)
    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: audit store mysql+pymysql://u:***@127.0.0.1:1/x: OperationalError (2003)")


def test_a_store_that_does_not_exist_is_an_error_not_a_new_empty_one(tmp_path: Path) -> None:
    store = tmp_path / "typo.sqlite"
    result = run_cli("review", "--audit-db", f"sqlite:///{store}", "--list", "flagged")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: audit store sqlite:///{store}: FileNotFoundError: no audit store at {store}"
    ]
    assert not store.exists()


def test_an_older_store_is_upgraded_before_review(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    old = open_engine(url)
    upgrade(old, "0004_exact_keys_and_inputs")
    old.dispose()
    result = run_cli("review", "--audit-db", url, HASH, "--decision", "rejected", "--reviewer", "5")
    assert result.returncode == 0, result.stderr
    assert "none → rejected" in result.stdout


def test_the_pipelines_least_privilege_account_can_review(mysql_db: MySQLDatabase) -> None:
    engine = open_engine(mysql_db.root_url)
    upgrade(engine)  # by an admin, as the README says; the review account only reads the version
    decide(engine, ("a", "flagged", "0.70", ["hate"]))
    engine.dispose()
    mysql_db.grant_pipeline_privileges()
    url = mysql_db.url()
    recorded = run_cli(
        "review", "--audit-db", url, content_hash("a"), "--decision", "rejected", "--reviewer", "8"
    )
    listed = run_cli("review", "--audit-db", url, "--list", "flagged", "--format", "json")
    assert (recorded.returncode, listed.returncode) == (0, 0), recorded.stderr + listed.stderr
    assert "flagged → rejected (reviewer 8)" in recorded.stdout and json.loads(listed.stdout) == []
    assert mysql_db.password not in recorded.stdout + recorded.stderr + listed.stdout + listed.stderr
