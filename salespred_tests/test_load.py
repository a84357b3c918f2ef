"""Load (``slow``): 20 sellers capture 100 opportunities each, at the same time, through the REST API of a
real uvicorn server in its own process, on SecantusDB and Redis with a promoted model. Afterwards there
are exactly 2,000 new documents with 2,000 distinct numbers, each the capturing seller's, and no errors;
the latency percentiles go to RELIABILITY.md.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo.resource import OPPORTUNITIES, MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_tests.conftest import free_port, wait_for
from salespred_tests.helpers import AS_OF, train_current_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SELLERS = 20
CAPTURES = 100
SERVER = """
import sys, uvicorn
from salespred_assets.app.main import create_app
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
uri, database, redis_url, namespace, port = sys.argv[1:6]
app = create_app(MongoResource(uri=uri, database=database, timeout_ms=5000),
                 RedisResource(url=redis_url, namespace=namespace, timeout_s=5.0))
uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
"""


def payload(rng: random.Random) -> dict[str, Any]:
    acv = round(rng.uniform(1_000, 500_000), 2)
    return {"cliente": f"CL-{rng.randint(1, 3000)}", **{k: rng.choice(v) for k, v in CODE_SETS.items()},
            "acv": acv, "tcv": round(acv * rng.randint(1, 5), 2), "margen_ganancia": round(rng.uniform(0, 0.6), 3),
            "fecha_cierre_oportunidad": (dt.date.today() + dt.timedelta(days=rng.randint(0, 720))).isoformat()}


def test_twenty_sellers_capture_a_hundred_each(mongo_server, redis_url, tmp_path, reliability):
    database = f"load_{uuid.uuid4().hex[:10]}"
    namespace = f"tload{uuid.uuid4().hex[:8]}"
    mongo = MongoResource(uri=mongo_server.uri, database=database)
    loading.seed_synthetic(mongo, 2000, seed=41, as_of=AS_OF)
    passwords = {f"load{i:02d}": f"pw-{uuid.uuid4().hex}" for i in range(SELLERS)}
    loading.write_sellers(mongo, [{"numero_vendedor": f"NV-{100 + i}", "username": user, "first_name": "Load",
                                   "last_name": f"Seller {i}", "title": "Sales Executive", "password": pw}
                                  for i, (user, pw) in enumerate(passwords.items())])
    train_current_model(mongo)
    before = mongo.db[OPPORTUNITIES].count_documents({})
    port = free_port()
    env = {**os.environ, "SALESPRED_SECRET_KEY": "load-test-" + uuid.uuid4().hex * 2,
           "SALESPRED_HOME": str(tmp_path)}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-c", SERVER, mongo_server.uri, database, redis_url, namespace,
                               str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    results: list[tuple[str, int, float, str | None, str | None]] = []
    errors: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(SELLERS)

    def seller(i: int, username: str) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=120) as client:
            token = client.post("/api/auth/token", json={"username": username, "password": passwords[username]})
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            gate.wait()  # everyone starts capturing at once
            for _ in range(CAPTURES):
                started = time.perf_counter()
                try:
                    response = client.post("/api/opportunities", json=payload(rng), headers=headers)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                took = time.perf_counter() - started
                body = response.json() if response.status_code == 201 else {}
                with lock:
                    results.append((username, response.status_code, took, body.get("numero_opportunidad"),
                                    body.get("prediction_source")))

    try:
        assert wait_for(lambda: _up(base), 60), (tmp_path / "server.log").read_text()[-2000:]
        threads = [threading.Thread(target=seller, args=(i, u)) for i, u in enumerate(passwords)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    server_log = (tmp_path / "server.log").read_text()

    statuses = Counter(status for _, status, *_ in results)
    numbers = [n for _, status, _, n, _ in results if status == 201]
    latencies = sorted(took * 1000 for _, status, took, *_ in results if status == 201)
    after = mongo.db[OPPORTUNITIES].count_documents({})
    stored = {d["numero_opportunidad"]: d["numero_vendedor"] for d in mongo.db[OPPORTUNITIES].find(
        {"numero_opportunidad": {"$in": numbers}}, {"numero_opportunidad": 1, "numero_vendedor": 1})}
    owner = {f"load{i:02d}": f"NV-{100 + i}" for i in range(SELLERS)}
    wrong_owner = sum(stored.get(n) != owner[u] for u, status, _, n, _ in results if status == 201)
    sources = Counter(source for *_, source in results)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    reliability.record("Load", f"{SELLERS} sellers x {CAPTURES} captures (POST /api/opportunities)", **{
        "requests": len(results) + len(errors), "201": statuses.get(201, 0),
        "errors": len(errors) + sum(n for s, n in statuses.items() if s != 201),
        "new documents": after - before, "distinct numbers": len(set(numbers)),
        "wrong owner": wrong_owner, "predicted by the model": sources.get("model", 0),
        "p50 ms": round(quantiles[49], 1), "p90 ms": round(quantiles[89], 1), "p95 ms": round(quantiles[94], 1),
        "p99 ms": round(quantiles[98], 1), "max ms": round(latencies[-1], 1) if latencies else 0,
        "captures/s": round(len(numbers) / wall, 1), "wall s": round(wall, 1),
        "server": "uvicorn, 1 process", "server tracebacks": server_log.count("Traceback")})

    assert not errors, errors[:5]
    assert statuses == {201: SELLERS * CAPTURES}, statuses
    assert after - before == SELLERS * CAPTURES
    assert len(set(numbers)) == SELLERS * CAPTURES and set(numbers) == set(stored)
    assert wrong_owner == 0
    assert sources.get("model", 0) == SELLERS * CAPTURES  # every capture was predicted at once
    assert "Traceback" not in server_log, server_log[-3000:]
    mongo.client.drop_database(database)
    redis = RedisResource(url=redis_url, namespace=namespace)
    keys = list(redis.client.scan_iter(match=f"{namespace}:*", count=10_000))
    if keys:
        redis.client.delete(*keys)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/livez", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

