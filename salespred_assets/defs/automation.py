"""Automation: the jobs, schedules and sensors that keep the platform current without anyone clicking.

- ``new_opportunities`` (sensor, every 30 s): finds new and changed opportunities (see
  :mod:`salespred_assets.scoring.batches`), adds one ``opportunity_batches`` partition per batch and launches
  ``score_new_opportunities`` for it, with the batch key as ``run_key`` (never the same batch twice).
- ``full_refresh`` (job): every asset but the new-opportunity batches (``salespred materialize`` runs it).
- ``retrain`` (job; "retrain now" in the UI) and ``nightly_retrain`` (its schedule, cron from
  ``SALESPRED_RETRAIN_CRON``): fresh data, a candidate model, the blocking promotion gate, and, if the
  candidate passes, its promotion and everything downstream (SQL, the Redis cache, reports, drift).
- ``rescore`` (job): every opportunity scored again by the current model, SQL replaced in one
  transaction and a new Redis generation swapped in; ``salespred model promote|rollback`` runs it.
- ``refresh_dashboard`` (job) on ``dashboard_after_batches`` (sensor): once batches have been scored, the
  dashboard's stored figures are read from the views again (one run however many batches ran).
- ``monitor_drift`` (job) on ``drift_monitor`` (schedule, ``SALESPRED_DRIFT_CRON``), and
  ``retrain_on_drift`` (sensor): a drift measurement at the 'act' threshold starts a retrain, at most
  once per model version and not while the current model is younger than the cooldown.

Every job retries database steps with backoff (``IO_RETRY``) and carries a ``salespred/workload`` tag
that the production instance's run queue limits (training: one at a time; database-heavy: three).
"""

import datetime as dt
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg

from salespred_assets import settings
from salespred_assets.core import drift
from salespred_assets.defs.common import IO_RETRY
from salespred_assets.defs.ingestion.assets import raw_opportunities, sellers
from salespred_assets.defs.modeling.assets import fact_model_switch, opportunity_features, win_model
from salespred_assets.defs.monitoring.assets import opportunity_drift
from salespred_assets.defs.reporting.assets import (
    code_dimensions,
    dashboard_figures,
    dim_model_version,
    dim_seller,
    sales_dashboard,
)
from salespred_assets.defs.scoring.assets import NEW_OPPORTUNITY_SCORES, new_opportunity_scores, opportunity_predictions
from salespred_assets.errors import SalespredError
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store
from salespred_assets.scoring import batches

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the type
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

WORKLOAD = "salespred/workload"
BATCHES = dg.AssetSelection.assets(new_opportunity_scores)
# Everything that is not a batch: what a full refresh materialises.
EVERYTHING = dg.AssetSelection.all() - BATCHES
# The model and everything it feeds, with every input of those (a retrain that rescored from features left in
# storage by an earlier run scored fresh rows against stale ones).
RETRAIN = dg.AssetSelection.assets(win_model).downstream().upstream().materializable() - BATCHES
# Rescoring with the current model: fresh data and features, predictions and everything they feed (the
# reporting views need the sellers too), and the model-version tables (a switch is recorded by the same run).
RESCORE = (dg.AssetSelection.assets(raw_opportunities, opportunity_features, sellers, dim_seller, dim_model_version,
                                    fact_model_switch, code_dimensions)
           | dg.AssetSelection.assets(opportunity_predictions).downstream()) - BATCHES

full_refresh_job = dg.define_asset_job(
    "full_refresh", selection=EVERYTHING,  # every asset but the new-opportunity batches
    op_retry_policy=IO_RETRY,  # checks read the databases too
    description="Read every opportunity, retrain, promote if the gate passes, rescore, and refresh SQL and Redis.",
)
retrain_job = dg.define_asset_job(
    "retrain", selection=RETRAIN, op_retry_policy=IO_RETRY, tags={WORKLOAD: "training"},
    description="Retrain now: read every opportunity, train a candidate, and promote it only if the blocking "
                "promotion gate passes; a promoted model rescores SQL and the Redis cache.")
rescore_job = dg.define_asset_job(
    "rescore", selection=RESCORE, op_retry_policy=IO_RETRY, tags={WORKLOAD: "database-heavy"},
    description="Rescore every opportunity with the current model: SQL replaced in one transaction, a new Redis "
                "generation swapped in (lookups never miss). `salespred model promote|rollback` runs it.")
