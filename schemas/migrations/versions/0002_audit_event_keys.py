"""Additive: ai_audit_trail gets the event's idempotency key and the context analysts need.

- ``event_id VARCHAR(128) NOT NULL UNIQUE``: one row per event; a replay inserts nothing.
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


def upgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.add_column(sa.Column("event_id", sa.String(128), nullable=False))
        batch.add_column(sa.Column("model", sa.String(100)))
        batch.add_column(sa.Column("ai_tier", sa.String(16)))
        batch.add_column(sa.Column("cost_status", sa.String(16)))
        batch.add_column(sa.Column("rate_limited", sa.Boolean(create_constraint=False)))
        batch.add_column(sa.Column("image_hash", sa.CHAR(64)))
        batch.add_column(sa.Column("hash_mode", sa.String(16)))
        batch.create_unique_constraint("uq_ai_audit_trail_event_id", ["event_id"])


def downgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.drop_constraint("uq_ai_audit_trail_event_id", type_="unique")
        for column in ("hash_mode", "image_hash", "rate_limited", "cost_status", "ai_tier", "model", "event_id"):
            batch.drop_column(column)
