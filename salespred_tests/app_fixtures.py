"""Fixtures for the seller app's tests: ``from salespred_tests.app_fixtures import *`` brings them in.

One MongoDB database per test module with ~1,500 synthetic opportunities, five sellers with known
passwords in a reporting hierarchy, and one small model trained and promoted; the app is built on
the session's SecantusDB and Redis servers.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import pytest

from salespred_assets.app.main import create_app
from salespred_assets.core.model import WinModel
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_tests.conftest import free_port, wait_for
from salespred_tests.helpers import AS_OF, train_current_model

__all__ = ["app", "app_db", "client"]  # the fixtures; import helpers by name

# number, username, first, last, title, reports_to
SELLERS = [
    ("NV-0", "ana", "Ana", "Martínez", "Sales Manager", None),
    ("NV-1", "luis", "Luis", "Gómez", "Sales Executive", "NV-0"),
    ("NV-2", "marta", "Marta", "Ríos", "VP Sales", None),
    ("NV-3", "jorge", "Jorge", "Díaz", "Sales Executive", "NV-2"),
    ("NV-4", "sofia", "Sofía", "Herrera", "Sales Assistant", "NV-0"),
]
SECRET = "test-secret-" + "x" * 40
LIMITS = (3, 8, 900)  # failures per user, per client address, window (s)


@dataclass
class AppDB:
    mongo: MongoResource
    redis: RedisResource
    passwords: dict[str, str] = field(default_factory=dict)
    model: WinModel | None = None


def add_sellers(mongo: MongoResource) -> dict[str, str]:
    passwords = {user: secrets.token_urlsafe(10) for _, user, *_ in SELLERS}
    loading.write_sellers(mongo, [
        {"numero_vendedor": nv, "username": user, "first_name": first, "last_name": last, "title": title,
         "reports_to": boss, "password": passwords[user]}
        for nv, user, first, last, title, boss in SELLERS])
    return passwords


@pytest.fixture(scope="module")
def app_db(mongo_server, redis_url) -> Iterator[AppDB]:
    mongo = MongoResource(uri=mongo_server.uri, database=f"app_{uuid.uuid4().hex[:12]}", timeout_ms=3000)
    redis = RedisResource(url=redis_url, namespace=f"tapp{uuid.uuid4().hex[:10]}", timeout_s=2.0)
    loading.seed_synthetic(mongo, 1500, seed=3, as_of=AS_OF)
    db = AppDB(mongo, redis, add_sellers(mongo))
    db.model = train_current_model(mongo)
    yield db
    mongo.client.drop_database(mongo.database)
    keys = list(redis.client.scan_iter(match=f"{redis.namespace}:*", count=10_000))
    if keys:
        redis.client.delete(*keys)


@pytest.fixture(scope="module")
def app(app_db: AppDB):
    return create_app(app_db.mongo, app_db.redis, SECRET, login_limits=LIMITS)


def new_client(app, **kwargs: Any):
    """A TestClient from its own client address, so that failed-login counts never leak between tests."""
    from fastapi.testclient import TestClient

    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    return TestClient(app, client=(address, 50000), **kwargs)


@pytest.fixture
def client(app):
    with new_client(app) as c:
        yield c


def login_token(client, app_db: AppDB, username: str) -> dict[str, str]:
    """The Authorization header for ``username`` (logs in through the API)."""
    response = client.post("/api/auth/token", json={"username": username, "password": app_db.passwords[username]})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def valid_payload(**changes: Any) -> dict[str, Any]:
    close = (dt.date.today() + dt.timedelta(days=45)).isoformat()
    payload = {"cliente": "CL-00042", "unidad_negocio": "BU-04", "tipos": "TY-00", "regiones": "RE-02",
               "territorios": "TE-09", "industrias": "IN-23", "lead_source": "LS-06", "acv": 48000.0,
               "tcv": 96000.0, "margen_ganancia": 0.18, "fecha_cierre_oportunidad": close}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not ...}


class RunningServer:
    """The app under a real uvicorn server on a free port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        if not wait_for(lambda: self.server.started, 20):
            raise RuntimeError(f"uvicorn did not start on port {self.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
