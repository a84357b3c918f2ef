"""The new-opportunity sensor and its batch runs, on real MongoDB (change streams), SQLite and Redis.

The sensor is evaluated with ``build_sensor_context`` on an ephemeral Dagster instance, as the daemon
would: its cursor, its run keys, that a tick evaluated twice asks for the same runs (so Dagster launches
them once) and that the next tick asks for nothing. Each requested run is then executed as the daemon's
run would be (``score_new_opportunities`` for that partition), and SQL, the history and Redis are read
back: the batch's rows changed, nothing else did.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from bson import ObjectId
from click.testing import CliRunner

from salespred_assets import dashboard
from salespred_assets.cli import cli
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.defs import automation
from salespred_assets.defs.automation import new_opportunities
from salespred_assets.errors import SalespredError
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_assets.operations import loading, runner
from salespred_assets.registry import model_store
from salespred_assets.scoring import batches
from salespred_assets.sql import tables, writer
from salespred_assets.sql.resource import make_engine
from salespred_tests import reporting_fixtures as rf
from salespred_tests.helpers import AS_OF, build_test_resources, train_current_model

pytestmark = pytest.mark.integration


def _dashboard_tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.RunRequest | dg.SkipReason:
    return automation.dashboard_after_batches(dg.build_sensor_context(instance=instance, cursor=cursor))


def _tick(instance: dg.DagsterInstance, mongo, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"mongo": mongo})
    result = new_opportunities(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _fact(sql_url: str):
    engine = sa.create_engine(sql_url)
    try:
        return writer.read_table(engine, tables.FACT_OPPORTUNITY).set_index(S.id), \
            writer.count_rows(engine, tables.FACT_PREDICTION_HISTORY)
    finally:
        engine.dispose()


def _old_object_id(seconds_ago: float) -> ObjectId:
    """An ObjectId as a client with a slow clock (or a retried insert) would have made it."""
    stamp = int(time.time() - seconds_ago).to_bytes(4, "big")
    return ObjectId(stamp + os.urandom(8))


def test_sensor_batches_new_and_changed_opportunities(mongo, redis_resource, sql_url, tmp_path, monkeypatch):
    """On every dialect: SQLite, and PostgreSQL and MariaDB when their servers are configured."""
    rf.reset(make_engine(sql_url))  # server databases are shared by the session
    monkeypatch.setattr(batches, "SETTLE_SECONDS", 0)  # ObjectIds count from the next whole second
    loading.seed_synthetic(mongo, 500, seed=11, as_of=AS_OF)
    train_current_model(mongo)
    resources = build_test_resources(mongo, redis_resource, sql_url, str(tmp_path / "storage"))
    instance = dg.DagsterInstance.ephemeral()
    # The full rescore the platform starts from (the job `salespred model promote` also runs).
    assert runner.materialize("rescore", resources=resources, instance=instance).ok
    before, history_before = _fact(sql_url)
    generation = redis_resource.cache().current_generation()
    newest = max(d["_id"] for d in mongo.db[OPPORTUNITIES].find({}, {"_id": 1}))

    # First tick: no cursor, so it starts where the last full read stopped; nothing new yet.
    first = _tick(instance, mongo, None)
    assert first.run_requests == [] and "no new or changed" in first.skip_reason.skip_message
    cursor = batches.Cursor.loads(first.cursor)
    assert cursor.last_id == str(newest) and cursor.changes == "followed" and cursor.token

    # 30 new opportunities, 3 existing ones won, and one late insert below the watermark.
    loading.seed_synthetic(mongo, 30, seed=12, as_of=AS_OF)
    won = [d[S.id] for d in mongo.db[OPPORTUNITIES].find({S.stage: "S2"}, {S.id: 1}).limit(3)]
    assert len(won) == 3
    mongo.db[OPPORTUNITIES].update_many({S.id: {"$in": won}}, {"$set": {S.stage: "Won"}})
    late = {**mongo.db[OPPORTUNITIES].find_one({S.id: won[0]}, {"_id": 0}), "_id": _old_object_id(3600),
            S.id: "OP-LATE-1", S.stage: "S1"}
    mongo.db[OPPORTUNITIES].insert_one(late)
    time.sleep(1.1)  # past the second the new ObjectIds were made in

    # Two batches of long ago; the sensor keeps 3 partitions, so the oldest one goes with its manifest.
    monkeypatch.setattr(automation, "KEEP_PARTITIONS", 3)
    instance.add_dynamic_partitions(batches.PARTITIONS, ["chg-ancient", "chg-old"])
    mongo.db[batches.MANIFESTS].insert_many([{"_id": "chg-ancient", "ids": []}, {"_id": "chg-old", "ids": []}])

    second = _tick(instance, mongo, first.cursor)
    by_kind = {r.tags["salespred/batch_kind"]: r for r in second.run_requests}
    assert set(by_kind) == {"new", "changed"}
    for request in second.run_requests:
        assert request.run_key == request.partition_key and request.job_name == "score_new_opportunities"
    added, deleted = second.dynamic_partitions_requests
    assert sorted(added.partition_keys) == sorted(r.partition_key for r in second.run_requests)
    assert isinstance(deleted, dg.DeleteDynamicPartitionsRequest) and deleted.partition_keys == ["chg-ancient"]
    assert mongo.db[batches.MANIFESTS].count_documents({"_id": {"$in": ["chg-ancient", "chg-old"]}}) == 1
    assert by_kind["new"].tags["salespred/batch_rows"] == "30"
    lo, hi = batches.parse_range(by_kind["new"].partition_key)
    assert lo == newest and batches.Cursor.loads(second.cursor).last_id == str(hi)
    assert by_kind["changed"].tags["salespred/batch_rows"] == "4"  # 3 won + the late insert

    # The same tick evaluated again (a daemon retry) asks for the same run keys: Dagster launches them once.
    again = _tick(instance, mongo, first.cursor)
    assert sorted(r.run_key for r in again.run_requests) == sorted(r.run_key for r in second.run_requests)
    # The next tick finds nothing: no batch is ever requested twice.
    third = _tick(instance, mongo, second.cursor)
    assert third.run_requests == []

    for request in second.run_requests:
        instance.add_dynamic_partitions(batches.PARTITIONS, [request.partition_key])
        outcome = runner.materialize("score_new_opportunities", resources=resources, instance=instance,
                                     partition_key=request.partition_key)
        assert outcome.ok, (outcome.failed_steps, outcome.failed_checks)
        meta = outcome.metadata["new_opportunity_scores"]
        # Only the batch was read: 30 new documents, or the 4 changed ones, never the collection.
        assert meta["documents_read"] == int(request.tags["salespred/batch_rows"])
        # Each write went through its IO manager: the fact rows upserted, the history appended, the live cache.
        history, cached = outcome.metadata["new_opportunity_history"], outcome.metadata["new_opportunity_cache"]
        assert meta["rows_written"] == history["rows_written"] == cached["keys_written"] == meta["dagster/row_count"]
        assert meta["table"] == tables.FACT_OPPORTUNITY and history["table"] == tables.FACT_PREDICTION_HISTORY

    after, history_after = _fact(sql_url)
    assert len(after) == len(before) + 31 and after.index.is_unique
    assert history_after == history_before + 34
    untouched = before.index.difference(won)
    assert (after.loc[untouched, "scored_at"] == before.loc[untouched, "scored_at"]).all()
    assert set(after.loc[won, "outcome"]) == {"won"}
    assert (after.loc[won, "scored_at"] > before.loc[won, "scored_at"]).all()

    cache = redis_resource.cache()
    assert cache.current_generation() == generation  # written into the live generation, not a new one
    version = model_store.current_version(mongo.db)
    new_numbers = list(after.index.difference(before.index))
    for raw in cache.get_many([*new_numbers, *won]):
        assert raw is not None and json.loads(raw)["model_version"] == version
    # Won now: the cache and SQL carry the outcome, not a prediction.
    closed = cache.get(won[1])
    assert closed["prediction_basis"] == "outcome" and closed["probability"] is None and closed["predicted_won"]
    assert pd.isna(after.loc[won[1], "probability"]) and after.loc[won[1], "prediction_basis"] == "outcome"

    # A batch run again (a retried run) is idempotent: same rows, history recorded once per scoring.
    rerun = runner.materialize("score_new_opportunities", resources=resources, instance=instance,
                               partition_key=by_kind["new"].partition_key)
    assert rerun.ok and _fact(sql_url)[0].shape == after.shape

    # The dashboard's stored figures are the rescore's until the dashboard sensor's run stores them again.
    engine = make_engine(sql_url)
    stale = dashboard.figures(engine)
    live = dashboard.from_snapshot(dashboard.snapshot(engine))
    assert stale["pipeline"]["opportunities"] != live["pipeline"]["opportunities"]
    request = _dashboard_tick(instance, None)
    assert isinstance(request, dg.RunRequest) and request.job_name in (None, "refresh_dashboard")
    assert runner.materialize("refresh_dashboard", resources=resources, instance=instance).ok
    fresh = dashboard.figures(engine)
    assert fresh["pipeline"] == live["pipeline"] and fresh["closed"] == live["closed"]
    # One run however many batches ran; none while no batch has run since.
    ctx = dg.build_sensor_context(instance=instance, cursor=None)
    automation.dashboard_after_batches(ctx)
    assert isinstance(_dashboard_tick(instance, ctx.cursor), dg.SkipReason)


def test_a_full_rescore_tiles_every_document_into_range_batches(mongo, monkeypatch):
    loading.seed_synthetic(mongo, 450, seed=5, as_of=AS_OF)
    keys = batches.tile(mongo, rows=200)
    assert len(keys) == 3 and keys[0].startswith(batches.ZERO_ID)
    seen = []
    for key in keys:
        seen += [d["_id"] for d in batches.read_batch(mongo, key, S)]
    assert sorted(seen) == sorted(d["_id"] for d in mongo.db[OPPORTUNITIES].find({}, {"_id": 1}))
    # Consecutive ranges share their bounds: no gap, no overlap.
    for a, b in itertools.pairwise(keys):
        assert a.split("-")[1] == b.split("-")[0]

    # `salespred batches plan` registers the same batches as partitions of the instance the UI shows.
    parts = urlsplit(mongo.resolved_uri())
    monkeypatch.setenv("SALESPRED_MONGO_URI", urlunsplit(parts._replace(path=f"/{mongo.db.name}")))
    out = CliRunner().invoke(cli, ["batches", "plan", "--rows", "200"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert all(f"  {key}\n" in out.output for key in keys) and "dagster job backfill" in out.output
    with dg.DagsterInstance.get() as instance:
        assert all(instance.has_dynamic_partition(batches.PARTITIONS, key) for key in keys)


def test_the_settle_time_and_the_watermark_rules():
    bound = batches.settle_bound(dt.datetime(2026, 1, 1, 12, 0, 10, tzinfo=dt.UTC), settle_s=5)
    assert bound.generation_time == dt.datetime(2026, 1, 1, 12, 0, 5, tzinfo=dt.UTC)
    a, b, c = (ObjectId.from_datetime(dt.datetime(2026, 1, 1, 12, 0, s, tzinfo=dt.UTC)) for s in (1, 2, 3))
    events = [("update", a), ("insert", b), ("insert", a), ("update", c), ("replace", "custom-id")]
    # Watermark b: updates at or below it count, an insert the scan returned does not, above it waits.
    assert batches._changed_ids(events, scanned={b}, hi=str(b)) == [a, "custom-id"]
    with pytest.raises(Exception, match="neither"):
        batches.parse_range("not-a-key")
    assert batches.changes_key([b, a], None) == batches.changes_key([a, b], None)


def test_schedules_follow_their_environment_variables(monkeypatch):
    monkeypatch.setenv("SALESPRED_RETRAIN_CRON", "30 3 * * 1")
    monkeypatch.setenv("SALESPRED_TIMEZONE", "Europe/Madrid")
    weekly = automation.schedule_from_env("weekly", automation.retrain_job, "SALESPRED_RETRAIN_CRON", "0 2 * * *", "t")
    assert weekly.cron_schedule == "30 3 * * 1" and weekly.execution_timezone == "Europe/Madrid"
    assert weekly.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("SALESPRED_AUTOMATION", "off")
    assert automation.schedule_from_env("off", automation.retrain_job, "SALESPRED_RETRAIN_CRON", "0 2 * * *",
                                "test").default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.setenv("SALESPRED_RETRAIN_CRON", "every night")
    with pytest.raises(SalespredError, match=r"SALESPRED_RETRAIN_CRON='every night'.*five fields"):
        automation.schedule_from_env("bad", automation.retrain_job, "SALESPRED_RETRAIN_CRON", "0 2 * * *", "test")


def test_a_batch_written_while_the_model_switched_runs_again_with_the_new_one(mongo, redis_resource, sqlite_url,
                                                                             monkeypatch):
    """A promotion lands between the scoring and the writes: the IO managers wrote the old version's rows, so the
    step runs again and the batch ends with the new version's rows in SQL and Redis."""
    loading.seed_synthetic(mongo, 200, seed=7, as_of=AS_OF)
    old = train_current_model(mongo)
    new = train_current_model(mongo, trees=20, promote=False)
    [key] = batches.tile(mongo, rows=1_000)
    real, calls = batches.still_current, []

    def promote_after_the_first_writes(mongo_resource, version):
        calls.append(version)
        if len(calls) == 2:  # the asset's check after its writes (the first call is score_batch's own)
            model_store.set_current(mongo_resource.db, new.version, "test: a promotion during the batch")
        return real(mongo_resource, version)

    monkeypatch.setattr(batches, "still_current", promote_after_the_first_writes)
    resources = build_test_resources(mongo, redis_resource, sqlite_url)
    outcome = runner.materialize("score_new_opportunities", resources=resources, ephemeral=True, partition_key=key)
    assert outcome.ok, (outcome.failed_steps, outcome.failed_checks)
    assert calls == [old.version, old.version, new.version, new.version]
    assert outcome.metadata["new_opportunity_scores"]["attempts"] == 2
    fact, history = _fact(sqlite_url)
    assert set(fact["model_version"]) == {new.version} and len(fact) == 200
    assert history == 400  # append-only: the old version's scoring stays recorded, as any scoring does
    assert {json.loads(raw)["model_version"] for raw in redis_resource.cache().get_many(list(fact.index))} \
        == {new.version}


