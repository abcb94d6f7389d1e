"""Human review of moderation decisions: record a reviewer's decision, list the queue, read one.

The functions take a SQLAlchemy engine of an audit store at the newest schema (``database.upgrade``)
and nothing else: no command line, no dataflow engine. ``runner.py review`` calls them, and so
can any other front end. Every database call runs in one transaction retried on transient
errors (``database.in_transaction``, the project's one retry policy). Arguments are checked
before the database is touched: a bad one is a ValueError that says what was expected.

A human decision is final for the pipeline: ``DecisionSink`` never changes a row whose
``reviewed_by`` is set; only another ``record_review`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from connectors.database import dialect, in_transaction
from transforms.decision_categories import categories_of

#: The decisions a row may hold (the column's ENUM).
DECISIONS = ("approved", "flagged", "rejected")
#: Reviewer ids are positive and fit every store's ``reviewed_by`` (SQLite's INTEGER is signed).
MAX_REVIEWER_ID = 2**63 - 1
#: The decisions a human is asked to look at: the review queue holds those no human reviewed yet.
REVIEWED_DECISIONS = ("flagged", "rejected")
#: The most rows one ``review_queue`` call returns.
MAX_QUEUE_ROWS = 1000
_CONTENT_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ReviewedDecision:
    """One ``moderation_decisions`` row, as a reviewer sees it.

    ``reviewed_by`` is None for an automatic decision, whose ``reviewed_at`` is when it was
    decided; for a human one, who reviewed it and when. ``score``, ``scorer`` and
    ``scorer_version`` are None on a human's pre-emptive decision (no automatic one before it).
    """

    content_hash: str
    decision: str
    score: Decimal | None
    #: The categories that fired, sorted; empty when none did (or not known, on older rows).
    categories: tuple[str, ...]
    scorer: str | None
    scorer_version: str | None
    reviewed_by: int | None
    #: UTC, whole seconds; None only on rows stored before decisions kept their time.
    reviewed_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON: the score as its exact decimal text, the time as ISO 8601 UTC."""
        return {
            "content_hash": self.content_hash,
            "decision": self.decision,
            "score": None if self.score is None else str(self.score),
            "categories": list(self.categories),
            "scorer": self.scorer,
            "scorer_version": self.scorer_version,
            "reviewed_by": self.reviewed_by,
            "reviewed_at": None if self.reviewed_at is None else f"{self.reviewed_at:%Y-%m-%dT%H:%M:%SZ}",
        }


def check_content_hash(content_hash: object) -> None:
    """ValueError unless ``content_hash`` is 64 lowercase hex digits (a SHA-256 hex digest)."""
    if not isinstance(content_hash, str) or not _CONTENT_HASH.fullmatch(content_hash):
        raise ValueError(f"content hash must be 64 lowercase hex digits (SHA-256); got {content_hash!r}")


def check_decision(decision: object) -> None:
    """ValueError unless ``decision`` is one of :data:`DECISIONS`."""
    if decision not in DECISIONS or not isinstance(decision, str):
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}; got {decision!r}")


def check_reviewer(reviewer_id: object) -> None:
    """ValueError unless ``reviewer_id`` is an integer from 1 to 2**63 - 1."""
    if type(reviewer_id) is not int or not 1 <= reviewer_id <= MAX_REVIEWER_ID:
        raise ValueError(f"reviewer id must be an integer from 1 to {MAX_REVIEWER_ID}; got {reviewer_id!r}")


def check_queue_limit(limit: object) -> None:
    """ValueError unless ``limit`` is an integer from 1 to :data:`MAX_QUEUE_ROWS`."""
    if type(limit) is not int or not 1 <= limit <= MAX_QUEUE_ROWS:
        raise ValueError(f"limit must be an integer from 1 to {MAX_QUEUE_ROWS}; got {limit!r}")


def record_review(
    engine: sa.Engine,
    content_hash: str,
    decision: str,
    reviewer_id: int,
    *,
    now: datetime | None = None,
    retry_attempts: int = 8,
) -> ReviewedDecision:
    """Record a human's decision on a content: ``decision``, ``reviewed_by`` and ``reviewed_at``.

    The row keeps its automatic score, categories and scorer. Content with no decision yet gets
    a row of its own (a *pre-emptive* decision, e.g. a block before the pipeline saw it):
    ``score``, ``scorer`` and ``scorer_version`` NULL, ``categories`` empty. A later automatic
    decision never changes the row; a later ``record_review`` does (the last reviewer wins).

    Args:
        engine: the audit store, at the newest schema.
        content_hash: the content's SHA-256, 64 lowercase hex digits.
        decision: one of :data:`DECISIONS`.
        reviewer_id: the reviewer's user id, 1 to 2**63 - 1.
        now: when it was reviewed (timezone-aware; default: now); stored in UTC, whole seconds.
        retry_attempts: tries of the transaction on transient errors.

    Returns:
        The row as stored.

    Raises:
        ValueError: a bad argument, before anything is written.
    """
    check_content_hash(content_hash)
    check_decision(decision)
    check_reviewer(reviewer_id)
    reviewed_at = _stored_time(now or datetime.now(UTC))

    def review(conn: sa.Connection) -> ReviewedDecision:
        table = _decisions_table(conn)
        values = {"decision": decision, "reviewed_by": reviewer_id, "reviewed_at": reviewed_at}
        new_row = {"content_hash": content_hash, "categories": "", **values}
        if dialect(engine) == "sqlite":
            lite = sqlite.insert(table).values(new_row)
            conn.execute(lite.on_conflict_do_update(index_elements=["content_hash"], set_=values))
        else:
            conn.execute(mysql.insert(table).values(new_row).on_duplicate_key_update(values))
        row = conn.execute(_rows(table).where(table.c.content_hash == content_hash)).one()
        return _reviewed_decision(row)

    return in_transaction(engine, review, retry_attempts)


