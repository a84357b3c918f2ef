"""Versioned promotion and rollback, end to end on real MongoDB, SQLite and Redis.

Each switch runs the real ``rescore`` job. While it runs, one thread looks predictions up in Redis and
another reads ``fact_opportunity``: a lookup must never miss, and SQL must always show one model version
for every row, never a mix or a partial table.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from salespred_assets.cli import cli
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.errors import SalespredError
from salespred_assets.operations import loading, runner
from salespred_assets.registry import lifecycle, model_store
from salespred_assets.sql import tables, writer
from salespred_tests.helpers import AS_OF, build_test_resources, train_current_model

pytestmark = pytest.mark.integration


class Watch:
    """Reader threads: Redis lookups of ``numbers`` and SQL reads of the fact table, until stopped."""

    def __init__(self, redis_resource, sqlite_url: str, numbers: list[str]) -> None:
        self.cache, self.numbers = redis_resource.cache(), numbers
        self.engine = sa.create_engine(sqlite_url, connect_args={"timeout": 30})
        self.stop = threading.Event()
        self.misses: list[str] = []
        self.versions: Counter[str] = Counter()
        self.sql_states: Counter[tuple] = Counter()
        self.threads = [threading.Thread(target=self._redis), threading.Thread(target=self._sql)]

    def _redis(self) -> None:
        while not self.stop.is_set():
            for number in self.numbers:
                value = self.cache.get(number)
                if value is None:
                    self.misses.append(number)
                else:
                    self.versions[value["model_version"]] += 1

    def _sql(self) -> None:
        fact = sa.table(tables.FACT_OPPORTUNITY, sa.column("model_version"))
        while not self.stop.is_set():
            with self.engine.connect() as conn:
                query = sa.select(fact.c.model_version, sa.func.count()).group_by(fact.c.model_version)
                rows = conn.execute(query).all()
            self.sql_states[tuple(sorted((str(v), int(n)) for v, n in rows))] += 1
            self.stop.wait(0.02)

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.engine.dispose()


def _state(mongo, redis_resource, sqlite_url: str) -> dict:
    engine = sa.create_engine(sqlite_url)
    try:
        fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
        versions = writer.read_table(engine, tables.DIM_MODEL_VERSION)
        switches = writer.read_table(engine, tables.FACT_MODEL_SWITCH).sort_values("switch_number")
    finally:
        engine.dispose()
    cached = [json.loads(v)["model_version"] if v else None
              for v in redis_resource.cache().get_many(fact[S.id].astype(str).tolist())]
    return {"sql_versions": set(fact["model_version"]), "rows": len(fact), "cache_versions": set(cached),
            "current_in_sql": set(versions.loc[versions["is_current"].astype(bool), "model_version"]),
            "switches": [[v, p if isinstance(p, str) else None, a] for v, p, a in
                         switches[["model_version", "previous_version", "action"]].itertuples(index=False)],
            "generation": redis_resource.cache().current_generation()}


def test_promote_and_roll_back_switch_scoring_sql_and_cache_without_a_miss(mongo, redis_resource, sqlite_url, tmp_path):
    loading.seed_synthetic(mongo, 500, seed=3, as_of=AS_OF)
    loading.ensure_demo_sellers(mongo)
    first = train_current_model(mongo, trees=30)
    resources = build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage"))
    rescore = functools.partial(runner.materialize, "rescore", resources=resources, ephemeral=True)
    assert rescore().ok
    second = train_current_model(mongo, trees=45, leaf=2, promote=False)
    assert second.version != first.version
    start = _state(mongo, redis_resource, sqlite_url)
    assert start["sql_versions"] == start["cache_versions"] == {first.version}
    numbers = [f"OP-{i:05d}" for i in range(0, 500, 10)]

    with Watch(redis_resource, sqlite_url, numbers) as watch:
        result = lifecycle.promote(mongo, second.version, rescore=rescore)
    assert result["switched"] and result["previous"] == first.version
    assert watch.misses == []
    assert watch.versions[first.version] > 0 and watch.versions[second.version] > 0  # it watched the swap
    # Every SQL read saw one whole table of one version: the old one or the new one.
    assert set(watch.sql_states) <= {((first.version, 500),), ((second.version, 500),)}
    after = _state(mongo, redis_resource, sqlite_url)
    assert model_store.current_version(mongo.db) == second.version
    assert after["sql_versions"] == after["cache_versions"] == after["current_in_sql"] == {second.version}
    assert after["rows"] == 500 and after["generation"] == start["generation"] + 1
    assert after["switches"][-1] == [second.version, first.version, "promote"]
    assert 0 < redis_resource.cache().generation_ttl(start["generation"]) <= 600  # it expires; nothing is flushed

    with Watch(redis_resource, sqlite_url, numbers) as watch:
        back = lifecycle.rollback(mongo, rescore=rescore)
    assert back["version"] == first.version and back["previous"] == second.version
    assert watch.misses == [] and watch.versions[second.version] > 0
    rolled = _state(mongo, redis_resource, sqlite_url)
    assert rolled["sql_versions"] == rolled["cache_versions"] == rolled["current_in_sql"] == {first.version}
    assert rolled["switches"] == [[first.version, None, "gate"], [second.version, first.version, "promote"],
                                  [first.version, second.version, "rollback"]]
    statuses = {v["version"]: v["status"] for v in lifecycle.versions(mongo)}
    assert statuses == {first.version: "promoted", second.version: "retired"}


def test_promotion_refuses_what_it_cannot_do(mongo):
    loading.seed_synthetic(mongo, 300, seed=4, as_of=AS_OF)
    only = train_current_model(mongo)
    never = pytest.fail  # a refused promotion must not even start the rescore
    with pytest.raises(SalespredError, match="not in the registry"):
        lifecycle.promote(mongo, "20990101-000000-abcdef", rescore=never)
    with pytest.raises(SalespredError, match="no previous model version"):
        lifecycle.rollback(mongo, rescore=never)
    rejected = train_current_model(mongo, trees=20, promote=False)
    model_store.mark(mongo.db, rejected.version, "rejected", "test: below the gate")
    with pytest.raises(SalespredError, match="failed the promotion gate; pass --force"):
        lifecycle.promote(mongo, rejected.version, rescore=never)
    assert model_store.current_version(mongo.db) == only.version

    # A failed rescore says what failed and what to do next (the pointer has moved: promoting again finishes).
    def failing() -> runner.RunOutcome:
        return runner.RunOutcome(success=False, run_id="run-1", failed_steps=["prediction_cache"])

    with pytest.raises(SalespredError, match=f"run-1 failed at: prediction_cache.*salespred model promote "
                                             f"{rejected.version}` again"):
        lifecycle.promote(mongo, rejected.version, force=True, rescore=failing)
    assert model_store.current_version(mongo.db) == rejected.version


def test_the_registry_records_the_gates_verdict_when_it_stores_a_candidate(mongo, monkeypatch):
    """The model IO manager's path: a candidate that fails the promotion gate is stored ``rejected`` with the
    reason (the ``promotion_gate`` check only reports it); one that passes stays a candidate."""
    from salespred_assets.core.model import WinModel

    monkeypatch.setenv("SALESPRED_GATE_AUC_FLOOR", "0.7")
    loading.seed_synthetic(mongo, 300, seed=5, as_of=AS_OF)
    trained = train_current_model(mongo, promote=False)

    def candidate(version: str, roc_auc: float) -> WinModel:
        info = {**trained.info, "version": version, "metrics": {"roc_auc": roc_auc, "brier": 0.2}}
        info.pop("gate", None)
        return WinModel(trained.pipeline, trained.calibrator, trained.threshold, trained.spec, info)

    version, passed, reason = model_store.register_candidate(mongo.db, candidate("20990101-000000-low", 0.69))
    entry = model_store.registry_entry(mongo.db, version)
    assert not passed and reason == "backtest ROC AUC 0.6900 below the required 0.7000"
    assert entry["status"] == "rejected"
    assert [(e["event"], e.get("reason")) for e in entry["history"]] == [("trained", None), ("rejected", reason)]
    version, passed, reason = model_store.register_candidate(mongo.db, candidate("20990101-000000-ok", 0.71))
    assert passed and model_store.registry_entry(mongo.db, version)["status"] == "candidate"


def test_model_list_on_the_command_line(mongo, monkeypatch):
    loading.seed_synthetic(mongo, 300, seed=6, as_of=AS_OF)
    current = train_current_model(mongo)
    candidate = train_current_model(mongo, trees=20, promote=False)
    parts = urlsplit(mongo.resolved_uri())
    monkeypatch.setenv("SALESPRED_MONGO_URI", urlunsplit(parts._replace(path=f"/{mongo.db.name}")))
    out = CliRunner().invoke(cli, ["model", "list", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    rows = {r["version"]: r for r in json.loads(out.output)}
    assert rows[current.version]["current"] and not rows[candidate.version]["current"]
    assert rows[candidate.version]["status"] == "candidate"
    table = CliRunner().invoke(cli, ["model", "list"], catch_exceptions=False).output
    assert f"* {current.version}" in table and f"  {candidate.version}" in table
    missing = CliRunner().invoke(cli, ["model", "promote", "nope"])
    assert missing.exit_code != 0 and "not in the registry" in str(missing.exception)
