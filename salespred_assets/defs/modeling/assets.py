"""Modeling: features, the tuned forest (a candidate), and the promoted production model."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from salespred_assets import settings
from salespred_assets.core import card, plots
from salespred_assets.core.features import build_features, feature_spec
from salespred_assets.core.model import SearchConfig, WinModel
from salespred_assets.core.scoring import as_of_day, outcome
from salespred_assets.core.training import gate_backtest, train_production
from salespred_assets.defs.common import IO_RETRY, markdown_table, md
from salespred_assets.errors import SalespredError
from salespred_assets.mongo import history
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store, model_versions
from salespred_assets.sql import tables

GROUP = "modeling"


class TrainingConfig(dg.Config):
    search: str = Field(default_factory=lambda: settings.value(settings.ENV_SEARCH),
                        description="'full' (production search) or 'fast' (smoke runs and tests)")
    yardstick: bool = Field(default=True, description="also train the HistGradientBoosting yardstick")
    as_of: str | None = Field(default=None, description="backtest date (YYYY-MM-DD); default: where the newest "
                                                        "fifth of closed opportunities begins")


@dg.asset(group_name=GROUP, kinds={"pandas"}, retry_policy=IO_RETRY)
def opportunity_features(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Model inputs for every opportunity as of today (its age today, its client's history up to today), with
    id and outcome: what the open ones are scored on."""
    schema = mongo.schema()
    today = as_of_day(dt.datetime.now(dt.UTC))
    features = build_features(raw_opportunities, schema, at=np.full(len(raw_opportunities), today))
    features.insert(0, "opportunity_id", raw_opportunities[schema.id].astype("str"))
    features.insert(1, "outcome", outcome(raw_opportunities, schema))
    spec = feature_spec(schema)
    described = features[list(spec.numeric)].describe().T.reset_index(names="feature")[["feature", "min", "50%", "max"]]
    return dg.Output(features, metadata={
        "dagster/row_count": len(features),
        "categorical_features": ", ".join(spec.categorical),
        "numeric_features": md(described, max_rows=40),
        "as_of": str(today),
    })


@dg.asset(group_name=GROUP, kinds={"scikit-learn"}, io_manager_key="model_io_manager", retry_policy=IO_RETRY)
def win_model(context: dg.AssetExecutionContext, config: TrainingConfig, raw_opportunities: pd.DataFrame,
              mongo: MongoResource) -> dg.Output[WinModel]:
    """A tuned, calibrated random forest (a candidate version), judged by a backtest as of a past date: trained
    on the history before it, scored on the pipeline open then and on the opportunities created after."""
    schema = mongo.schema()
    changes = history.changes_frame(mongo.db)
    search = SearchConfig.preset(config.search)
    try:
        report = train_production(raw_opportunities, schema, search, yardstick=config.yardstick,
                                  as_of=config.as_of, changes=changes)
    except SalespredError as exc:  # a data problem (NotEnoughData, no dates to backtest): retrying cannot help
        raise dg.Failure(str(exc), allow_retries=False) from exc
    model, bt = report.model, report.backtest
    summary = model.info["backtest"]
    # The gate compares candidate and current on this same backtest: the current model's hyperparameters
    # go through it too.
    current = model_store.current_version(mongo.db)
    entry = model_store.registry_entry(mongo.db, current) if current else None
    if entry is not None:
        try:
            current_figures = gate_backtest(raw_opportunities, schema, summary["as_of"], entry["info"]["params"],
                                            search, changes=changes)
        except (SalespredError, KeyError, TypeError, ValueError) as exc:
            context.log.warning(f"could not backtest the current model {current}: {exc}")
            current_figures = None
        model.info["gate"] = {"as_of": summary["as_of"], "current_version": current, "current": current_figures}
    head = model.info["metrics"]
    context.log.info(f"candidate {model.version}: backtest as of {summary['as_of']}, new opportunities ROC AUC "
                     f"{_fig(head.get('roc_auc'))}, Brier {_fig(head.get('brier'))}")
    return dg.Output(model, metadata={
        "model_version": model.version,
        "backtest_as_of": summary["as_of"],
        "roc_auc": _number(head.get("roc_auc")),
        "accuracy": _number(head.get("accuracy")),
        "brier": _number(head.get("brier")),
        "threshold": model.threshold,
        "backtest": dg.MetadataValue.md(card.backtest_table(summary)),
        "forecast": dg.MetadataValue.md(card.forecast_table(summary)),
        "calibration_table": dg.MetadataValue.md(card.calibration_md(summary["calibration"]["new"])),
        "hyperparameters": dg.MetadataValue.md(card.params_table(model.info["params"])),
        "search_seconds": round(bt.seconds.get("train_s", 0.0), 2),
        "training_seconds": round(report.seconds["total_s"], 2),
        "search_trials": dg.MetadataValue.md(_search_md(bt.trained.search_table)),
        "roc_curve": dg.MetadataValue.md(plots.markdown_image(report.plots["roc"], "ROC curve")),
        "calibration_curve": dg.MetadataValue.md(plots.markdown_image(report.plots["calibration"], "calibration")),
        "feature_importance": dg.MetadataValue.md(plots.markdown_image(report.plots["importance"], "importance")),
        "model_card": dg.MetadataValue.md(model.info["card"]),
    })


def _fig(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _number(value: float | None) -> float | str:
    return "n/a (one outcome only among the new opportunities)" if value is None else float(value)


def _search_md(table: pd.DataFrame) -> str:
    if table.empty:
        return "no search (fixed hyperparameters)"
    return markdown_table(table.sort_values("holdout_roc_auc", ascending=False), max_rows=15)


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
