"""Additive: each moderation decision says what fired and who scored it; the review queue is indexed.

- ``moderation_decisions.categories VARCHAR(512)``: the categories that fired, names sorted and
  joined by commas (``hate,pii_email``); the empty string when none fired, NULL on rows stored
  before this migration (not known).
- ``scorer VARCHAR(100)`` and ``scorer_version VARCHAR(100)``: the model that decided
  (``aiep-text-moderation``) and its version; NULL on older rows and on a human's pre-emptive
  decision.
- On MySQL/MariaDB the three are utf8mb4 with the binary, non-padding collation of 0004
  (MariaDB ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``): an automatic write moves
  ``reviewed_at`` only when a value really changed, and a case-blind comparison would call
  ``Hate`` unchanged from ``hate``.
- Index ``ix_moderation_decisions_review_queue (decision, reviewed_by, reviewed_at,
  content_hash)``: the review queue (``WHERE decision = ? AND reviewed_by IS NULL ORDER BY
  reviewed_at, content_hash LIMIT n``) reads the index in order, with no sort.

Resumable: MySQL commits each DDL statement, so a run interrupted halfway left some of this in
place under the old version number; only what is missing is added.

(The revision id stays within alembic_version.version_num's 32 characters.)

Revision ID: 0005_decision_provenance
Revises: 0004_exact_keys_and_inputs
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005_decision_provenance"
down_revision = "0004_exact_keys_and_inputs"
branch_labels = None
depends_on = None

TABLE = "moderation_decisions"
#: column -> length of each text column added here.
NEW_COLUMNS = {"categories": 512, "scorer": 100, "scorer_version": 100}
REVIEW_QUEUE_INDEX = "ix_moderation_decisions_review_queue"
REVIEW_QUEUE_COLUMNS = ["decision", "reviewed_by", "reviewed_at", "content_hash"]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = {c["name"] for c in inspector.get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name, length in NEW_COLUMNS.items():
            if name not in existing:
                batch.add_column(sa.Column(name, _text_type(bind, length), nullable=True))
    if REVIEW_QUEUE_INDEX not in {i["name"] for i in inspector.get_indexes(TABLE)}:
        op.create_index(REVIEW_QUEUE_INDEX, TABLE, REVIEW_QUEUE_COLUMNS)


def _text_type(bind: sa.Connection, length: int) -> sa.types.TypeEngine:
    if bind.dialect.name in ("mysql", "mariadb"):
        exact = "utf8mb4_nopad_bin" if bind.dialect.is_mariadb else "utf8mb4_0900_bin"
        return mysql.VARCHAR(length, charset="utf8mb4", collation=exact)
    return sa.String(length)


def downgrade() -> None:
    op.drop_index(REVIEW_QUEUE_INDEX, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        for name in reversed(NEW_COLUMNS):
            batch.drop_column(name)
