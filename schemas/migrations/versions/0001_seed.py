"""The seed's DDL: users gains ai_tier and personalization_prefs; ai_audit_trail; moderation_decisions.

Verbatim from the product's design document. ``users`` is altered when it exists; a minimal
``users(id BIGINT UNSIGNED PRIMARY KEY)`` is created first only where none exists.

Revision ID: 0001_seed
Revises:
"""

import logging

import sqlalchemy as sa
from alembic import op

from schemas.migrations.types import AUTO_ID, BIGINT_UNSIGNED

revision = "0001_seed"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("aiep.migrations")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("users"):
        log.warning("no users table: creating a minimal users(id BIGINT UNSIGNED PRIMARY KEY)")
        op.create_table("users", sa.Column("id", BIGINT_UNSIGNED, primary_key=True, autoincrement=False))
        existing: set[str] = set()
    else:
        existing = {c["name"] for c in inspector.get_columns("users")}
    # ALTER TABLE users ADD COLUMN (ai_tier ENUM(...) DEFAULT 'free', personalization_prefs JSON)
    if "ai_tier" not in existing:
        op.add_column(
            "users",
            sa.Column("ai_tier", sa.Enum("free", "pro", "enterprise", name="ai_tier"), server_default="free"),
        )
    if "personalization_prefs" not in existing:
        op.add_column("users", sa.Column("personalization_prefs", sa.JSON()))

    op.create_table(
        "ai_audit_trail",
        sa.Column("id", AUTO_ID, primary_key=True, autoincrement=True),
        sa.Column("user_id", BIGINT_UNSIGNED),
        sa.Column("operation_type", sa.String(50)),
        sa.Column("input_hash", sa.CHAR(64)),
        sa.Column("output_hash", sa.CHAR(64)),
        sa.Column("cost", sa.Numeric(10, 6)),
        sa.Column("created_at", sa.TIMESTAMP(), server_default=sa.func.current_timestamp()),
    )
    op.create_index("user_id", "ai_audit_trail", ["user_id", "operation_type"])

    op.create_table(
        "moderation_decisions",
        sa.Column("id", AUTO_ID, primary_key=True, autoincrement=True),
        sa.Column("content_hash", sa.CHAR(64), unique=True),
        sa.Column("decision", sa.Enum("approved", "flagged", "rejected", name="decision")),
        sa.Column("score", sa.Numeric(3, 2)),
        sa.Column("reviewed_by", BIGINT_UNSIGNED),
        sa.Column("reviewed_at", sa.TIMESTAMP(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("moderation_decisions")
    op.drop_table("ai_audit_trail")
