"""Column types of the seed's DDL, rendered exactly on MySQL/MariaDB and as SQLite's nearest."""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

#: BIGINT UNSIGNED on MySQL; SQLite's INTEGER (64-bit signed, which the contract's user_id fits).
BIGINT_UNSIGNED = sa.BigInteger().with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")

#: An AUTO_INCREMENT key: SQLite only auto-assigns for a column declared exactly INTEGER.
AUTO_ID = (
    sa.BigInteger()
    .with_variant(mysql.BIGINT(unsigned=True), "mysql", "mariadb")
    .with_variant(sa.Integer(), "sqlite")
)
