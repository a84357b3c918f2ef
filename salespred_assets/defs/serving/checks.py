"""Checks on the cache: full coverage of what was scored, and one model version throughout."""

import json

import dagster as dg
import numpy as np
import pandas as pd

from salespred_assets.defs.serving.assets import prediction_cache
from salespred_assets.redis_cache.resource import RedisResource

# Entries read back and parsed: a random sample, seeded by the generation (all of them cost a fifth of a full
# refresh at a million). The entry count is exact for every row.
SAMPLE = 10_000


@dg.asset_check(asset=prediction_cache,
                # Two columns of the scored frame: read alone from the stored Parquet.
                additional_ins={"opportunity_predictions": dg.AssetIn(
                    "opportunity_predictions", metadata={"columns": ["opportunity_id", "model_version"]})},
                description=f"Every scored opportunity is cached, all by the same model version: the generation "
                            f"held exactly as many entries as were scored when published (and no fewer since), "
                            f"and a random "
                            f"sample of {SAMPLE:,} scored opportunities is read back with its model version.")
def prediction_cache_coverage(opportunity_predictions: pd.DataFrame, redis: RedisResource) -> dg.AssetCheckResult:
    cache = redis.cache()
    stats = cache.stats()
    gen = stats["generation"]
    ids = opportunity_predictions["opportunity_id"].astype(str).to_numpy()
    rng = np.random.default_rng(gen or 0)
    sample = ids if len(ids) <= SAMPLE else rng.choice(ids, SAMPLE, replace=False)
    missing, versions = 0, set()
    for raw in cache.get_many(sample.tolist(), gen):
        if raw is None:
            missing += 1
        else:
            versions.add(json.loads(raw).get("model_version"))
    expected_version = str(opportunity_predictions["model_version"].iloc[0]) if len(ids) else None
    published = stats.get("model_version")
    at_publish = stats.get("entries_at_publish")
    # Exact at the publish (counted back before the swap); captures may add entries since, never remove them.
    passed = (missing == 0 and stats["keys"] >= len(ids) and versions <= {expected_version}
              and published in (None, expected_version)
              and (at_publish is None or int(at_publish) == len(ids)))
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"scored": len(ids), "live_entries": int(stats["keys"]),
                  "entries_at_publish": int(at_publish) if at_publish is not None else "not recorded",
                  "sampled": len(sample), "missing_in_sample": missing,
                  "coverage_of_sample": 1 - missing / max(len(sample), 1),
                  "generation": gen if gen is not None else "none",
                  "generation_model_version": str(published) if published is not None else "none",
                  "model_versions": ", ".join(sorted(map(str, versions)))},
    )
