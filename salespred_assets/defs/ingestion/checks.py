"""Checks on what was read from MongoDB."""

import dagster as dg
import pandas as pd

from salespred_assets.defs.ingestion.assets import raw_opportunities
from salespred_assets.mongo.resource import QUARANTINE, MongoResource


@dg.asset_check(asset=raw_opportunities, description="Share of documents quarantined (warns above 0, fails above 5%).")
def raw_opportunities_quarantine(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    quarantined = mongo.db[QUARANTINE].count_documents({})
    total = quarantined + len(raw_opportunities)
    share = quarantined / total if total else 0.0
    return dg.AssetCheckResult(
        passed=quarantined == 0,
        severity=dg.AssetCheckSeverity.ERROR if share > 0.05 else dg.AssetCheckSeverity.WARN,
        metadata={"quarantined": quarantined, "valid": len(raw_opportunities), "share_quarantined": share},
    )
