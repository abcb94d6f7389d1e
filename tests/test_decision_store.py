"""moderation_decisions: one row per content hash; an automatic decision never overwrites a human one.
Run against both the embedded SQLite store and the real MariaDB server."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from connectors.database import open_engine, upgrade
from connectors.decision_sink import DecisionSink


@pytest.fixture(params=["sqlite", "mariadb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return str(request.getfixturevalue("mysql_db").root_url)


def decisions(*rows: tuple[str, str, str]) -> pa.Table:
    hashes, verdicts, scores = zip(*rows, strict=True)
    return pa.table(
        {
            "content_hash": pa.array(hashes),
            "decision": pa.array(verdicts),
            "score": pa.array([Decimal(s) for s in scores], pa.decimal128(3, 2)),
        }
    )


def stored(engine: sa.Engine) -> dict[str, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT content_hash, decision, score, reviewed_by FROM moderation_decisions")
        )
        return {r[0]: (r[1], Decimal(str(r[2])).quantize(Decimal("0.01")), r[3]) for r in rows}


def test_automatic_decisions_upsert_but_never_overwrite_a_human_review(store_url: str) -> None:
    engine = open_engine(store_url)
    upgrade(engine)
    writer = DecisionSink(engine, batch_rows=2)
    hostile = "h'; DROP TABLE moderation_decisions; --"
    writer.write(
        "0", decisions(("h1", "approved", "0.10"), ("h2", "flagged", "0.60"), (hostile, "approved", "0.01"))
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE moderation_decisions SET decision = 'rejected', reviewed_by = 7 "
                "WHERE content_hash = 'h2'"
            )
        )
    later = decisions(("h1", "flagged", "0.70"), ("h2", "approved", "0.05"), ("h3", "rejected", "0.99"))
    writer.write("0", later)
    assert stored(engine) == {
        "h1": ("flagged", Decimal("0.70"), None),  # automatic: updated
        "h2": ("rejected", Decimal("0.60"), 7),  # human: kept
        "h3": ("rejected", Decimal("0.99"), None),
        hostile: ("approved", Decimal("0.01"), None),  # values are bound, never spliced into SQL
    }
    writer.write("0", decisions(("h3", "rejected", "0.99")))  # a replay changes nothing
    assert len(stored(engine)) == 4