@pytest.mark.parametrize("job_name", ["full_refresh", "retrain", "rescore"])
def test_job_selection_holds_every_input(job_name: str) -> None:
    """A job never loads an intermediate frame it does not materialise (it would read what an earlier run left in
    storage: a retrain once scored 1,700 fresh rows against 1,500 stale features). Inputs read from a live store
    (the current model from MongoDB, SQL tables) are loaded as they are now, which is the point."""
    from salespred_assets.definitions import defs

    d = defs()
    graph = d.resolve_asset_graph()
    job = d.resolve_job_def(job_name)
    selected = {key for key in graph.materializable_asset_keys if key in set(job.asset_layer.selected_asset_keys)}
    outside: dict[str, list[str]] = {}
    for key in selected:
        node_def = d.resolve_assets_def(key).node_def
        loaded = {d.resolve_assets_def(key).keys_by_input_name[i.name] for i in node_def.input_defs
                  if not i.dagster_type.is_nothing}  # a plain dependency loads nothing
        outside[key.to_user_string()] = sorted(p.to_user_string() for p in loaded
                                               if p in graph.materializable_asset_keys and p not in selected
                                               and graph.get(p).io_manager_key == "io_manager")
    assert not {k: v for k, v in outside.items() if v}, f"{job_name} loads from storage: {outside}"
