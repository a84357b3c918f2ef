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
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from salespred_tests.server_databases import create_database, drop_database

# The tests' Redis server, a db number of its own per stack (the stack's keys use the default prefix): a stack
# claims a free one with CLAIM_KEY, so that stacks of concurrent sessions never read each other's generations.
STACK_REDIS_DBS = range(12, 16)
CLAIM_KEY = "salespred-stack-claim"
SENSOR_INTERVAL_S = 2
LOCATION = "salespred"
REPOSITORY = "__repository__"  # what dg.load_from_defs_folder's Definitions are served as


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    ui_port: int
    app_port: int
    code_port: int
    mongo_uri: str
    database: str
    redis_url: str
    sql_url: str
    dagster_pg_url: str
    logs: list[str] = field(default_factory=list)

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.app_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """``salespred ARGS`` with the stack's environment (its DAGSTER_HOME: the stack's instance)."""
        env = {**self.env, "DAGSTER_HOME": str(self.home / "stack" / "dagster_home"),
               **_pg_env(self.dagster_pg_url)}
        done = subprocess.run([sys.executable, "-m", "salespred_assets.cli", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        self.logs.append(f"$ salespred {' '.join(args)}\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise AssertionError(f"salespred {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    @property
    def graphql(self) -> Any:
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient("127.0.0.1", port_number=self.ui_port, timeout=60)

    def submit(self, job: str, **kwargs: Any) -> str:
        """Submit ``job`` through the webserver's GraphQL API (it goes onto the run queue); return the run id."""
        return str(self.graphql.submit_job_execution(job, repository_location_name=LOCATION,
                                                    repository_name=REPOSITORY, **kwargs))

    def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request to the webserver's GraphQL API, in gql 4's form (the variables on the GraphQLRequest).

        The polls go through here, not ``DagsterGraphQLClient``: dagster-graphql 1.13.27 passes ``variable_values``
        to ``gql.Client.execute``, which gql 4 deprecates, one DeprecationWarning (attributed to gql) per call.
        """
        from gql import Client, GraphQLRequest
        from gql.transport.requests import RequestsHTTPTransport

        transport = RequestsHTTPTransport(url=f"{self.ui_url}/graphql", timeout=60)
        with Client(transport=transport) as session:
            return dict(session.execute(GraphQLRequest(document, variable_values=variables)))

    def wait_run(self, run_id: str, timeout: float = 600) -> str:
        """Poll the run's status through GraphQL until it ends; return the final status name."""
        query = """query ($runId: ID!) { runOrError(runId: $runId) {
            __typename ... on Run { status } ... on PythonError { message } } }"""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            answer = self.query(query, {"runId": run_id})["runOrError"]
            assert answer["__typename"] == "Run", answer
            status = answer["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return str(status)
            time.sleep(1.0)
        raise AssertionError(f"run {run_id} still {status} after {timeout} s\n{self.log_tails()}")

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in ("code-server", "daemon", "webserver", "app"):
            path = self.home / "logs" / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            out.append(f"---- {name}.log\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_env(url: str) -> dict[str, str]:
    from salespred_assets.stack.config import postgres_target

    return postgres_target(url).env()


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
        state = json.loads((home / "stack" / "state.json").read_text())
        # A port may have moved if something took it meanwhile: the state says where each one is.
        result.ui_port = state["services"]["webserver"]["port"]
        result.app_port = state["services"]["app"]["port"]
        result.code_port = state["services"]["code-server"]["port"]
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


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """The predicate's first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


@contextlib.contextmanager
def stack_instance(stack) -> Iterator[Any]:
    """The stack's instance (PostgreSQL), as an operator's DAGSTER_HOME and DAGSTER_PG_* name it."""
    import dagster as dg

    from salespred_assets.stack.config import postgres_target

    wanted = {"DAGSTER_HOME": str(stack.home / "stack" / "dagster_home"), **postgres_target(stack.dagster_pg_url).env()}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        with dg.DagsterInstance.from_config(wanted["DAGSTER_HOME"]) as instance:
            yield instance
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
