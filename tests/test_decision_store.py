"""moderation_decisions: one row per content hash; an automatic decision never overwrites a human one,
and a replay of the same decisions changes nothing, not even the decision time.
Run against both the embedded SQLite store and the real MariaDB server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from connectors.database import open_engine, upgrade
from connectors.decision_sink import DecisionSink
from connectors.review import decision_of, record_review

SCORER = "aiep-text-moderation"
#: A time long before any test runs, to see whether a write moved ``reviewed_at``.
LONG_AGO = datetime(2020, 1, 1, 12, 0, 0)


@pytest.fixture
def engine(store_url: str) -> Iterator[sa.Engine]:
    engine = open_engine(store_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def decisions(*rows: tuple[Any, ...]) -> pa.Table:
    """Rows of ``(content_hash, decision, score, categories[, scorer_version])``; version 1.0 unless given."""
    full = [row if len(row) == 5 else (*row, "1.0") for row in rows]
    hashes, verdicts, scores, categories, versions = zip(*full, strict=True)
    return pa.table(
        {
            "content_hash": pa.array(hashes),
            "decision": pa.array(verdicts),
            "score": pa.array([Decimal(s) for s in scores], pa.decimal128(3, 2)),
            "categories": pa.array(list(categories), pa.list_(pa.string())),
            "scorer": pa.array([SCORER] * len(rows)),
            "scorer_version": pa.array(versions),
        }
    )


def stored(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    """``content_hash -> (decision, score, categories, reviewed_by)`` of every row."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT content_hash, decision, score, categories, reviewed_by FROM moderation_decisions")
        )
        return {r[0]: (r[1], Decimal(str(r[2])).quantize(Decimal("0.01")), r[3], r[4]) for r in rows}


def decided_at(engine: sa.Engine, key: str) -> datetime:
    table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        at: datetime = conn.execute(
            sa.select(table.c.reviewed_at).where(table.c.content_hash == key)
        ).scalar_one()
    return at


def backdate(engine: sa.Engine) -> None:
    """Every row decided ``LONG_AGO``, as if an earlier run had written it."""
    table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(table.update().values(reviewed_at=LONG_AGO))


def test_automatic_decisions_upsert_but_never_overwrite_a_human_review(engine: sa.Engine) -> None:
    writer = DecisionSink(engine, batch_rows=2)
    hostile = "h'; DROP TABLE moderation_decisions; --"
    writer.write(
        "0",
        decisions(
            ("h1", "approved", "0.10", []),
            ("h2", "flagged", "0.60", ["pii_email", "hate"]),
            (hostile, "approved", "0.01", ["x'); --"]),
        ),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE moderation_decisions SET decision = 'rejected', reviewed_by = 7 "
                "WHERE content_hash = 'h2'"
            )
        )
    later = decisions(
        ("h1", "flagged", "0.70", ["hate"]), ("h2", "approved", "0.05", []), ("h3", "rejected", "0.99", [])
    )
    writer.write("0", later)
    assert stored(engine) == {
        "h1": ("flagged", Decimal("0.70"), "hate", None),  # automatic: updated
        "h2": ("rejected", Decimal("0.60"), "hate,pii_email", 7),  # human: kept, all of it
        "h3": ("rejected", Decimal("0.99"), "", None),  # none fired: empty, not NULL
        hostile: ("approved", Decimal("0.01"), "x'); --", None),  # values are bound, never spliced
    }


def test_an_automatic_row_records_its_categories_scorer_and_decision_time(engine: sa.Engine) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    DecisionSink(engine, batch_rows=10).write(
        "0", decisions((content_hash("a"), "flagged", "0.91", ["pii_email", "hate", "hate"], "2.3.1"))
    )
    row = decision_of(engine, content_hash("a"))
    assert row is not None
    assert (row.decision, row.score, row.categories) == ("flagged", Decimal("0.91"), ("hate", "pii_email"))
    assert (row.scorer, row.scorer_version, row.reviewed_by) == (SCORER, "2.3.1", None)
    assert row.reviewed_at is not None and before <= row.reviewed_at <= datetime.now(UTC)


