"""The seller app as a uvicorn subprocess serves it in tests (``uvicorn --factory salespred_tests.live_app:build``).

Its databases come from ``LIVE_APP_CONFIG`` (JSON: mongo_uri, database, redis_url, namespace, secret and
optionally login_limits), so a test can point a real server process at the data it seeded.
"""

from __future__ import annotations

import json
import os
from typing import Any

from salespred_assets.app.main import create_app
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource

ENV = "LIVE_APP_CONFIG"


def config(mongo: MongoResource | None, redis: RedisResource | None, secret: str, **extra: Any) -> str:
    """The ``LIVE_APP_CONFIG`` value for these resources (None: the embedded services, as `salespred serve`)."""
    values: dict[str, Any] = {"secret": secret, **extra}
    if mongo is not None:
        values.update(mongo_uri=mongo.uri, database=mongo.database, timeout_ms=mongo.timeout_ms)
    if redis is not None:
        values.update(redis_url=redis.url, namespace=redis.namespace, timeout_s=redis.timeout_s)
    return json.dumps(values)


def build():
    values = json.loads(os.environ[ENV])
    mongo = MongoResource(uri=values["mongo_uri"], database=values["database"], timeout_ms=values["timeout_ms"]) \
        if "mongo_uri" in values else None
    redis = RedisResource(url=values["redis_url"], namespace=values["namespace"], timeout_s=values["timeout_s"]) \
        if "redis_url" in values else None
    limits = tuple(values.get("login_limits", (5, 20, 900)))
    return create_app(mongo, redis, values["secret"], login_limits=limits)  # type: ignore[arg-type]


class LiveApp:
    """``uvicorn --factory salespred_tests.live_app:build`` as a subprocess on a free port (its own session)."""

    def __init__(self, config_json: str, env: dict[str, str] | None = None) -> None:
        from salespred_tests.conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, ENV: config_json, **(env or {})}
        self.proc: Any = None

    def __enter__(self) -> LiveApp:
        import subprocess
        import sys

        import httpx

        from salespred_tests.conftest import wait_for

        self.log = open(os.path.join(os.environ.get("SALESPRED_HOME", "/tmp"), f"uvicorn-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "salespred_tests.live_app:build", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return self.proc.poll() is not None  # died: stop waiting

        if not wait_for(up, 120, 0.25) or self.proc.poll() is not None:
            self.__exit__()
            raise RuntimeError(f"the app did not start on port {self.port}; see {self.log.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
