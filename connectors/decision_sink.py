"""Moderation decisions as a sink: one ``moderation_decisions`` row per distinct content.

Rows are upserted in batches through ``connectors.database``; a human's review is never
overwritten by an automatic decision, and a replay of the same decisions changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite

from connectors.database import BatchWriter, dialect
from connectors.sinks import Written
from transforms.decision_categories import CategoryError, categories_text

#: The columns an automatic decision sets; a change in any of them is a new decision.
DECIDED = ("decision", "score", "categories", "scorer", "scorer_version")


class DecisionSink:
    """A :class:`connectors.sinks.Sink`: one ``moderation_decisions`` row per distinct content,
    keyed by ``content_hash``.

    ``write`` takes ``content_hash``, ``decision``, ``score`` (decimal(3,2)), ``categories`` (a
    ``list<string>`` of the names that fired; stored sorted and comma-joined, see
    :mod:`transforms.decision_categories`), ``scorer`` and ``scorer_version``. An automatic row
    has ``reviewed_by`` NULL and ``reviewed_at`` = the decision time (UTC, one value per
    ``write``).

    - A row a human reviewed (``reviewed_by`` NOT NULL) is never changed by an automatic write.
    - An unreviewed row takes the new decision, but its ``reviewed_at`` moves only when one of
      ``decision, score, categories, scorer, scorer_version`` really changed: a replay of the
      same run changes nothing, and ``decision_rows_changed`` counts 0.
    """

    COLUMNS = ("content_hash", *DECIDED)

    def __init__(self, engine: sa.Engine, batch_rows: int, retry_attempts: int = 8) -> None:
        table = sa.Table("moderation_decisions", sa.MetaData(), autoload_with=engine)
        categories_type = table.c.categories.type if "categories" in table.c else None
        if not isinstance(categories_type, sa.String) or categories_type.length is None:
            raise RuntimeError("moderation_decisions has no categories VARCHAR: the store needs `db upgrade`")
        self._max_categories_chars = categories_type.length
        # Bound raw by the writer: the time as SQLAlchemy itself would send it (SQLite keeps text).
        time_type = table.c.reviewed_at.type.dialect_impl(engine.dialect)
        self._time_to_db = time_type.bind_processor(engine.dialect) or (lambda t: t)
        statement = _upsert(table, dialect(engine))
        columns = [*self.COLUMNS, "reviewed_at"]
        self._writer = BatchWriter(engine, statement, columns, batch_rows, retry_attempts)

    def write(self, key: str, table: pa.Table) -> Written:
        """Upsert the decisions of ``table`` (decided now); count the rows the database changed
        (``decision_rows_changed``: on MySQL/MariaDB an updated row counts 2, its affected-rows
        convention; on SQLite 1).

        Raises ValueError naming the ``content_hash`` whose categories cannot be stored.
        """
        missing = [name for name in self.COLUMNS if name not in table.column_names]
        if missing:
            raise ValueError(
                f"decisions for key {key!r}: no column {', '.join(missing)}; need {self.COLUMNS}"
            )
        decisions = table.select(list(self.COLUMNS)).sort_by("content_hash")
        try:
            categories = categories_text(decisions.column("categories"), self._max_categories_chars)
        except CategoryError as exc:
            content_hash = decisions.column("content_hash")[exc.row].as_py()
            raise ValueError(f"decision for content_hash {content_hash!r}: {exc.problem}") from None
        decided_at = datetime.now(UTC).replace(microsecond=0, tzinfo=None)  # TIMESTAMP: whole seconds, UTC
        columns = {name: decisions.column(name) for name in self.COLUMNS}
        columns["categories"] = categories
        columns["reviewed_at"] = pa.array([self._time_to_db(decided_at)] * decisions.num_rows)
        changed = self._writer.write(columns, decisions.num_rows)
        return Written({"decision_rows_changed": changed})

    def close(self) -> None:
        """Nothing to release: the engine is the caller's to dispose."""


def _upsert(table: sa.Table, dialect_name: str) -> sa.Insert:
    """The keyed insert of one definition for both dialects: on a stored ``content_hash``, an
    unreviewed row takes the new values, and ``reviewed_at`` moves only if one of them differs."""
    unreviewed = table.c.reviewed_by.is_(None)
    if dialect_name == "sqlite":
        lite = sqlite.insert(table)
        changed = sa.or_(*(table.c[name].is_distinct_from(lite.excluded[name]) for name in DECIDED))
        return lite.on_conflict_do_update(
            index_elements=["content_hash"],
            set_={name: lite.excluded[name] for name in (*DECIDED, "reviewed_at")},
            # Rows the WHERE skips are not counted as changed.
            where=sa.and_(unreviewed, changed),
        )
    my = mysql.insert(table)
    changed = sa.or_(*(table.c[name].is_distinct_from(my.inserted[name]) for name in DECIDED))
    # MySQL assigns left to right, each assignment seeing the ones before it: reviewed_at goes
    # first, while the row still holds its old values to compare with. Every other assignment
    # keeps the old value where nothing changed, so the server counts such a row 0.
    assignments = [
        (
            "reviewed_at",
            sa.case((sa.and_(unreviewed, changed), my.inserted.reviewed_at), else_=table.c.reviewed_at),
        )
    ]
    assignments += [(name, sa.case((unreviewed, my.inserted[name]), else_=table.c[name])) for name in DECIDED]
    return my.on_duplicate_key_update(assignments)