score_new_opportunities_job = dg.define_asset_job(
    "score_new_opportunities", selection=BATCHES, op_retry_policy=IO_RETRY,
    executor_def=dg.in_process_executor, tags={WORKLOAD: "incremental"},
    description="Score one batch of new or changed opportunities (a partition of opportunity_batches): SQL upsert, "
                "history append, live Redis generation. Launched by the new_opportunities sensor.")
refresh_dashboard_job = dg.define_asset_job(
    "refresh_dashboard", selection=dg.AssetSelection.assets(dashboard_figures, sales_dashboard),
    op_retry_policy=IO_RETRY, tags={WORKLOAD: "database-heavy"},
    description="Store the reporting views' rows for the dashboard again. Launched by the dashboard_after_batches "
                "sensor once new-opportunity batches have changed the fact table.")
monitor_drift_job = dg.define_asset_job(
    "monitor_drift", selection=dg.AssetSelection.assets(raw_opportunities, opportunity_features, opportunity_drift),
    op_retry_policy=IO_RETRY, description="Measure how far recent opportunities drifted from the training data.")


_Status = TypeVar("_Status", dg.DefaultScheduleStatus, dg.DefaultSensorStatus)


def _status(kind: type[_Status]) -> _Status:
    return kind.RUNNING if settings.automation_enabled() else kind.STOPPED


def schedule_from_env(name: str, job: "UnresolvedAssetJobDefinition", env: str, default: str,
                      description: str) -> dg.ScheduleDefinition:
    cron = settings.get(env) or default
    timezone = settings.value(settings.ENV_TIMEZONE)
    try:
        return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron, execution_timezone=timezone,
                                     default_status=_status(dg.DefaultScheduleStatus), description=description)
    except dg.DagsterInvalidDefinitionError as exc:
        raise SalespredError(f"{env}={cron!r} / {settings.ENV_TIMEZONE}={timezone!r} is not a valid schedule: "
                             f"{str(exc).splitlines()[0]} (a cron expression has five fields, e.g. '0 2 * * *', "
                             f"and the time zone is an IANA name such as 'Europe/Madrid')") from exc


nightly_retrain = schedule_from_env("nightly_retrain", retrain_job, settings.ENV_RETRAIN_CRON,
                                  settings.VARIABLES[settings.ENV_RETRAIN_CRON].default,
                            f"Retrain on a schedule (cron from {settings.ENV_RETRAIN_CRON}, default nightly at 02:00).")
drift_monitor = schedule_from_env("drift_monitor", monitor_drift_job, settings.ENV_DRIFT_CRON,
                                settings.VARIABLES[settings.ENV_DRIFT_CRON].default,
                          f"Measure drift on a schedule (cron from {settings.ENV_DRIFT_CRON}, default every 6 hours).")


# Batch partitions kept; older ones are removed as new ones arrive (about a week of busy half-minutes).
KEEP_PARTITIONS = 20_000

_indexed: set[tuple[str, str]] = set()


def _ensure_indexes(mongo: MongoResource) -> None:
    """Once per process: the indexes the sensor's and the batches' queries use."""
    key = (mongo.resolved_uri(), mongo.db.name)
    if key not in _indexed:
        mongo.ensure_indexes()
        _indexed.add(key)


def first_watermark(instance: dg.DagsterInstance) -> str | None:
    """Where a sensor without a cursor starts: the newest document the last full read saw."""
    event = instance.get_latest_materialization_event(raw_opportunities.key)
    mat = event.asset_materialization if event else None
    value = mat.metadata.get("max_object_id") if mat else None
    return (str(value.value) or None) if value is not None else None


@dg.sensor(name="new_opportunities", jobs=[score_new_opportunities_job, rescore_job],
           minimum_interval_seconds=int(settings.positive_number(settings.ENV_SENSOR_INTERVAL)),
           default_status=_status(dg.DefaultSensorStatus),
           description="New and changed opportunities, in batches: one partition and one run per batch, keyed by "
                       "the batch (an _id range, or a change-stream batch), so no batch is ever scored twice.")
