"""Alembic environment: runs the versioned migrations on the connection the caller hands in.

Called by ``connectors.database.upgrade``; there is no alembic.ini, the script location and
connection come from the caller so the same migrations serve SQLite, MariaDB and MySQL.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
