"""Additive: ai_audit_trail gets the event's idempotency key and the context analysts need.

- ``event_id VARCHAR(128) NOT NULL UNIQUE``: one row per event; a replay inserts nothing. Rows
  stored before (by the application, from the seed's DDL) get ``legacy-audit-row-<id>``.
- ``model VARCHAR(100)``, ``ai_tier VARCHAR(16)``, ``cost_status VARCHAR(16)`` (priced/unpriced),
  ``rate_limited BOOLEAN``, ``image_hash CHAR(64)``, ``hash_mode VARCHAR(16)``.

Revision ID: 0002_audit_event_keys
Revises: 0001_seed
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_audit_event_keys"
down_revision = "0001_seed"
branch_labels = None
depends_on = None


#: The event id given to audit rows written before the pipeline kept one (by the application,
#: from the seed's DDL): unique, and never mistaken for an event of the pipeline's own.
LEGACY_EVENT_ID_PREFIX = "legacy-audit-row-"


def upgrade() -> None:
    # Resumable: MySQL commits each DDL statement, so a run interrupted halfway left some of these
    # columns in place under the old version number; add only what is missing.
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = {c["name"] for c in inspector.get_columns("ai_audit_trail")}
    columns = [
        sa.Column("event_id", sa.String(128)),
        sa.Column("model", sa.String(100)),
        sa.Column("ai_tier", sa.String(16)),
        sa.Column("cost_status", sa.String(16)),
        sa.Column("rate_limited", sa.Boolean(create_constraint=False)),
        sa.Column("image_hash", sa.CHAR(64)),
        sa.Column("hash_mode", sa.String(16)),
    ]
    with op.batch_alter_table("ai_audit_trail") as batch:
        for column in columns:
            if column.name not in existing:
                batch.add_column(column)
    # Rows the application stored before this migration get an id of their own, so that the
    # column can be NOT NULL and UNIQUE without losing them.
    audit = sa.table("ai_audit_trail", sa.column("id"), sa.column("event_id"))
    op.execute(
        audit.update()
        .where(audit.c.event_id.is_(None))
        .values(event_id=sa.literal(LEGACY_EVENT_ID_PREFIX) + sa.cast(audit.c.id, sa.String))
    )
    unique = {u["name"] for u in inspector.get_unique_constraints("ai_audit_trail")}
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.alter_column("event_id", existing_type=sa.String(128), nullable=False)
        if "uq_ai_audit_trail_event_id" not in unique:
            batch.create_unique_constraint("uq_ai_audit_trail_event_id", ["event_id"])


def downgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.drop_constraint("uq_ai_audit_trail_event_id", type_="unique")
        for column in ("hash_mode", "image_hash", "rate_limited", "cost_status", "ai_tier", "model", "event_id"):
            batch.drop_column(column)
