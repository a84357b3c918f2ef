"""Checks on the cache: full coverage of what was scored, and one model version throughout."""

import json

import dagster as dg
import pandas as pd

from salespred_assets.defs.serving.assets import prediction_cache
from salespred_assets.redis_cache.resource import RedisResource


@dg.asset_check(asset=prediction_cache,
                additional_ins={"opportunity_predictions": dg.AssetIn("opportunity_predictions")},
                description="Every scored opportunity is cached, all by the same model version.")
def prediction_cache_coverage(opportunity_predictions: pd.DataFrame, redis: RedisResource) -> dg.AssetCheckResult:
    cache = redis.cache()
    gen = cache.current_generation()
    ids = opportunity_predictions["opportunity_id"].astype(str).tolist()
    missing, versions = 0, set()
    for raw in cache.get_many(ids, gen):
        if raw is None:
            missing += 1
        else:
            versions.add(json.loads(raw)["model_version"])
    expected_version = str(opportunity_predictions["model_version"].iloc[0]) if len(ids) else None
    return dg.AssetCheckResult(
        passed=missing == 0 and versions <= {expected_version},
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"scored": len(ids), "missing_in_cache": missing, "coverage": 1 - missing / max(len(ids), 1),
                  "generation": gen if gen is not None else "none",
                  "model_versions": ", ".join(sorted(map(str, versions)))},
    )
