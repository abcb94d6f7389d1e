"""Additive: ai_audit_trail.payload_fingerprint, so a later run can tell a replay from a conflict.

``payload_fingerprint BINARY(16)``: BLAKE2b-128 of the event's canonical JSON (keys sorted). A
later run that meets a stored ``event_id`` compares fingerprints: equal is an identical replay
(nothing changes), different is a ``conflicting_duplicate`` dead letter. NULL on rows stored
before this migration, which are then never called conflicting.

Revision ID: 0003_audit_payload_fingerprint
Revises: 0002_audit_event_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_audit_payload_fingerprint"
down_revision = "0002_audit_event_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.add_column(sa.Column("payload_fingerprint", sa.BINARY(16)))


def downgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.drop_column("payload_fingerprint")
