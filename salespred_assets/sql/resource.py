"""The SQL reporting database, through SQLAlchemy: SQLite, PostgreSQL, MariaDB/MySQL, SQL Server."""

from __future__ import annotations

import functools

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from salespred_assets.embedded import services
from salespred_assets.errors import ServiceUnavailable


@functools.lru_cache(maxsize=8)
def make_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    kwargs: dict = {"pool_pre_ping": True, "future": True}
    backend = parsed.get_backend_name()
    if backend == "mssql" and parsed.get_driver_name() == "pyodbc":
        kwargs["fast_executemany"] = True
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    engine = sa.create_engine(url, **kwargs)

    if backend == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cur = dbapi_connection.cursor()
            # WAL: readers keep seeing the previous table while a write transaction runs.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    if parsed.get_driver_name() == "pyodbc" and backend in ("mysql", "mariadb"):
        @sa.event.listens_for(engine, "connect")
        def _odbc_encoding(dbapi_connection, _record):
            # Text goes as UTF-8: sent as UTF-16, MariaDB's ODBC driver shifted the bytes of every row longer
            # than the first one of an executemany (test_long_text_of_every_length_round_trips).
            dbapi_connection.setencoding(encoding="utf-8")

    return engine


class SqlResource(dg.ConfigurableResource):
    """Connection to the reporting database; an empty URL means a SQLite file under SALESPRED_HOME."""

    url: str = Field(default="", description="SQLAlchemy URL; empty uses SQLite under SALESPRED_HOME")

    def resolved_url(self) -> str:
        return self.url or services.embedded_url("sql")

    @property
    def engine(self) -> Engine:
        return make_engine(self.resolved_url())

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> None:
        url = self.resolved_url()
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise ServiceUnavailable("SQL database", url, getattr(exc, "orig", None) or exc) from exc
