"""Moderation decisions as a sink: one ``moderation_decisions`` row per distinct content.

Rows are upserted in batches through ``connectors.database``; a human's review is never
overwritten by an automatic decision.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from connectors.database import BatchWriter, dialect
from connectors.sinks import Written


class DecisionSink:
    """A :class:`connectors.sinks.Sink`: one ``moderation_decisions`` row per distinct content,
    keyed by ``content_hash``.

    An automatic decision updates a stored one only while no human has reviewed it
    (``reviewed_by`` is NULL): a human decision is never overwritten.
    """

    COLUMNS = ("content_hash", "decision", "score")

    def __init__(self, engine: sa.Engine, batch_rows: int, retry_attempts: int = 8) -> None:
        table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
        unreviewed = table.c.reviewed_by.is_(None)
        statement: sa.Insert
        if dialect(engine) == "sqlite":
            lite = sqlite.insert(table)
            statement = lite.on_conflict_do_update(
                index_elements=["content_hash"],
                set_={"decision": lite.excluded.decision, "score": lite.excluded.score},
                where=unreviewed,
            )
        else:
            my = mysql.insert(table)
            statement = my.on_duplicate_key_update(
                decision=sa.case((unreviewed, my.inserted.decision), else_=table.c.decision),
                score=sa.case((unreviewed, my.inserted.score), else_=table.c.score),
            )
        self._writer = BatchWriter(engine, statement, list(self.COLUMNS), batch_rows, retry_attempts)

    def write(self, key: str, table: pa.Table) -> Written:
        """Upsert ``content_hash, decision, score`` rows; count the rows the database changed
        (``decision_rows_changed``)."""
        decisions = table.select(list(self.COLUMNS)).sort_by("content_hash")
        changed = self._writer.write(
            {name: decisions.column(name) for name in self.COLUMNS}, decisions.num_rows
        )
        return Written({"decision_rows_changed": changed})

    def close(self) -> None:
        """Nothing to release: the engine is the caller's to dispose."""