def test_a_replay_changes_nothing_not_even_the_decision_time(engine: sa.Engine) -> None:
    writer = DecisionSink(engine, batch_rows=2)
    run = decisions(
        ("h1", "approved", "0.10", []),
        ("h2", "flagged", "0.60", ["pii_email", "hate"]),
        ("h3", "flagged", "1", []),
    )
    assert writer.write("0", run).counts == {"decision_rows_changed": 3}
    backdate(engine)
    replay = decisions(
        ("h1", "approved", "0.1", []),
        ("h2", "flagged", "0.60", ["hate", "pii_email"]),
        ("h3", "flagged", "1.00", []),
    )
    assert writer.write("0", replay).counts == {"decision_rows_changed": 0}
    assert {decided_at(engine, key) for key in ("h1", "h2", "h3")} == {LONG_AGO}


@pytest.mark.parametrize(
    "change",
    [
        ("h1", "flagged", "0.10", ["hate"], "1.0"),
        ("h1", "approved", "0.11", ["hate"], "1.0"),
        ("h1", "approved", "0.10", ["Hate"], "1.0"),  # names compare exactly, case included
        ("h1", "approved", "0.10", [], "1.0"),
        ("h1", "approved", "0.10", ["hate"], "1.1"),
    ],
    ids=["decision", "score", "categories-case", "categories", "scorer_version"],
)
def test_a_changed_decision_moves_its_time(engine: sa.Engine, change: tuple[Any, ...]) -> None:
    writer = DecisionSink(engine, batch_rows=2)
    writer.write("0", decisions(("h1", "approved", "0.10", ["hate"], "1.0"), ("h2", "flagged", "0.50", [])))
    backdate(engine)
    changed = writer.write("0", decisions(change, ("h2", "flagged", "0.50", []))).counts
    # MySQL/MariaDB count an updated row 2 (their affected-rows convention), SQLite 1.
    assert changed["decision_rows_changed"] == (1 if engine.dialect.name == "sqlite" else 2)
    assert decided_at(engine, "h1") > LONG_AGO + timedelta(days=365)
    assert decided_at(engine, "h2") == LONG_AGO


def test_a_later_automatic_run_never_overwrites_a_human_review(engine: sa.Engine) -> None:
    reviewed, preempted, automatic = content_hash("reviewed"), content_hash("preempted"), content_hash("auto")
    writer = DecisionSink(engine, batch_rows=2)
    writer.write("0", decisions((reviewed, "flagged", "0.60", ["hate"]), (automatic, "flagged", "0.60", [])))
    at = datetime(2025, 7, 1, 9, 30, tzinfo=UTC)
    human = record_review(engine, reviewed, "approved", 42, now=at)
    block = record_review(engine, preempted, "rejected", 43, now=at)
    later = decisions(
        (reviewed, "rejected", "0.99", ["violence"], "9.9"),
        (preempted, "approved", "0.01", [], "9.9"),
        (automatic, "approved", "0.05", [], "9.9"),
    )
    changed = writer.write("0", later).counts["decision_rows_changed"]
    assert changed == (1 if engine.dialect.name == "sqlite" else 2)  # only the automatic row
    assert decision_of(engine, reviewed) == human
    assert decision_of(engine, preempted) == block
    assert (human.decision, human.reviewed_by, human.reviewed_at) == ("approved", 42, at)
    assert (human.score, human.categories, human.scorer) == (Decimal("0.60"), ("hate",), SCORER)
    stored_automatic = decision_of(engine, automatic)
    assert stored_automatic is not None and stored_automatic.decision == "approved"


@pytest.mark.parametrize("name", ["a,b", "", None])
def test_a_category_name_the_column_cannot_hold_is_refused_with_its_content_hash(
    engine: sa.Engine, name: str | None
) -> None:
    with pytest.raises(ValueError, match=r"content_hash 'h2': category name"):
        DecisionSink(engine, batch_rows=2).write(
            "0", decisions(("h1", "approved", "0.10", ["ok"]), ("h2", "flagged", "0.60", ["hate", name]))
        )
    assert stored(engine) == {}


def test_decisions_without_the_provenance_columns_are_refused(engine: sa.Engine) -> None:
    table = decisions(("h1", "approved", "0.10", [])).drop_columns(["scorer", "categories"])
    with pytest.raises(ValueError, match="no column categories, scorer"):
        DecisionSink(engine, batch_rows=2).write("0", table)
