"""The drift check: warns when an input's PSI reaches the 'act' threshold (the retrain sensor reacts)."""

import dagster as dg
import pandas as pd

from salespred_assets.core import drift
from salespred_assets.defs.common import md
from salespred_assets.defs.monitoring.assets import opportunity_drift


@dg.asset_check(asset=opportunity_drift, blocking=False,
                description=f"Every monitored input's PSI below {drift.ACT} (>= {drift.WATCH} is listed to watch); "
                            f"warns otherwise, and the retrain_on_drift sensor starts a retrain.")
def opportunity_drift_psi(opportunity_drift: pd.DataFrame) -> dg.AssetCheckResult:
    table = opportunity_drift
    act = table[table["band"] == "act"]
    watch = table[table["band"] == "watch"]
    return dg.AssetCheckResult(
        passed=act.empty, severity=dg.AssetCheckSeverity.WARN,
        metadata={"features": len(table), "max_psi": float(table["psi"].max()) if len(table) else 0.0,
                  "features_to_act": len(act), "features_to_watch": len(watch),
                  "watch_threshold": drift.WATCH, "act_threshold": drift.ACT,
                  "above_threshold": md(act, max_rows=40) if len(act) else dg.MetadataValue.md("none")},
    )
