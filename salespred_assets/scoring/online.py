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

from salespred_assets.core.documents import Validated, records_frame, validate
from salespred_assets.core.features import history_fields
from salespred_assets.core.model import WinModel
from salespred_assets.core.schema import DatasetSchema
from salespred_assets.core.scoring import ID, score
from salespred_assets.mongo import client_facts
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


def recomputed_context(mongo: MongoResource, schema: DatasetSchema,
                       docs: Sequence[dict[str, Any]]) -> tuple[Validated, int]:
    """The full recomputation: ``docs`` and their clients' stored documents, validated in one pass, ``docs``
    first; returns it with how many of its first rows are ``docs``' valid ones."""
    checked = validate(records_frame([*docs, *client_history(mongo, schema, docs)], schema), schema)
    assert checked.rows is not None
    return checked, int(np.count_nonzero(checked.rows < len(docs)))


def facts_context(mongo: MongoResource, schema: DatasetSchema, frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The scoring context from the clients' facts: ``frame``'s rows (``docs`` as they are now) and the
    clients' other members, as columns. Clients without facts are recomputed from their documents and
    repaired; members that differ from ``frame``'s rows are updated (what another writer changed)."""
    assert schema.client is not None  # history_fields is empty without a client field
    fields = history_fields(schema)
    packed = client_facts.pack(frame, schema)
    clients = sorted({c for c, _, _ in packed})
    facts = client_facts.read(mongo.db, schema, clients)
    missing = [c for c in clients if c not in facts]
    if missing:
        stored = client_history(mongo, schema, [{schema.client: c} for c in missing])
        facts.update(client_facts.rebuild(mongo.db, schema, missing,
                                          validate(records_frame(stored, schema), schema).frame))
    mine = {client_facts.member_key(n) for _, n, _ in packed}
    stale = {n for c, n, v in packed if facts[c].get(client_facts.member_key(n)) != v}
    if stale:
        client_facts.set_members(mongo.db, schema, frame[frame[schema.id].astype(str).isin(stale)])
    others = client_facts.unpack([v for c in clients for k, v in facts[c].items() if k not in mine], schema)
    # Columns, not a frame: for one capture, building and concatenating frames cost more than the rest.
    return {f: pd.Series(np.concatenate([frame[f].to_numpy(dtype=others[f].dtype), others[f]]), copy=False)
            for f in fields}


def score_documents(mongo: MongoResource, docs: Sequence[dict[str, Any]], model: WinModel | None = None,
                    schema: DatasetSchema | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, quarantine) for documents; client facts come from everything MongoDB knows.

    The documents are validated; their clients' history comes from ``client_facts`` (one small document
    per client, recomputed from the client's documents when missing), ``docs`` counted as they are now.
    """
    schema = schema or mongo.schema()
    docs = list(docs)
    checked = validate(records_frame(docs, schema), schema)
    quarantine = checked.quarantine.reset_index(drop=True)
    if len(quarantine) and history_fields(schema):  # a stored document that became invalid leaves its client's facts
        bad = set(quarantine["id"].dropna().astype(str))
        client_facts.record(mongo.db, schema, [d for d in docs if str(d.get(schema.id)) in bad])
    frame = checked.frame
    if frame.empty:
        return pd.DataFrame(), quarantine
    context = facts_context(mongo, schema, frame) if history_fields(schema) else None
    model = model or model_store.load_current(mongo.db)
    return score(model, frame, schema, context=context), quarantine


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
        if cached is not None and "reasons" not in cached:
            cached = None  # cached before reasons existed: scored again (and cached with them) below
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
