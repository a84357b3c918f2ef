"""Checks on the predictions before they reach analysts and sellers, and on each new-opportunity batch."""

import json
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.defs.scoring.assets import (
    NEW_OPPORTUNITY_CACHE,
    NEW_OPPORTUNITY_HISTORY,
    NEW_OPPORTUNITY_SCORES,
    opportunity_predictions,
)
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.scoring import batches
from salespred_assets.sql import queries, writer
from salespred_assets.sql.resource import SqlResource


@dg.asset_check(asset=opportunity_predictions, blocking=True,
                # Of the extracted rows, only how many there are: one column read from the stored Parquet.
                additional_ins={"raw_opportunities": dg.AssetIn("raw_opportunities", metadata={"columns": ["_id"]})},
                description="Every opportunity has its row; every open one is predicted with a probability in [0, 1]; "
                            "every closed one carries its outcome instead (no probability).")
def predictions_complete(opportunity_predictions: pd.DataFrame, raw_opportunities: pd.DataFrame) -> dg.AssetCheckResult:
    preds = opportunity_predictions
    open_scored = int((preds["outcome"] == "open").sum())
    missing = int(len(raw_opportunities) - len(preds))
    is_open = (preds["outcome"] == "open").to_numpy()
    prob = preds["probability"].to_numpy(dtype=float)
    out_of_range = int(np.sum(is_open & (~np.isfinite(prob) | (prob < 0) | (prob > 1))))
    predicted = np.isfinite(prob) | (preds["prediction_basis"] != "outcome").to_numpy()
    closed_with_prediction = int(np.sum(~is_open & predicted))
    versions = preds["model_version"].nunique()
    return dg.AssetCheckResult(
        passed=missing == 0 and out_of_range == 0 and closed_with_prediction == 0 and versions <= 1,
        metadata={"rows_scored": len(preds), "rows_not_scored": missing, "open_scored": open_scored,
                  "probabilities_out_of_range": out_of_range, "closed_with_a_prediction": closed_with_prediction,
                  "model_versions": int(versions)},
    )


@dg.multi_asset_check(specs=[
    dg.AssetCheckSpec("new_opportunity_scores_landed", asset=NEW_OPPORTUNITY_SCORES, blocking=True,
                      description="Every valid document of the batch has its fact_opportunity row, by the current "
                                  "model."),
    dg.AssetCheckSpec("new_opportunity_history_landed", asset=NEW_OPPORTUNITY_HISTORY, blocking=True,
                      description="Every row the batch put in fact_opportunity has its scoring in the history."),
    dg.AssetCheckSpec("new_opportunity_cache_landed", asset=NEW_OPPORTUNITY_CACHE, blocking=True,
                      description="Every valid document of the batch has its key in the live Redis generation, by "
                                  "the current model."),
])
def new_opportunity_batch_landed(context: dg.AssetCheckExecutionContext, mongo: MongoResource, sql: SqlResource,
                                 redis: RedisResource) -> Iterator[dg.AssetCheckResult]:
    """The batch's three writes, read back: one result per output of the batch's step."""
    schema = mongo.schema()
    batch = context.op_execution_context.partition_key
    docs = batches.read_batch(mongo, batch, schema)
    numbers = validate(records_frame(docs, schema), schema).frame[schema.id].astype(str).tolist()
    version = model_store.current_version(mongo.db)
    in_sql, without_history = 0, 0
    sql_versions: set[str] = set()
    with sql.engine.connect() as conn:
        for start in range(0, len(numbers), writer.IN_CHUNK):
            chunk = numbers[start:start + writer.IN_CHUNK]
            rows = conn.execute(queries.batch_rows(schema, chunk)).all()
            in_sql += len(rows)
            without_history += sum(bool(missing) for _, missing in rows)
            sql_versions.update(str(v) for v, _ in rows)
    cache = redis.cache()
    cached = [json.loads(raw)["model_version"] for raw in cache.get_many(numbers) if raw is not None]
    cache_versions = set(cached)
    expected = {version} if numbers else set()
    common: dict[str, str | int] = {"batch": batch, "valid_documents": len(numbers), "documents": len(docs),
              "current_model": version or "none"}
    yield dg.AssetCheckResult(
        asset_key=NEW_OPPORTUNITY_SCORES, check_name="new_opportunity_scores_landed",
        passed=in_sql == len(numbers) and sql_versions <= expected,
        metadata={**common, "sql_rows": in_sql, "sql_model_versions": ", ".join(sorted(sql_versions)) or "none"})
    yield dg.AssetCheckResult(
        asset_key=NEW_OPPORTUNITY_HISTORY, check_name="new_opportunity_history_landed",
        passed=without_history == 0,
        metadata={**common, "sql_rows": in_sql, "sql_rows_without_history": without_history})
    yield dg.AssetCheckResult(
        asset_key=NEW_OPPORTUNITY_CACHE, check_name="new_opportunity_cache_landed",
        passed=len(cached) == len(numbers) and cache_versions <= expected,
        metadata={**common, "cached": len(cached), "cache_model_versions": ", ".join(sorted(cache_versions)) or "none",
                  "live_generation": cache.current_generation() or "none"})
