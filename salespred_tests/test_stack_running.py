"""The production topology running for real (``slow``): ``salespred stack up`` brings up the code server,
webserver, daemon and seller app on a PostgreSQL instance, and each test drives it as an operator's script
would, through the webserver's GraphQL API (``dagster_graphql.DagsterGraphQLClient``), the app's REST API and
the ``salespred`` command. The tests run in order on one stack (a module fixture): the full refresh through
the queue trains the model the captures are scored with.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import statistics
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo.resource import OPPORTUNITIES, MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_tests.helpers import AS_OF
from salespred_tests.stack_fixtures import stack_instance, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPPORTUNITIES_SEEDED = 1000  # enough for the promotion gate's backtest; each step's process costs more than rows
CAPTURES = 200
SELLER, PASSWORD = "stackseller", f"pw-{uuid.uuid4().hex}"


def _mongo(stack) -> MongoResource:
    return MongoResource(uri=stack.mongo_uri, database=stack.database)


def _fact(stack, numbers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(stack.sql_url)
    try:
        with engine.connect() as conn:
            query = "SELECT numero_opportunidad, etapas, outcome, model_version, prediction_basis FROM fact_opportunity"
            if numbers is not None:
                rows = conn.execute(sa.text(query + " WHERE numero_opportunidad IN :n")
                                    .bindparams(sa.bindparam("n", expanding=True)), {"n": numbers or [""]})
            else:
                rows = conn.execute(sa.text(query))
            return {r.numero_opportunidad: dict(r._mapping) for r in rows}
    finally:
        engine.dispose()


def _current_version(stack) -> str | None:
    from salespred_assets.registry import model_store

    return model_store.current_version(_mongo(stack).db)


def test_up_status_reuse_and_a_full_refresh_through_the_queue(stack):
    status = stack.cli("stack", "status")
    assert all(word in status.stdout for word in ("code-server", "webserver", "daemon", "app")), status.stdout
    assert status.stdout.count("healthy") == 4, status.stdout
    pids = json.loads((stack.home / "stack" / "state.json").read_text())["services"]
    again = stack.cli("stack", "up")  # a second `up` starts nothing
    assert again.stdout.count("already running") == 4, again.stdout
    assert json.loads((stack.home / "stack" / "state.json").read_text())["services"] == pids

    mongo = _mongo(stack)
    loading.seed_synthetic(mongo, OPPORTUNITIES_SEEDED, seed=7, as_of=AS_OF)
    loading.write_sellers(mongo, [{"numero_vendedor": "NV-900", "username": SELLER, "first_name": "Stack",
                                   "last_name": "Seller", "title": "Sales Executive", "password": PASSWORD}])
    run_id = stack.submit("full_refresh")
    assert stack.wait_run(run_id, timeout=900) == "SUCCESS", stack.log_tails()

    # The run went through the queue (the daemon dequeued it) and ran in a process of its own.
    import dagster as dg

    with stack_instance(stack) as instance:
        events = {e.dagster_event_type for e in instance.all_logs(run_id)}
    assert {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_SUCCESS} \
        <= events
    assert _current_version(stack) is not None
    assert len(_fact(stack)) == OPPORTUNITIES_SEEDED
    # The run's steps handed their frames over through the bucket alone, as on a cluster: none on disk.
    url = stack.env["SALESPRED_STORAGE_URL"]
    import s3fs

    bucket = s3fs.S3FileSystem(key=stack.env["AWS_ACCESS_KEY_ID"], secret=stack.env["AWS_SECRET_ACCESS_KEY"],
                               endpoint_url=stack.env["SALESPRED_STORAGE_ENDPOINT_URL"], skip_instance_cache=True)
    stored = {p.rsplit("/", 1)[-1] for p in bucket.find(url.removeprefix("s3://"))}
    assert {"raw_opportunities.parquet", "opportunity_features.parquet", "opportunity_predictions.parquet"} <= stored
    local = stack.home / "storage"
    assert not local.exists() or not any(local.iterdir()), sorted(p.name for p in local.iterdir())


def _payload(rng: random.Random) -> dict[str, Any]:
    acv = round(rng.uniform(1_000, 500_000), 2)
    return {"cliente": f"CL-{rng.randint(1, 3000)}", **{k: rng.choice(v) for k, v in CODE_SETS.items()},
            "acv": acv, "tcv": round(acv * rng.randint(1, 5), 2), "margen_ganancia": round(rng.uniform(0, 0.6), 3),
            "fecha_cierre_oportunidad": (dt.date.today() + dt.timedelta(days=rng.randint(0, 720))).isoformat()}


def test_captures_reach_sql_and_the_cache_through_the_daemon(stack, reliability):
    rng = random.Random(18)
    posted: dict[str, float] = {}
    seen: dict[str, float] = {}
    with httpx.Client(base_url=stack.app_url, timeout=60) as client:
        token = client.post("/api/auth/token", json={"username": SELLER, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        started = time.monotonic()
        for i in range(CAPTURES):
            response = client.post("/api/opportunities", json=_payload(rng), headers=headers)
            assert response.status_code == 201, response.text
            posted[response.json()["numero_opportunidad"]] = time.monotonic()
            if i % 20 == 19:  # look for rows while capturing: the latency is from each capture to its row
                now = time.monotonic()
                seen.update(dict.fromkeys(_fact(stack, [n for n in posted if n not in seen]), now))
        capture_s = time.monotonic() - started

    def all_in_sql() -> bool:
        missing = [n for n in posted if n not in seen]
        now = time.monotonic()
        seen.update(dict.fromkeys(_fact(stack, missing), now))
        return len(seen) == len(posted)

    assert wait_until(all_in_sql, timeout=300, interval=0.25), \
        f"{len(posted) - len(seen)} captures never reached SQL\n{stack.log_tails()}"
    # A row is committed before its run records its end: wait for the runs themselves to finish.
    runs = wait_until(lambda: (r := _runs(stack, "score_new_opportunities")) and
                      all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in r) and r, timeout=120)
    assert runs, f"batch runs still in progress: {_runs(stack, 'score_new_opportunities')}"
    fact = _fact(stack, list(posted))
    cache = RedisResource(url=stack.redis_url).cache()
    cached = [json.loads(raw) if raw else None for raw in cache.get_many(list(posted))]
    latencies = sorted(seen[n] - posted[n] for n in posted)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    reliability.record("Stack", f"{CAPTURES} captures to SQL through the daemon's sensor", **{
        "captures": len(posted), "in SQL": len(fact), "in the cache": sum(c is not None for c in cached),
        "scored by the model": sum(r["prediction_basis"] == "model" for r in fact.values()),
        "batch runs": len(runs), "failed runs": sum(r != "SUCCESS" for r in runs),
        "capture to SQL row p50 s": round(q[49], 2), "p99 s": round(q[98], 2), "max s": round(latencies[-1], 2),
        "captures/s sent": round(CAPTURES / capture_s, 1), "sensor interval s": stack.env["SALESPRED_SENSOR_INTERVAL"],
        "poll resolution s": 0.25})
    assert len(fact) == CAPTURES
    assert all(c is not None for c in cached)
    assert {r["model_version"] for r in fact.values()} == {_current_version(stack)}
    assert runs and all(r == "SUCCESS" for r in runs), runs


def _runs(stack, job: str) -> list[str]:
    """The statuses of the job's runs, read through GraphQL."""
    query = """query ($job: String!) { runsOrError(filter: {pipelineName: $job}) {
        ... on Runs { results { runId status } } } }"""
    data = stack.query(query, {"job": job})
    return [r["status"] for r in data["runsOrError"]["results"]]


