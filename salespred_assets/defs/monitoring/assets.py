"""Monitoring: how far recent opportunities have drifted from the data the current model learned from."""

import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from salespred_assets.core import drift
from salespred_assets.core.features import build_features
from salespred_assets.defs.common import IO_RETRY, md
from salespred_assets.defs.modeling.assets import production_model
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store

GROUP = "monitoring"


class DriftConfig(dg.Config):
    recent_days: int = Field(default=90,
                             description="'recent' = created in this many days up to the newest creation date")
    min_recent_rows: int = Field(default=500,
                                 description="widen the window to the newest N opportunities when it holds fewer")


@dg.asset(group_name=GROUP, kinds={"pandas"}, deps=[production_model], retry_policy=IO_RETRY)
def opportunity_drift(config: DriftConfig, raw_opportunities: pd.DataFrame, opportunity_features: pd.DataFrame,
                      mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """PSI of every monitored model input: recent opportunities, as at their capture, against the current
    model's training snapshots at capture (stored with the model version). Bands: < 0.10 stable, 0.10-0.25
    watch, >= 0.25 act (retrain)."""
    version = model_store.current_version(mongo.db)
    entry = model_store.registry_entry(mongo.db, version) if version else None
    reference = ((entry or {}).get("info") or {}).get("reference")
    if not reference:
        why = "no model promoted yet" if version is None else f"model {version} was stored without a training profile"
        return dg.Output(drift.compare({}, opportunity_features), metadata={
            "model_version": version or "none", "reference": why, "action": "none", "max_psi": 0.0})
    schema = mongo.schema()
    created = (pd.Series(raw_opportunities[schema.created].to_numpy(dtype="datetime64[D]")
                         .astype("int64").astype(float))
               if schema.created else None)
    mask = drift.recent_rows(created, opportunity_features["outcome"] == "open", config.recent_days,
                             config.min_recent_rows)
    # As at capture (age 0, the client's history up to its creation), like the profile's training rows.
    recent = build_features(raw_opportunities[np.asarray(mask)], schema, context=raw_opportunities)
    table = drift.compare(reference, recent)
    worst = table.iloc[0] if len(table) else None
    max_psi = float(worst["psi"]) if worst is not None else 0.0
    trained_at = (entry or {}).get("trained_at") or ""
    return dg.Output(table, metadata={
        "model_version": version,
        "model_trained_at": str(trained_at),
        "recent_rows": int(mask.sum()),
        "recent_definition": (f"created in the {config.recent_days} days up to the newest creation date "
                              f"(at least the newest {config.min_recent_rows})" if created is not None
                              else "the open opportunities (the export has no creation date)"),
        "reference_rows": int(reference.get("rows", 0)),
        "max_psi": max_psi,
        "worst_feature": str(worst["feature"]) if worst is not None else "none",
        "features_to_act": ", ".join(table.loc[table["band"] == "act", "feature"]) or "none",
        "features_to_watch": ", ".join(table.loc[table["band"] == "watch", "feature"]) or "none",
        "action": {"act": "retrain", "watch": "watch"}.get(drift.band(max_psi), "none"),
        "thresholds": f"watch >= {drift.WATCH}, act (retrain) >= {drift.ACT}",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "psi_by_feature": md(table, max_rows=40),
    })
