"""Scoring: every opportunity scored by the promoted model, with its reasons; new ones in batches."""

from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from salespred_assets.core.features import feature_spec
from salespred_assets.core.scoring import score
from salespred_assets.defs.common import IO_RETRY, counts_md, md
from salespred_assets.defs.ingestion.assets import opportunities_collection
from salespred_assets.defs.modeling.assets import production_model
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.cache import cache_frame
from salespred_assets.registry import model_store
from salespred_assets.scoring import batches
from salespred_assets.sql import tables
from salespred_assets.sql.io_manager import schema_metadata

GROUP = "scoring"


@dg.asset(group_name=GROUP, kinds={"scikit-learn", "pandas"}, deps=[production_model], retry_policy=IO_RETRY)
def opportunity_predictions(raw_opportunities: pd.DataFrame, opportunity_features: pd.DataFrame,
                            mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Probability, label, score 1-99, grade and top factors for every opportunity, with its inputs."""
    schema = mongo.schema()
    model = model_store.load_current(mongo.db)
    preds = score(model, raw_opportunities, schema, features=opportunity_features[feature_spec(schema).columns])
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

NEW_OPPORTUNITY_SCORES = "new_opportunity_scores"
NEW_OPPORTUNITY_HISTORY = "new_opportunity_history"
NEW_OPPORTUNITY_CACHE = "new_opportunity_cache"
HISTORY_COLUMNS = [c.name for c in tables.fact_prediction_history(sa.MetaData()).columns]


@dg.multi_asset(
    outs={
        NEW_OPPORTUNITY_SCORES: dg.AssetOut(
            io_manager_key="sql_io_manager", kinds={"mongodb", "sql"},
            metadata={"table": tables.FACT_OPPORTUNITY, "write": "upsert"},
            description="One batch of new or changed opportunities, scored by the current model: its fact_opportunity "
                        "rows upserted (one transaction). Only the batch is read and written."),
        NEW_OPPORTUNITY_HISTORY: dg.AssetOut(
            io_manager_key="sql_io_manager", kinds={"sql"},
            metadata={"table": tables.FACT_PREDICTION_HISTORY, "write": "append"},
            description="The batch's scorings appended to fact_prediction_history (recording one twice is a no-op)."),
        NEW_OPPORTUNITY_CACHE: dg.AssetOut(
            io_manager_key="redis_io_manager", kinds={"redis"},
            metadata={"id_column": "opportunity_id", "write": "upsert"},
            description="The batch's keys written into the live Redis generation (no new generation)."),
    },
    group_name=GROUP, partitions_def=opportunity_batches, deps=[opportunities_collection, production_model],
    retry_policy=IO_RETRY)
def new_opportunity_scores(context: dg.AssetExecutionContext, mongo: MongoResource):
    """One batch scored (:func:`batches.score_batch`); each of its writes goes through its IO manager, in order:
    SQL upsert, history append, live Redis generation. If the current model changed during the writes, the step
    is retried, so the batch never keeps an old version's rows."""
    schema = mongo.schema()
    result = batches.score_batch(mongo, context.partition_key, run_id=context.run.run_id)
    preds = result.predictions
    context.log.info(f"batch {result.key}: {result.scored} scored by {result.model_version}, "
                     f"{result.quarantined} quarantined, {sum(result.seconds.values()):.2f} s")
    yield dg.Output(preds, output_name=NEW_OPPORTUNITY_SCORES, metadata={
        "dagster/row_count": result.scored,
        "batch": result.key,
        "kind": "changed" if result.key.startswith(batches.CHANGES_PREFIX) else "new",
        "documents_read": result.documents,
        "quarantined": result.quarantined,
        "model_version": result.model_version,
        "scored_at": result.scored_at or "none",
        "attempts": result.attempts + context.retry_number,
        **{f"seconds_{name.removesuffix('_s')}": round(value, 3) for name, value in result.seconds.items()},
        **schema_metadata(schema),
    })
    # A batch with nothing valid scores to an empty frame (no columns): its IO managers write nothing.
    yield dg.Output(preds[HISTORY_COLUMNS] if result.scored else preds, output_name=NEW_OPPORTUNITY_HISTORY,
                    metadata={"dagster/row_count": result.scored, **schema_metadata(schema)})
    yield dg.Output(cache_frame(preds, schema.seller) if result.scored else preds, output_name=NEW_OPPORTUNITY_CACHE,
                    metadata={"dagster/row_count": result.scored})
    # Dagster has stored each output as it was yielded: a switch of model since the scoring means the rows
    # just written are an old version's, so the whole batch runs again (a promotion's rescore may be done).
    if not batches.still_current(mongo, result.model_version):
        raise dg.RetryRequested(max_retries=2)
