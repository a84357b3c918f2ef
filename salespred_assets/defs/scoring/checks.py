"""Checks on the predictions before they reach analysts and sellers."""

import dagster as dg
import numpy as np
import pandas as pd

from salespred_assets.defs.scoring.assets import opportunity_predictions


@dg.asset_check(asset=opportunity_predictions, blocking=True,
                additional_ins={"raw_opportunities": dg.AssetIn("raw_opportunities")},
                description="Every open opportunity is scored, and every probability lies in [0, 1].")
def predictions_complete(opportunity_predictions: pd.DataFrame, raw_opportunities: pd.DataFrame) -> dg.AssetCheckResult:
    preds = opportunity_predictions
    open_scored = int((preds["outcome"] == "open").sum())
    missing = int(len(raw_opportunities) - len(preds))
    prob = preds["probability"].to_numpy(dtype=float)
    out_of_range = int(np.sum(~np.isfinite(prob) | (prob < 0) | (prob > 1)))
    versions = preds["model_version"].nunique()
    return dg.AssetCheckResult(
        passed=missing == 0 and out_of_range == 0 and versions <= 1,
        metadata={"rows_scored": len(preds), "rows_not_scored": missing, "open_scored": open_scored,
                  "probabilities_out_of_range": out_of_range, "model_versions": int(versions)},
    )