def test_a_stage_changed_in_mongodb_is_rescored_through_the_daemon(stack):
    mongo = _mongo(stack)
    doc = mongo.db[OPPORTUNITIES].find_one({"etapas": {"$nin": ["Won", "Lost"]}, "numero_opportunidad":
                                            {"$in": list(_fact(stack))}}, sort=[("_id", 1)])
    assert doc is not None
    number = doc["numero_opportunidad"]
    assert _fact(stack, [number])[number]["outcome"] == "open"
    # No app: a person with mongosh (or a CRM synchronisation) closes it as won.
    mongo.db[OPPORTUNITIES].update_one({"_id": doc["_id"]}, {"$set": {"etapas": "Won"}})
    row = wait_until(lambda: (r := _fact(stack, [number]).get(number)) and r["outcome"] == "won" and r, 180)
    assert row, f"{number} was not rescored\n{stack.log_tails()}"
    assert row["etapas"] == "Won" and row["prediction_basis"] == "outcome"
    # The run writes SQL, then the cache: wait for the cache as well.
    cache = RedisResource(url=stack.redis_url).cache()
    cached = wait_until(lambda: (c := cache.get(number)) and c["prediction_basis"] == "outcome" and c, 60)
    assert cached, f"the cache still holds {cache.get(number)}"


def test_promotion_gate_and_rollback_against_the_stacks_instance(stack):
    first = _current_version(stack)
    run_id = stack.submit("retrain")
    assert stack.wait_run(run_id, timeout=900) == "SUCCESS", stack.log_tails()
    second = _current_version(stack)
    listed = json.loads(stack.cli("model", "list", "--json").stdout)
    assert {r["version"] for r in listed} >= {first, second}
    if second == first:  # the gate kept the first model: nothing to roll back to from it
        pytest.skip("the promotion gate rejected the retrained candidate; rollback needs two promotions")
    rolled = stack.cli("model", "rollback")
    assert f"model {first} now scores" in rolled.stdout, rolled.stdout
    assert _current_version(stack) == first
    assert {r["model_version"] for r in _fact(stack).values()} == {first}
    # The rollback's rescore is a run of the stack's instance, which the webserver shows.
    assert "SUCCESS" in _runs(stack, "rescore")


def test_down_stops_what_up_started_and_nothing_else(stack, mongo_server):
    state = json.loads((stack.home / "stack" / "state.json").read_text())
    pids = [e["pid"] for e in state["services"].values()]
    stack.cli("stack", "down")
    from salespred_assets.stack import processes

    # alive() reads /proc: a stopped process that nobody has reaped yet (a zombie) counts as gone.
    assert not [e for e in state["services"].values() if processes.alive(e)]
    assert pids
    assert stack.cli("stack", "status", check=False).returncode == 1
    # The servers the stack was pointed at, which it did not start, still answer.
    import pymongo
    import redis

    assert pymongo.MongoClient(mongo_server.uri, serverSelectionTimeoutMS=2000).admin.command("ping")["ok"]
    assert redis.Redis.from_url(stack.redis_url).ping()
