"""One transaction helper for every reporting write, so that DDL is transactional wherever the database allows.

PostgreSQL and SQL Server run DDL inside a transaction. Python's ``sqlite3`` only opens a transaction
before DML, so a ``DROP``/``CREATE`` would autocommit; an explicit ``BEGIN`` makes it transactional too.
MariaDB commits every DDL statement implicitly: there, tables are created before the data transaction,
and views are replaced with a single ``CREATE OR REPLACE VIEW`` each.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Engine


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``, with an explicit ``BEGIN`` on SQLite so that DDL joins the transaction."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite" and not _driver(conn).in_transaction:
            conn.exec_driver_sql("BEGIN")
        yield conn


def _driver(conn: Connection) -> Any:
    """The DBAPI connection under ``conn`` (there is one while ``conn`` is open)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def transactional_ddl(dialect_name: str) -> bool:
    return dialect_name in ("postgresql", "sqlite", "mssql")
