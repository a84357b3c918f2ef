"""Scoring outside a full refresh: a few opportunities at a time, for the seller app and the sensor.

Both call :func:`score_documents` (which calls the one scoring function in :mod:`core.scoring`) and
:func:`cache_predictions`; the seller app's lookups go through :func:`prediction_for`, which answers
from the Redis cache and falls back to the current model when the cache has no entry or is down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
import redis as redis_lib

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.model import WinModel
from salespred_assets.core.schema import DatasetSchema
from salespred_assets.core.scoring import ID, score
from salespred_assets.mongo.resource import OPPORTUNITIES, MongoResource
from salespred_assets.redis_cache.cache import serialize
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store

log = logging.getLogger("salespred.scoring")
CLIENT_CHUNK = 100


def client_history(mongo: MongoResource, schema: DatasetSchema, docs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The other stored documents of the clients that ``docs`` name (what client facts are counted over)."""
    if not schema.client:
        return []
    clients = sorted({c for d in docs if isinstance(c := d.get(schema.client), str)})
    mine = {i for d in docs if isinstance(i := d.get(schema.id), str)}  # a malformed id may not even be hashable
    projection = dict.fromkeys(schema.fields, 1)
    known: list[dict[str, Any]] = []
    # Chunks of 100: a batch of new opportunities names hundreds of clients, and SecantusDB's $in costs
    # grow with the square of the list (mongod's do not; chunks cost it one round trip per 100).
    for start in range(0, len(clients), CLIENT_CHUNK):
        found = mongo.db[OPPORTUNITIES].find({schema.client: {"$in": clients[start:start + CLIENT_CHUNK]}}, projection)
        known.extend(d for d in found if not (isinstance(i := d.get(schema.id), str) and i in mine))
    return known


def score_documents(mongo: MongoResource, docs: Sequence[dict[str, Any]], model: WinModel | None = None,
                    schema: DatasetSchema | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, quarantine) for documents; client facts come from everything MongoDB knows.

    The documents and their clients' stored history are validated in one pass, ``docs`` first: the
    valid ones among them are the first rows of the result, and the whole of it is the scoring context.
    """
    schema = schema or mongo.schema()
    docs = list(docs)
    checked = validate(records_frame([*docs, *client_history(mongo, schema, docs)], schema), schema)
    assert checked.rows is not None and checked.quarantined_rows is not None
    quarantine = checked.quarantine
    if len(quarantine):
        quarantine = quarantine[checked.quarantined_rows < len(docs)].reset_index(drop=True)
    valid = int(np.count_nonzero(checked.rows < len(docs)))
    if not valid:
        return pd.DataFrame(), quarantine
    model = model or model_store.load_current(mongo.db)
    frame = checked.frame.iloc[:valid]
    return score(model, frame, schema, context=checked.frame if schema.client else None), quarantine


def cache_predictions(redis: RedisResource, predictions: pd.DataFrame, schema: DatasetSchema | None = None,
                      values: list[str] | None = None) -> int:
    """Write predictions into the live cache generation; returns how many keys were written.

    ``values`` may carry the predictions already serialised (by :func:`serialize`) to save doing it twice.
    """
    if predictions.empty:
        return 0
    if values is None:
        _, values = serialize(predictions, ID, seller_column=schema.seller if schema else None)
    redis.cache().upsert(predictions[ID].astype(str).tolist(), values, str(predictions["model_version"].iloc[0]))
    return len(values)


def prediction_for(mongo: MongoResource, redis: RedisResource | None, number: str,
                   sellers: Collection[str] | None = None) -> tuple[dict[str, Any] | None, str]:
    """(prediction, source) for one opportunity number: source is 'cache', 'model' or 'missing'.

    ``sellers`` are the seller numbers whose opportunities the caller may see (None: anyone's). A cached
    entry names its seller, so a cache hit the caller may see costs one Redis call and no MongoDB read;
    an entry of someone else's is 'missing', exactly like an unknown number.
    """
    schema = mongo.schema()
    if sellers is not None and not schema.seller:
        return None, "missing"  # nothing can be attributed to a seller, so nothing is visible
    cached = None
    if redis is not None:
        try:
            cached = redis.cache().get(number)
        except redis_lib.RedisError as exc:
            log.warning("Redis lookup failed, scoring with the model instead: %s", exc)
        if cached is not None and "seller" in cached:
            visible = sellers is None or cached["seller"] in sellers
            return (cached, "cache") if visible else (None, "missing")
    query: dict[str, Any] = {schema.id: number}
    if sellers is not None:
        query[str(schema.seller)] = {"$in": [str(s) for s in sellers]}
    doc = mongo.db[OPPORTUNITIES].find_one(query)
    if doc is None:
        return None, "missing"
    if cached is not None:  # an entry written before entries named their seller
        return cached, "cache"
    return predict_document(mongo, redis, doc, schema), "model"


def predict_document(mongo: MongoResource, redis: RedisResource | None, doc: dict[str, Any],
                     schema: DatasetSchema | None = None) -> dict[str, Any]:
    """Score one stored document with the current model and write the result to the cache (best effort)."""
    schema = schema or mongo.schema()
    preds, quarantine = score_documents(mongo, [doc], schema=schema)
    if preds.empty:
        reason = quarantine["reason"].iloc[0] if len(quarantine) else "invalid document"
        raise ValueError(f"opportunity {doc.get(schema.id)} cannot be scored: {reason}")
    _, values = serialize(preds, ID, seller_column=schema.seller)
    if redis is not None:
        try:
            cache_predictions(redis, preds, schema, values=values)
        except redis_lib.RedisError as exc:
            log.warning("could not write the prediction back to Redis: %s", exc)
    return json.loads(values[0])
