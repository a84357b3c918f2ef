"""Everything Dagster loads: one place that assembles assets, checks, jobs, automation and resources."""

from __future__ import annotations

import dagster as dg

from salespred_assets.defs import automation
from salespred_assets.defs.common import IO_RETRY
from salespred_assets.defs.ingestion import assets as ingestion, checks as ingestion_checks
from salespred_assets.defs.modeling import assets as modeling, checks as modeling_checks
from salespred_assets.defs.monitoring import assets as monitoring, checks as monitoring_checks
from salespred_assets.defs.reporting import assets as reporting, checks as reporting_checks
from salespred_assets.defs.scoring import assets as scoring, checks as scoring_checks
from salespred_assets.defs.serving import assets as serving, checks as serving_checks
from salespred_assets.resources import build_resources

ASSET_MODULES = [ingestion, modeling, scoring, reporting, serving, monitoring]
CHECK_MODULES = [ingestion_checks, modeling, modeling_checks, scoring_checks, reporting_checks, serving_checks,
                 monitoring_checks]

full_refresh_job = dg.define_asset_job(
    "full_refresh", selection=automation.EVERYTHING,  # every asset but the new-opportunity batches
    op_retry_policy=IO_RETRY,  # checks read the databases too
    description="Read every opportunity, retrain, promote if the gate passes, rescore, and refresh SQL and Redis.",
)


# Runs (as deployed, and `salespred materialize --processes`) execute each step in a process of its own. The
# processes fork from a server that has imported the code location once, so a step starts at once instead of
# importing Dagster, pandas and scikit-learn again: about six seconds of CPU for each of some forty steps.
STEP_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["salespred_assets.definitions"]}}}, name="step_processes")


def build_definitions(environment: str | None = None, resources: dict[str, object] | None = None) -> dg.Definitions:
    """The code location; ``resources`` replaces the environment's (tests, benchmarks)."""
    return dg.Definitions(
        # The external MongoDB collections are AssetSpecs, which module loading does not pick up.
        assets=[*dg.load_assets_from_modules(ASSET_MODULES), ingestion.opportunities_collection,
                ingestion.sellers_collection],
        asset_checks=dg.load_asset_checks_from_modules(CHECK_MODULES),
        jobs=[full_refresh_job, *automation.JOBS],
        schedules=automation.SCHEDULES,
        sensors=automation.SENSORS,
        resources=resources if resources is not None else build_resources(environment),
        executor=STEP_EXECUTOR,
    )


defs = build_definitions()
