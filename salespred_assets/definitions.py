"""Everything Dagster loads: one place that assembles assets, checks, jobs, automation and resources."""

from __future__ import annotations

import dagster as dg

from salespred_assets.defs.ingestion import assets as ingestion, checks as ingestion_checks
from salespred_assets.defs.modeling import assets as modeling
from salespred_assets.defs.reporting import assets as reporting, checks as reporting_checks
from salespred_assets.defs.scoring import assets as scoring, checks as scoring_checks
from salespred_assets.defs.serving import assets as serving, checks as serving_checks
from salespred_assets.resources import build_resources

ASSET_MODULES = [ingestion, modeling, scoring, reporting, serving]
CHECK_MODULES = [ingestion_checks, modeling, scoring_checks, reporting_checks, serving_checks]

full_refresh_job = dg.define_asset_job(
    "full_refresh", selection=dg.AssetSelection.all(),
    description="Read every opportunity, retrain, promote if the gate passes, rescore, and refresh SQL and Redis.",
)


def build_definitions(environment: str | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(CHECK_MODULES),
        jobs=[full_refresh_job],
        resources=build_resources(environment),
    )


defs = build_definitions()
