"""Keys compare exactly, and each audit row names the input that stored it.

- On MySQL/MariaDB, ``ai_audit_trail`` and ``moderation_decisions`` are utf8mb4 (converted when a
  database's default charset made them something else, where a character outside it would be
  refused or, on a lax server, stored as ``?``), and the key and hash columns (``event_id``,
  ``content_hash``, ``input_hash``, ``output_hash``, ``image_hash``) use a binary collation
  without padding: MariaDB ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``. The default
  collations ignore case, trailing spaces and accents, and see every emoji as one character, so
  ``INSERT IGNORE`` dropped a distinct event as a "duplicate". (``utf8mb4_bin`` still pads
  spaces on MariaDB.) SQLite compares TEXT byte for byte already.
- ``ai_audit_trail.inputs_fingerprint VARCHAR(64)``: the fingerprint (content, not path) of the
  inputs whose run stored the row: which run an audit row came from. NULL on older rows.
- Rows the application stored before the pipeline (given ``legacy-audit-row-<id>`` by 0002) get a
  payload fingerprint of 16 zero bytes, which no event has: an input event that happens to carry
  such an id is a conflicting duplicate, never silently taken for that row.

Revision ID: 0004_exact_keys_and_inputs
Revises: 0003_audit_payload_fingerprint
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004_exact_keys_and_inputs"
down_revision = "0003_audit_payload_fingerprint"
branch_labels = None
depends_on = None

#: As migration 0002 names the rows the application stored before the pipeline (a pipeline row
#: always has a hash_mode).
LEGACY_EVENT_ID_PREFIX = "legacy-audit-row-"
#: The payload fingerprint of a row that holds no event's payload: no BLAKE2b digest is all zeros.
NO_PAYLOAD = bytes(16)

#: column -> (length, nullable) of every key and hash column made exact.
EXACT_COLUMNS = {
    "ai_audit_trail": {
        "event_id": (128, False),
        "input_hash": (64, True),
        "output_hash": (64, True),
        "image_hash": (64, True),
    },
    "moderation_decisions": {"content_hash": (64, True)},
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name in ("mysql", "mariadb"):
        exact = "utf8mb4_nopad_bin" if bind.dialect.is_mariadb else "utf8mb4_0900_bin"
        for table, columns in EXACT_COLUMNS.items():
            if _charset(bind, table) != "utf8mb4":
                op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4")
            for column, (length, nullable) in columns.items():
                kind = mysql.VARCHAR if column == "event_id" else mysql.CHAR
                op.alter_column(
                    table,
                    column,
                    type_=kind(length, charset="utf8mb4", collation=exact),
                    existing_nullable=nullable,
                )
        fingerprint_type = mysql.VARCHAR(64, charset="utf8mb4", collation=exact)
    else:
        fingerprint_type = sa.String(64)
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.add_column(sa.Column("inputs_fingerprint", fingerprint_type))
    audit = sa.table(
        "ai_audit_trail", sa.column("event_id"), sa.column("hash_mode"), sa.column("payload_fingerprint")
    )
    op.execute(
        audit.update()
        .where(audit.c.event_id.startswith(LEGACY_EVENT_ID_PREFIX, autoescape=True))
        .where(audit.c.hash_mode.is_(None), audit.c.payload_fingerprint.is_(None))
        .values(payload_fingerprint=sa.literal(NO_PAYLOAD, sa.LargeBinary()))
    )


def _charset(bind: sa.Connection, table: str) -> str | None:
    return bind.execute(
        sa.text(
            "SELECT c.character_set_name FROM information_schema.tables t "
            "JOIN information_schema.collation_character_set_applicability c "
            "ON c.collation_name = t.table_collation "
            "WHERE t.table_schema = DATABASE() AND t.table_name = :table"
        ),
        {"table": table},
    ).scalar()


def downgrade() -> None:
    with op.batch_alter_table("ai_audit_trail") as batch:
        batch.drop_column("inputs_fingerprint")