def review_queue(
    engine: sa.Engine, decision: str = "flagged", limit: int = 100, *, retry_attempts: int = 8
) -> list[ReviewedDecision]:
    """Decisions no human has reviewed yet, oldest first (by ``reviewed_at``, the time it was
    decided, then ``content_hash``); at most ``limit`` (1 to 1000).

    Rows stored before decisions kept their time (``reviewed_at`` NULL) come first. The index of
    migration 0005 serves the query in order, so a long queue costs no sort.
    """
    check_decision(decision)
    check_queue_limit(limit)

    def queue(conn: sa.Connection) -> list[ReviewedDecision]:
        table = _decisions_table(conn)
        statement = (
            _rows(table)
            .where(table.c.decision == decision, table.c.reviewed_by.is_(None))
            .order_by(table.c.reviewed_at, table.c.content_hash)
            .limit(limit)
        )
        return [_reviewed_decision(row) for row in conn.execute(statement)]

    return in_transaction(engine, queue, retry_attempts, commit=False)


@dataclass(frozen=True)
class QueueSize:
    """How many decisions of one kind await a human, and since when."""

    decision: str
    awaiting_review: int
    #: When the oldest of them was decided (UTC); None when none waits, or it predates decision times.
    oldest_decided_at: datetime | None


def queue_sizes(engine: sa.Engine, *, retry_attempts: int = 8) -> list[QueueSize]:
    """The review queue's size for each decision a human should look at (flagged, rejected)."""

    def sizes(conn: sa.Connection) -> list[QueueSize]:
        table = _decisions_table(conn)
        statement = (
            sa.select(
                table.c.decision,
                sa.func.count(),
                sa.func.min(table.c.reviewed_at, type_=table.c.reviewed_at.type),
            )
            .where(table.c.decision.in_(REVIEWED_DECISIONS), table.c.reviewed_by.is_(None))
            .group_by(table.c.decision)
        )
        found = {row[0]: (int(row[1]), row[2]) for row in conn.execute(statement)}
        return [
            QueueSize(
                decision,
                found.get(decision, (0, None))[0],
                None if (at := found.get(decision, (0, None))[1]) is None else at.replace(tzinfo=UTC),
            )
            for decision in REVIEWED_DECISIONS
        ]

    return in_transaction(engine, sizes, retry_attempts, commit=False)


def decision_of(engine: sa.Engine, content_hash: str, *, retry_attempts: int = 8) -> ReviewedDecision | None:
    """The stored decision on a content, automatic or human; None if it has none."""
    check_content_hash(content_hash)

    def one(conn: sa.Connection) -> ReviewedDecision | None:
        table = _decisions_table(conn)
        row = conn.execute(_rows(table).where(table.c.content_hash == content_hash)).first()
        return None if row is None else _reviewed_decision(row)

    return in_transaction(engine, one, retry_attempts, commit=False)


def _stored_time(at: datetime) -> datetime:
    """``at`` as the store keeps it: UTC without a zone (sessions run in UTC), whole seconds
    (MySQL's TIMESTAMP holds no fraction; SQLite is made to match)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"review time must be timezone-aware; got {at!r}")
    return at.astimezone(UTC).replace(microsecond=0, tzinfo=None)


def _decisions_table(conn: sa.Connection) -> sa.Table:
    return sa.Table("moderation_decisions", sa.MetaData(), autoload_with=conn)


def _rows(table: sa.Table) -> sa.Select[Any]:
    """The columns a ``ReviewedDecision`` holds, by its field names."""
    return sa.select(*(table.c[field.name] for field in fields(ReviewedDecision)))


def _reviewed_decision(row: sa.Row[Any]) -> ReviewedDecision:
    values = row._asdict()
    at = values["reviewed_at"]
    return ReviewedDecision(
        **{
            **values,
            "score": None if values["score"] is None else Decimal(values["score"]).quantize(Decimal("0.01")),
            "categories": categories_of(values["categories"]),
            "reviewed_at": None if at is None else at.replace(tzinfo=UTC),
        }
    )