def new_opportunities(context: dg.SensorEvaluationContext, mongo: MongoResource) -> dg.SensorResult:
    if model_store.current_version(mongo.db) is None:
        return dg.SensorResult(skip_reason="no model promoted yet: run the retrain job (or full_refresh) first; "
                                           "new opportunities are scored once a model is current")
    _ensure_indexes(mongo)
    cursor = batches.Cursor.loads(context.cursor) or batches.Cursor(last_id=first_watermark(context.instance))
    plan = batches.plan(mongo, cursor)
    for note in plan.notes:
        context.log.warning(note)
    requests = [dg.RunRequest(run_key=b.key, partition_key=b.key, job_name=score_new_opportunities_job.name,
                              tags={"salespred/batch_kind": b.kind, "salespred/batch_rows": str(b.rows)})
                for b in plan.batches]
    if plan.resync:
        context.log.warning(plan.resync)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        requests.append(dg.RunRequest(run_key=f"resync-{stamp}", job_name=rescore_job.name,
                                      tags={"salespred/trigger": "change-stream-resync"}))
    keys = [b.key for b in plan.batches]
    partitions: list = [dg.AddDynamicPartitionsRequest(batches.PARTITIONS, keys)] if keys else []
    if keys:
        # Retention: the oldest batches leave the partition list (their runs and materialisations stay in
        # the event log), so the list the UI and the daemon read stays bounded.
        existing = context.instance.get_dynamic_partitions(batches.PARTITIONS)
        expired = existing[:max(0, len(existing) + len(keys) - KEEP_PARTITIONS)]
        if expired:
            batches.drop_manifests(mongo.db, expired)
            partitions.append(dg.DeleteDynamicPartitionsRequest(batches.PARTITIONS, expired))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partitions or None,
        cursor=plan.cursor.dumps(),
        skip_reason=None if requests else "no new or changed opportunities",
    )


@dg.sensor(name="dashboard_after_batches", job=refresh_dashboard_job,
           minimum_interval_seconds=int(settings.positive_number(settings.ENV_SENSOR_INTERVAL, 30)),
           default_status=_status(dg.DefaultSensorStatus),
           description="After new-opportunity batches have been scored, one run stores the dashboard's figures "
                       "again (however many batches ran since the last tick).")
def dashboard_after_batches(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    newest = context.instance.fetch_materializations(dg.AssetKey(NEW_OPPORTUNITY_SCORES), limit=1).records
    if not newest:
        return dg.SkipReason("no new-opportunity batch has been scored yet")
    seen = int(context.cursor or 0)
    latest = newest[0].storage_id
    if latest <= seen:
        return dg.SkipReason("no batch scored since the dashboard's figures were last stored")
    context.update_cursor(str(latest))
    return dg.RunRequest(run_key=f"dashboard-{latest}", tags={"salespred/trigger": "batches"})


@dg.asset_sensor(asset_key=opportunity_drift.key, job=retrain_job, name="retrain_on_drift",
                 minimum_interval_seconds=60, default_status=_status(dg.DefaultSensorStatus),
                 description=f"Starts a retrain when a drift measurement reaches PSI {drift.ACT} (at most once per "
                             f"model version, never while the current model is younger than "
                             f"{settings.ENV_DRIFT_COOLDOWN} hours, default 6).")
def retrain_on_drift(context: dg.SensorEvaluationContext,
                     asset_event: dg.EventLogEntry) -> dg.RunRequest | dg.SkipReason:
    mat = asset_event.asset_materialization
    meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in (mat.metadata if mat else {}).items()}
    version, max_psi = str(meta.get("model_version", "none")), float(meta.get("max_psi") or 0.0)
    if meta.get("action") != "retrain":
        return dg.SkipReason(f"drift of model {version}: max PSI {max_psi:.3f} is below {drift.ACT}")
    cooldown_h = settings.positive_number(settings.ENV_DRIFT_COOLDOWN)
    trained = meta.get("model_trained_at")
    if trained:
        age_h = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(str(trained))).total_seconds() / 3600
        if age_h < cooldown_h:
            return dg.SkipReason(f"drift of model {version} (max PSI {max_psi:.3f}), but it was trained {age_h:.1f} h "
                                 f"ago, within the {cooldown_h:g} h cooldown")
    return dg.RunRequest(run_key=f"drift-{version}",
                         tags={"salespred/trigger": "drift", "salespred/drift_psi": f"{max_psi:.3f}"})

