"""Databases of their own on the machine's PostgreSQL or MariaDB, for a test session or a stack: created
(skipping the test, with the reason, when the server refuses) and dropped afterwards."""

from __future__ import annotations

import pytest


def create_database(base: str, name: str, kind: str) -> str:
    """``name`` created on the server of ``base`` (a SQLAlchemy URL); the URL that reaches it."""
    import sqlalchemy as sa

    url = sa.engine.make_url(base)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - any refusal: the server is not usable for this test
        pytest.skip(f"{kind} at {url.render_as_string(hide_password=True)} is not usable: {str(exc).splitlines()[0]}")
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(base: str, name: str) -> None:
    """Drop ``name``, disconnecting its sessions first on PostgreSQL."""
    import sqlalchemy as sa

    from salespred_assets.sql.resource import make_engine

    make_engine.cache_clear()  # pooled connections would hold the database open
    url = sa.engine.make_url(base)
    force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
    finally:
        admin.dispose()
