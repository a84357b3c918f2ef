"""Scoring: every opportunity scored by the promoted model, with its reasons; new ones in batches."""

from typing import Any

import dagster as dg
import pandas as pd

from salespred_assets.core.features import feature_spec
from salespred_assets.core.scoring import score
from salespred_assets.defs.common import IO_RETRY, counts_md, md
from salespred_assets.defs.ingestion.assets import opportunities_collection
from salespred_assets.defs.modeling.assets import production_model
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.scoring import batches
from salespred_assets.sql.resource import SqlResource

GROUP = "scoring"


@dg.asset(group_name=GROUP, kinds={"scikit-learn", "pandas"}, deps=[production_model], retry_policy=IO_RETRY)
def opportunity_predictions(raw_opportunities: pd.DataFrame, opportunity_features: pd.DataFrame,
                            mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Probability, label, score 1-99, grade and top factors for every opportunity, with its inputs."""
    schema = mongo.schema()
    model = model_store.load_current(mongo.db)
    preds = score(model, raw_opportunities, schema, features=opportunity_features[feature_spec(schema).columns])
    preds.attrs["schema"] = schema.to_dict()
    open_rows = preds[preds["outcome"] == "open"]
    metadata: dict[str, Any] = {
        "dagster/row_count": len(preds),
        "model_version": model.version,
        "open_opportunities": len(open_rows),
        "grades_of_open": counts_md(open_rows["grade"], "grade") if len(open_rows) else dg.MetadataValue.md("none"),
        "preview": md(preds[["opportunity_id", "outcome", "probability", "score", "grade"]], max_rows=5),
    }
    if schema.amount and len(open_rows):
        metadata["expected_open_pipeline"] = float((open_rows[schema.amount] * open_rows["probability"]).sum())
    return dg.Output(preds, metadata=metadata)


# One partition per batch of new or changed opportunities, added by the new-opportunity sensor (or by
# `salespred batches plan` to fan a full rescore out): the key is the batch's _id range, "<lo>-<hi>", or
# "chg-<digest>" for changed documents (see salespred_assets/scoring/batches.py).
opportunity_batches = dg.DynamicPartitionsDefinition(name=batches.PARTITIONS)


@dg.asset(group_name=GROUP, kinds={"mongodb", "sql", "redis"}, partitions_def=opportunity_batches,
          deps=[opportunities_collection, production_model], retry_policy=IO_RETRY)
def new_opportunity_scores(context: dg.AssetExecutionContext, mongo: MongoResource, sql: SqlResource,
                           redis: RedisResource) -> dg.MaterializeResult:
    """One batch of new or changed opportunities, scored by the current model and written where sellers
    and analysts read: its fact_opportunity rows upserted (one transaction), its prediction history
    appended, its keys written into the live Redis generation. Only the batch is read and written."""
    result = batches.score_batch(mongo, sql.engine, redis, context.partition_key, run_id=context.run.run_id)
    context.log.info(f"batch {result.key}: {result.scored} scored by {result.model_version}, "
                     f"{result.quarantined} quarantined, {sum(result.seconds.values()):.2f} s")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": result.scored,
        "batch": result.key,
        "kind": "changed" if result.key.startswith(batches.CHANGES_PREFIX) else "new",
        "documents_read": result.documents,
        "quarantined": result.quarantined,
        "model_version": result.model_version,
        "scored_at": result.scored_at or "none",
        "sql_rows_upserted": result.sql["inserted"],
        "sql_rows_replaced": result.sql["deleted"],
        "history_rows_appended": result.history["inserted"],
        "cache_keys_written": result.cache_keys,
        "cache_generation": result.generation if result.generation is not None else "none",
        "attempts": result.attempts,
        **{f"seconds_{name.removesuffix('_s')}": round(value, 3) for name, value in result.seconds.items()},
    })
