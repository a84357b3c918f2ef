"""Modeling: features, the tuned forest (a candidate), and the promoted production model."""

import os

import dagster as dg
import pandas as pd
from pydantic import Field

from salespred_assets.core import card, plots
from salespred_assets.core.features import build_features, feature_spec
from salespred_assets.core.model import SearchConfig, WinModel
from salespred_assets.core.scoring import outcome
from salespred_assets.core.training import train_production
from salespred_assets.defs.common import IO_RETRY, markdown_table, md
from salespred_assets.errors import NotEnoughData
from salespred_assets.mongo import model_store
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.sql import model_versions, tables

GROUP = "modeling"
# Promotion gate: a candidate must reach 98% of the current model's held-out ROC AUC, and this floor.
RELATIVE_AUC = 0.98
AUC_FLOOR = 0.70


class TrainingConfig(dg.Config):
    search: str = Field(default_factory=lambda: os.environ.get("SALESPRED_SEARCH", "full"),
                        description="'full' (production search) or 'fast' (smoke runs and tests)")
    yardstick: bool = Field(default=True, description="also train the HistGradientBoosting yardstick")


@dg.asset(group_name=GROUP, kinds={"pandas"}, retry_policy=IO_RETRY)
def opportunity_features(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Model inputs for every opportunity (client facts counted over all of them), with id and outcome."""
    schema = mongo.schema()
    features = build_features(raw_opportunities, schema)
    features.insert(0, "opportunity_id", raw_opportunities[schema.id].astype("str"))
    features.insert(1, "outcome", outcome(raw_opportunities, schema))
    spec = feature_spec(schema)
    described = features[list(spec.numeric)].describe().T.reset_index(names="feature")[["feature", "min", "50%", "max"]]
    return dg.Output(features, metadata={
        "dagster/row_count": len(features),
        "categorical_features": ", ".join(spec.categorical),
        "numeric_features": md(described, max_rows=40),
        "client_win_history": spec.client,
    })


@dg.asset(group_name=GROUP, kinds={"scikit-learn"}, io_manager_key="model_io_manager", retry_policy=IO_RETRY)
def win_model(context: dg.AssetExecutionContext, config: TrainingConfig, raw_opportunities: pd.DataFrame,
              opportunity_features: pd.DataFrame, mongo: MongoResource) -> dg.Output[WinModel]:
    """A tuned, calibrated random forest: a candidate version, evaluated on the original protocol."""
    schema = mongo.schema()
    try:
        report = train_production(raw_opportunities, schema, SearchConfig.preset(config.search),
                                  yardstick=config.yardstick, features=opportunity_features[feature_spec(schema).columns])
    except NotEnoughData as exc:  # a data problem: retrying cannot help (the retry policy is for the GridFS write)
        raise dg.Failure(str(exc), allow_retries=False) from exc
    model, ev = report.model, report.evaluation
    context.log.info(f"candidate {model.version}: held-out ROC AUC {ev.metrics['roc_auc']:.4f}, "
                     f"accuracy {ev.metrics['accuracy']:.4f}")
    rows = {"forest (calibrated)": ev.metrics, "forest (raw)": ev.raw_metrics}
    if ev.yardstick:
        rows["HistGradientBoosting yardstick"] = ev.yardstick
    return dg.Output(model, metadata={
        "model_version": model.version,
        "roc_auc": ev.metrics["roc_auc"],
        "accuracy": ev.metrics["accuracy"],
        "brier": ev.metrics["brier"],
        "threshold": model.threshold,
        "metrics": dg.MetadataValue.md(card.metrics_table(rows)),
        "confusion_matrix": dg.MetadataValue.md(card.confusion_table(ev.metrics["confusion_matrix"])),
        "hyperparameters": dg.MetadataValue.md(card.params_table(model.info["params"])),
        "search_seconds": round(report.seconds.get("search_s", 0.0), 2),
        "training_seconds": round(report.seconds["total_s"], 2),
        "search_trials": dg.MetadataValue.md(_search_md(ev.trained.search_table)),
        "roc_curve": dg.MetadataValue.md(plots.markdown_image(report.plots["roc"], "ROC curve")),
        "calibration_curve": dg.MetadataValue.md(plots.markdown_image(report.plots["calibration"], "calibration")),
        "feature_importance": dg.MetadataValue.md(plots.markdown_image(report.plots["importance"], "importance")),
        "model_card": dg.MetadataValue.md(model.info["card"]),
    })


def _search_md(table: pd.DataFrame) -> str:
    if table.empty:
        return "no search (fixed hyperparameters)"
    return markdown_table(table.sort_values("oob_roc_auc", ascending=False), max_rows=15)


@dg.asset_check(asset=win_model, blocking=True, description=(
    f"Promotion gate: held-out ROC AUC >= {RELATIVE_AUC} x the current model's and >= {AUC_FLOOR}."))
def promotion_gate(mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db
    latest = db[model_store.REGISTRY].find_one({}, sort=[("trained_at", -1)])
    if latest is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no candidate in the registry"})
    candidate_auc = float(latest["info"]["metrics"]["roc_auc"])
    current = model_store.current_version(db)
    current_auc = None
    if current and current != latest["_id"]:
        entry = model_store.registry_entry(db, current)
        current_auc = float(entry["info"]["metrics"]["roc_auc"]) if entry else None
    required = max(AUC_FLOOR, RELATIVE_AUC * current_auc) if current_auc is not None else AUC_FLOOR
    passed = candidate_auc >= required
    if not passed:
        model_store.mark(db, latest["_id"], "rejected",
                         f"held-out ROC AUC {candidate_auc:.4f} below the required {required:.4f}")
    return dg.AssetCheckResult(passed=passed, metadata={
        "candidate_version": latest["_id"], "candidate_roc_auc": candidate_auc,
        "current_version": current or "none", "current_roc_auc": current_auc if current_auc is not None else "none",
        "required_roc_auc": required, "relative_rule": RELATIVE_AUC, "absolute_floor": AUC_FLOOR,
    })


@dg.asset(group_name=GROUP, kinds={"mongodb"}, deps=[win_model], retry_policy=IO_RETRY)
def production_model(mongo: MongoResource) -> dg.MaterializeResult:
    """The model that scores: the newest candidate, once it has passed the promotion gate."""
    db = mongo.db
    latest = db[model_store.REGISTRY].find_one({"status": {"$ne": "rejected"}}, sort=[("trained_at", -1)])
    if latest is None:
        raise model_store.NoModel("no candidate passed the gate; the current model stays")
    previous = model_store.set_current(db, latest["_id"], reason="passed the promotion gate", action="gate")
    return dg.MaterializeResult(metadata={
        "model_version": latest["_id"],
        "previous_version": previous or "none",
        "roc_auc": float(latest["info"]["metrics"]["roc_auc"]),
    })


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          deps=[production_model], metadata={"table": tables.FACT_MODEL_SWITCH, "write": "replace"})
def fact_model_switch(mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Every switch of the model that scores, in order: promotions by the gate, `salespred model promote`,
    `salespred model rollback` (from MongoDB's pointer history, the source of truth)."""
    frame = model_versions.switches_frame(model_store.pointer_history(mongo.db))
    return dg.Output(frame, metadata={
        "switches": len(frame),
        "current_version": str(frame["model_version"].iloc[-1]) if len(frame) else "none",
        "latest_switches": md(frame.tail(10).iloc[::-1], max_rows=10) if len(frame) else dg.MetadataValue.md("none"),
    })
