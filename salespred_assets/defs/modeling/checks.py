"""Checks on the model inputs (ranges, categories the current model never saw), on the candidate (the promotion
gate) and on the model that scores."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from salespred_assets.core.features import feature_spec
from salespred_assets.defs.common import md
from salespred_assets.defs.modeling.assets import fact_model_switch, opportunity_features, production_model, win_model
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import gate, model_store

# A feature row outside these bounds is a bug in the feature pipeline or impossible data, never drift.
MONTH_FEATURES = ("created_month",)
NON_NEGATIVE_FEATURES = ("age_days", "client_tenure_days", "client_prior_opportunities", "client_prior_units",
                         "client_closed_before", "client_won_before", "amount_vs_client")
# Missing where there is no history to count (a client's first opportunity, no decided outcome yet).
MAY_BE_MISSING = ("client_win_rate", "amount_vs_client")
# Warn when more rows than this carry a category the current model never saw (it encodes them as unknown).
UNSEEN_ROWS_WARN = 0.01


@dg.asset_check(asset=opportunity_features, blocking=True,
                # Of the extracted rows, only how many there are: one column read from the stored Parquet.
                additional_ins={"raw_opportunities": dg.AssetIn("raw_opportunities", metadata={"columns": ["_id"]})},
                description="One feature row per opportunity; every numeric feature finite (or missing where there "
                            "is no history yet, or the export left the number empty) and within its bounds (months "
                            "1-12, ages, counts and ratios >= 0); no blank category (a missing one is a category).")
def opportunity_features_ranges(opportunity_features: pd.DataFrame, raw_opportunities: pd.DataFrame,
                                mongo: MongoResource) -> dg.AssetCheckResult:
    schema = mongo.schema()
    spec = feature_spec(schema)
    frame = opportunity_features
    numeric = frame[list(spec.numeric)].to_numpy(dtype=float) if spec.numeric else np.empty((len(frame), 0))
    may_be_missing = {*MAY_BE_MISSING, *schema.number_fields}  # an export's empty number stays NaN for the forest
    rules = {
        "non_finite": {c: int((np.isinf(numeric[:, i]) | (np.isnan(numeric[:, i]) & (c not in may_be_missing))).sum())
                       for i, c in enumerate(spec.numeric)},
        "month_outside_1_12": {c: int((~frame[c].between(1, 12)).sum()) for c in MONTH_FEATURES if c in frame},
        "negative": {c: int((frame[c] < 0).sum()) for c in NON_NEGATIVE_FEATURES if c in frame},
        # Blank text only: a missing category is one, and "None" or "NA" is a category as written.
        "blank_category": {c: int(frame[c].dropna().astype("str").str.strip().eq("").sum()) for c in spec.categorical},
    }
    violations = {f"{rule}:{col}": n for rule, cols in rules.items() for col, n in cols.items() if n}
    summary = pd.DataFrame({"feature": list(spec.numeric),
                            "min": np.nanmin(numeric, axis=0) if len(frame) else np.nan,
                            "max": np.nanmax(numeric, axis=0) if len(frame) else np.nan})
    return dg.AssetCheckResult(
        passed=not violations and len(frame) == len(raw_opportunities),
        metadata={"rows": len(frame), "opportunities": len(raw_opportunities),
                  "violations": sum(violations.values()),
                  "violations_by_rule": ", ".join(f"{k} ({v})" for k, v in violations.items()) or "none",
                  "numeric_ranges": md(summary, max_rows=40, floatfmt="{:.4g}")},
    )


@dg.asset_check(asset=opportunity_features, blocking=False,
                description=f"Categories the current model never saw (it encodes them as unknown): warns when more "
                            f"than {UNSEEN_ROWS_WARN:.0%} of rows carry one.")
def opportunity_features_unseen_categories(opportunity_features: pd.DataFrame,
                                           mongo: MongoResource) -> dg.AssetCheckResult:
    version = model_store.current_version(mongo.db)
    if version is None:
        return dg.AssetCheckResult(passed=True, metadata={"current_model": "none (nothing to compare with yet)"})
    model = model_store.load(mongo.db, version)
    missing = [c for c in model.spec.columns if c not in opportunity_features.columns]
    if missing:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={
            "current_model": version, "features_the_model_needs_but_the_data_lacks": ", ".join(missing)})
    pre = model.pipeline.named_steps["pre"]
    known = dict(zip(model.spec.categorical, pre.named_transformers_["categorical"].categories_, strict=True)) \
        if model.spec.categorical else {}
    any_unseen = np.zeros(len(opportunity_features), dtype=bool)
    rows = []
    for col, categories in known.items():
        values = opportunity_features[col].astype("str")
        unseen = ~values.isin(set(map(str, categories)))
        any_unseen |= unseen.to_numpy()
        rows.append({"feature": col, "known_categories": len(categories),
                     "unseen_categories": int(values[unseen].nunique()), "rows_with_unseen": int(unseen.sum()),
                     "examples": ", ".join(sorted(values[unseen].unique())[:5])})
    table = pd.DataFrame(rows, columns=["feature", "known_categories", "unseen_categories", "rows_with_unseen",
                                        "examples"])
    share = float(any_unseen.mean()) if len(any_unseen) else 0.0
    return dg.AssetCheckResult(
        passed=share <= UNSEEN_ROWS_WARN, severity=dg.AssetCheckSeverity.WARN,
        metadata={"current_model": version, "rows": len(any_unseen), "rows_with_unseen_category": int(any_unseen.sum()),
                  "share_rows_with_unseen_category": share, "warn_above": UNSEEN_ROWS_WARN,
                  "by_feature": md(table, max_rows=40)},
    )


@dg.asset_check(asset=win_model, blocking=True, description=(
    f"Promotion gate, candidate and current model on the same backtest: ROC AUC >= {gate.RELATIVE_AUC} x the current "
    f"model's and >= {gate.AUC_FLOOR}, Brier score <= the current model's + {gate.BRIER_SLACK}."))
def promotion_gate(mongo: MongoResource) -> dg.AssetCheckResult:
    """Reports the gate's verdict on the newest candidate; blocking, so a rejected one is never promoted. It only
    reads: the registry recorded the verdict when it stored the candidate (model_store.register_candidate)."""
    latest = mongo.db[model_store.REGISTRY].find_one({}, sort=[("trained_at", -1)])
    if latest is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no candidate in the registry"})
    passed, reason, figures = model_store.gate_verdict(latest["info"])
    return dg.AssetCheckResult(passed=passed,
                               metadata={"candidate_version": latest["_id"], "reason": reason, **figures})


@dg.asset_check(asset=production_model, blocking=True,
                additional_ins={"opportunity_features": dg.AssetIn("opportunity_features")},
                description="The current model loads from GridFS, is the registry's promoted version, and scores a "
                            "sample with probabilities in [0, 1].")
def production_model_serves(opportunity_features: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    db = mongo.db
    version = model_store.current_version(db)
    if version is None:
        return dg.AssetCheckResult(passed=False, metadata={"current_model": "none"})
    entry = model_store.registry_entry(db, version) or {}
    started = time.perf_counter()
    model = model_store.load(db, version)
    load_s = time.perf_counter() - started
    sample = opportunity_features.sample(min(200, len(opportunity_features)), random_state=0)
    prob = model.predict(sample[model.spec.columns], explain=False)["probability"].to_numpy(dtype=float)
    bad = int(np.sum(~np.isfinite(prob) | (prob < 0) | (prob > 1)))
    return dg.AssetCheckResult(
        passed=entry.get("status") == "promoted" and bad == 0 and len(prob) == len(sample),
        metadata={"current_model": version, "registry_status": str(entry.get("status")),
                  "load_seconds": round(load_s, 3), "sample_rows": len(sample), "probabilities_out_of_range": bad,
                  "probability_min": float(prob.min()) if len(prob) else 0.0,
                  "probability_max": float(prob.max()) if len(prob) else 0.0},
    )


@dg.asset_check(asset=fact_model_switch, blocking=True,
                description="One row per switch in MongoDB's pointer history; the last one names the current model.")
def fact_model_switch_matches_pointer(fact_model_switch: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    frame = fact_model_switch.sort_values("switch_number")  # read back from SQL by the SQL IO manager
    history = model_store.pointer_history(mongo.db)
    pointer = model_store.current_version(mongo.db)
    last = str(frame["model_version"].iloc[-1]) if len(frame) else None
    return dg.AssetCheckResult(
        passed=len(frame) == len(history) and last == pointer,
        metadata={"sql_rows": len(frame), "switches_in_mongo": len(history), "last_in_sql": last or "none",
                  "current_in_mongo": pointer or "none",
                  "rollbacks": int((frame["action"] == "rollback").sum()) if len(frame) else 0},
    )
