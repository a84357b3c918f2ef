"""The running stack as a fixture: ``salespred stack up`` as an operator runs it, torn down with ``stack down``.

The conftest registers the fixtures; a test module asks for ``stack`` (module scope: one stack per module, about
30 s to start on 2 cores)::

    def test_something(stack):
        stack.graphql.submit_job_execution("full_refresh", ...)

Servers: MongoDB is the session's SecantusDB (a database of its own), Redis the tests' server on a db number
of its own (one of ``STACK_REDIS_DBS``, claimed for the module: stacks of other sessions on the same server
each hold another; its ``salespred:*`` keys deleted after), SQL a PostgreSQL database created for
the module, and the Dagster instance another PostgreSQL database created for the module, both dropped after.
Without ``SALESPRED_TEST_POSTGRES_URL`` the stack tests skip.

``stack_extra_env`` (a module fixture) is the hook for more environment; by default it points the stack's
intermediates at a new bucket on moto's S3 server (``SALESPRED_STORAGE_URL``), so that no run shares a
directory with another.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from salespred_assets.stack.client import (  # noqa: F401 - the stack tests' names for the package's helpers
    LOCATION,
    REPOSITORY,
    StackClient,
    wait_until,
)
from salespred_tests.server_databases import create_database, drop_database

# The tests' Redis server, a db number of its own per stack (the stack's keys use the default prefix): a stack
# claims a free one with CLAIM_KEY, so that stacks of concurrent sessions never read each other's generations.
STACK_REDIS_DBS = range(12, 16)
CLAIM_KEY = "salespred-stack-claim"
SENSOR_INTERVAL_S = 2


@dataclass(kw_only=True)
class Stack(StackClient):
    """The module's stack, with the servers it was pointed at (the client's own part is the package's)."""

    mongo_uri: str
    database: str
    redis_url: str
    sql_url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_base() -> str:
    base = os.environ.get("SALESPRED_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("the stack tests need SALESPRED_TEST_POSTGRES_URL (the Dagster instance and SQL run on PostgreSQL)")
    return base


def _redis_db_url(base: str, db: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _claim_redis_db(base: str, tag: str) -> str:
    """The URL of a db of ``STACK_REDIS_DBS`` that no other stack holds, claimed for this one."""
    import redis

    for db in STACK_REDIS_DBS:
        url = _redis_db_url(base, db)
        client = redis.Redis.from_url(url)
        try:
            if client.set(CLAIM_KEY, tag, nx=True, ex=6 * 3600):  # expires if a session dies holding it
                return url
        finally:
            client.close()
    pytest.skip(f"every Redis db of {list(STACK_REDIS_DBS)} is held by another stack ({CLAIM_KEY})")


@pytest.fixture(scope="module")
def stack_extra_env(s3_server) -> dict[str, str]:
    """More environment for the stack's processes; override in a module (other intervals). By default the
    intermediates go to a new bucket on the moto S3 server, as on a cluster: no run shares a directory with
    another, or with the code server."""
    return {**s3_server.environment(), "SALESPRED_STORAGE_URL": f"s3://{s3_server.create_bucket()}/runs"}


@pytest.fixture(scope="module")
def stack(mongo_server, redis_url, stack_extra_env) -> Iterator[Stack]:
    try:
        import dagster_graphql  # noqa: F401
        import dagster_postgres  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the stack needs the deploy extra: {exc}")
    base = _postgres_base()
    tag = uuid.uuid4().hex[:10]
    sql_db, dagster_db = f"salespred_stack_{tag}", f"salespred_dagster_{tag}"
    sql_url = create_database(base, sql_db, "PostgreSQL")
    import sqlalchemy as sa

    dagster_pg_url = sa.engine.make_url(base).set(drivername="postgresql", database=dagster_db) \
        .render_as_string(hide_password=False)  # the stack creates this one itself
    home = Path(tempfile.mkdtemp(prefix="salespred-stack-"))
    database = f"stack_{tag}"
    mongo_uri = mongo_server.uri.replace("/?", f"/{database}?")
    stack_redis = _claim_redis_db(redis_url, tag)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update({
        "SALESPRED_HOME": str(home),
        "SALESPRED_MONGO_URI": mongo_uri,
        "SALESPRED_REDIS_URL": stack_redis,
        "SALESPRED_SQL_URL": sql_url,
        "SALESPRED_DAGSTER_PG_URL": dagster_pg_url,
        "SALESPRED_AUTOMATION": "on",
        "SALESPRED_SENSOR_INTERVAL": str(SENSOR_INTERVAL_S),
        "SALESPRED_SECRET_KEY": "stack-test-" + uuid.uuid4().hex * 2,
        "SALESPRED_SEARCH": "fast",
        "SALESPRED_GATE_AUC_FLOOR": os.environ.get("SALESPRED_GATE_AUC_FLOOR", "0.55"),
        **stack_extra_env,
    })
    result = Stack(home=home, env=env, ui_port=free_port(), app_port=free_port(), code_port=free_port(),
                   mongo_uri=mongo_uri, database=database, redis_url=stack_redis, sql_url=sql_url,
                   dagster_pg_url=dagster_pg_url)
    try:
        result.cli("stack", "up", "--ui-port", str(result.ui_port), "--app-port", str(result.app_port),
                   "--code-port", str(result.code_port), timeout=600)
        result.read_ports()
        yield result
    finally:
        result.cli("stack", "down", "--timeout", "15", check=False)
        drop_database(base, dagster_db)
        drop_database(base, sql_db)
        import pymongo
        import redis

        pymongo.MongoClient(mongo_server.uri).drop_database(database)
        client = redis.Redis.from_url(stack_redis)
        keys = list(client.scan_iter(match="salespred:*", count=10_000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])
        client.delete(CLAIM_KEY)
        client.close()
        shutil.rmtree(home, ignore_errors=True)  # logs, compute logs, intermediate frames


@contextlib.contextmanager
def stack_instance(stack: StackClient) -> Iterator[Any]:
    """The stack's instance (PostgreSQL), as an operator's DAGSTER_HOME and DAGSTER_PG_* name it."""
    with stack.instance() as instance:
        yield instance
