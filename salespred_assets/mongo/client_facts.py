"""Per-client facts for scoring: each client's opportunities reduced to what its features read.

Scoring an opportunity needs its client's history as of the day scored (``core.features.client_history``:
the client's rows created on earlier days, outcomes decided before the day). Reading the client's whole
documents for that cost a large client's capture ten times a small one's. Collection ``client_facts``
keeps, per client, one document::

    {"_id": "CL-00042", "fields": ["cliente", "fecha_creacion_oportunidad", ...],
     "m": {"OP-00017": "19876\\x1fBU-04\\x1f96000.0\\x1f19990\\x1fWon", ...}}

``m`` holds, for each of the client's valid opportunities, the values of :func:`features.history_fields`
(dates as days since 1970) packed in one string (a string decodes several times faster than a list).
Features are then computed by the same function, over these rows instead of the documents, so they are
exactly what a full recomputation gives. Each member is set by opportunity number (``$set m.<number>``),
so concurrent captures for one client never overwrite each other and writing the same value twice is a
no-op.

Kept up to date by every write path: the seller app's capture and change (:func:`record`, right after
its write), bulk loads (``salespred seed``: :func:`rebuild_all` once the documents are in), and every
scoring outside a full refresh (``scoring.online.score_documents`` sets the members of the documents it
scores, which brings in what other writers changed, as the new-opportunity sensor batches it). A client
without a document, or whose document was built for other fields (a schema loaded since), is recomputed
from its documents and repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import bson
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pymongo
from pymongo.database import Database
from pymongo.errors import PyMongoError

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import history_fields
from salespred_assets.core.schema import DatasetSchema
from salespred_assets.mongo.resource import OPPORTUNITIES, SETTINGS

log = logging.getLogger("salespred.client_facts")

CLIENT_FACTS = "client_facts"
SEP = "\x1f"  # ASCII unit separator: never in a code, an amount or a day number
CLIENT_CHUNK = 100  # clients per {$in} (SecantusDB's $in grows with its square)
# A settings document, present when the facts cover every stored opportunity (rebuild_all built them): a
# write may then create a client's facts. Otherwise only existing ones are updated, and a client without
# facts is built whole from its documents at its next scoring. (In settings, not among the clients: a
# non-string _id is no point lookup on SecantusDB, and cost a scan of every client's facts.)
COMPLETE = "client_facts_complete"


def member_key(number: str) -> str:
    """A field name for an opportunity number (MongoDB paths cannot hold '.' nor start with '$')."""
    if "." in number or number.startswith(("$", "~")) or "\x00" in number:
        return "~" + number.encode().hex()
    return number


def pack(frame: pd.DataFrame, schema: DatasetSchema) -> list[tuple[str, str, str]]:
    """(client, opportunity number, packed values) for each row of a validated frame that names its client (a
    row without one has no history to keep)."""
    fields = history_fields(schema)
    if not fields or frame.empty:
        return []
    client = frame[str(schema.client)]
    frame = frame[client.notna() & (client.astype(str) != "")]
    if frame.empty:
        return []
    columns = []
    for f in fields:
        values = frame[f].to_numpy()
        if f in schema.dates:
            days = values.astype("datetime64[D]")
            columns.append(["" if np.isnat(d) else str(int(d.astype("int64"))) for d in days])
        elif f in schema.number_fields:
            columns.append([repr(float(v)) for v in values])
        else:  # a missing category packs as "" (a category is never empty text: empty means missing)
            columns.append(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values])
    packed = [SEP.join(parts) for parts in zip(*columns, strict=True)]
    return list(zip(frame[str(schema.client)].astype(str), frame[schema.id].astype(str), packed, strict=True))


def unpack(members: Iterable[str], schema: DatasetSchema) -> dict[str, np.ndarray]:
    """The context columns of packed members, typed as validated documents are (for the feature code).

    Split by Arrow, in C: splitting in Python cost a capture for a client with 8,000 opportunities more
    than all the rest of its scoring.
    """
    fields = history_fields(schema)
    packed = pa.array(members if isinstance(members, list) else list(members), type=pa.string())
    parts = pc.split_pattern(packed, SEP)
    if len(packed) and pc.min(pc.list_value_length(parts)).as_py() != pc.max(pc.list_value_length(parts)).as_py():
        raise ValueError("client facts: members with different numbers of fields")
    flat = pc.list_flatten(parts)
    if len(flat) != len(packed) * len(fields):
        raise ValueError(f"client facts: members hold {len(flat)} values for {len(packed)} rows of {len(fields)} "
                         "fields")
    data: dict[str, Any] = {}
    for i, f in enumerate(fields):
        values = pc.take(flat, pa.array(np.arange(i, len(flat), len(fields), dtype=np.int64)))
        if f in schema.dates:
            days = pc.cast(pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values), pa.int64())
            data[f] = (pc.fill_null(days, np.iinfo(np.int64).min).to_numpy()
                       .astype("datetime64[D]").astype("datetime64[ns]"))
        elif f in schema.number_fields:
            data[f] = pc.cast(values, pa.float64()).to_numpy()
        else:  # "" is a missing category
            column = values.to_numpy(zero_copy_only=False).astype(object)
            column[column == ""] = np.nan
            data[f] = column
    return data


def _validated(docs: Sequence[Mapping[str, Any]], schema: DatasetSchema) -> tuple[pd.DataFrame, list[str]]:
    """(valid rows, numbers of the invalid documents) of ``docs``."""
    checked = validate(records_frame(list(docs), schema), schema, dedupe=False)
    invalid = [str(q) for q in checked.quarantine["id"] if q is not None] if len(checked.quarantine) else []
    return checked.frame, invalid


def set_members(db: Database, schema: DatasetSchema, frame: pd.DataFrame,
                invalid: Sequence[tuple[str, str]] = ()) -> int:
    """Set the members of a validated frame's rows, unset those of ``invalid`` (client, number) pairs;
    one update per client. Returns how many clients were written."""
    by_client: dict[str, dict[str, Any]] = {}
    for client, number, packed in pack(frame, schema):
        by_client.setdefault(client, {}).setdefault("$set", {})[f"m.{member_key(number)}"] = packed
    for client, number in invalid:
        by_client.setdefault(client, {}).setdefault("$unset", {})[f"m.{member_key(number)}"] = ""
    fields = list(history_fields(schema))
    complete = db[SETTINGS].find_one({"_id": COMPLETE}) is not None
    ops = []
    for client, update in by_client.items():
        if complete:
            update = {**update, "$set": {**update.get("$set", {}), "fields": fields}}
            ops.append(pymongo.UpdateOne({"_id": client}, update, upsert=True))
        else:  # only clients whose facts exist: one without is built whole at its next scoring
            ops.append(pymongo.UpdateOne({"_id": client, "fields": fields}, update))
    if ops:
        db[CLIENT_FACTS].bulk_write(ops, ordered=False)
    return len(ops)


def record(db: Database, schema: DatasetSchema, docs: Sequence[Mapping[str, Any]]) -> None:
    """After a write of ``docs`` (the app's capture or change, a bulk load): their clients' facts follow.

    Best effort: if it fails, the clients' documents are deleted, so that their next scoring rebuilds them
    from the opportunities rather than read facts that miss this write.
    """
    if not schema.client or not docs:
        return
    clients = sorted({str(d[schema.client]) for d in docs if isinstance(d.get(schema.client), str)})
    try:
        frame, invalid = _validated(docs, schema)
        wrong = [(str(d[schema.client]), str(d[schema.id])) for d in docs
                 if str(d.get(schema.id)) in set(invalid) and isinstance(d.get(schema.client), str)]
        set_members(db, schema, frame, wrong)
    except Exception as exc:  # noqa: BLE001 - the documents are stored; their write must not fail for this
        log.warning("could not update the client facts of %s (%s); they are rebuilt at their next scoring",
                    ", ".join(clients[:5]), str(exc).splitlines()[0][:200])
        try:  # the flag first: a write may no longer create facts for a client that has documents
            db[SETTINGS].delete_one({"_id": COMPLETE})
            db[CLIENT_FACTS].delete_many({"_id": {"$in": clients}})
        except PyMongoError:
            log.warning("could not drop the stale client facts either: %s", ", ".join(clients[:5]))


def read(db: Database, schema: DatasetSchema, clients: Sequence[str]) -> dict[str, dict[str, str]]:
    """Members by client, for the clients whose facts exist and follow the schema's fields."""
    fields = list(history_fields(schema))
    out: dict[str, dict[str, str]] = {}
    for start in range(0, len(clients), CLIENT_CHUNK):
        for doc in db[CLIENT_FACTS].find({"_id": {"$in": list(clients[start:start + CLIENT_CHUNK])}}):
            if doc.get("fields") == fields:
                out[str(doc["_id"])] = dict(doc.get("m") or {})
    return out


def rebuild(db: Database, schema: DatasetSchema, clients: Sequence[str],
            frame: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Replace the facts of ``clients`` with those of ``frame`` (their valid stored opportunities)."""
    fields = list(history_fields(schema))
    members: dict[str, dict[str, str]] = {c: {} for c in clients}
    for client, number, packed in pack(frame, schema):
        if client in members:
            members[client][member_key(number)] = packed
    # Facts built for other fields go; the rest is merged member by member, so that a capture recorded
    # meanwhile (its own $set) is never overwritten by this older read.
    db[CLIENT_FACTS].delete_many({"_id": {"$in": list(clients)}, "fields": {"$ne": fields}})
    ops = [pymongo.UpdateOne({"_id": c}, {"$set": {"fields": fields, **{f"m.{k}": v for k, v in m.items()}}},
                             upsert=True) for c, m in members.items()]
    for start in range(0, len(ops), 1_000):
        db[CLIENT_FACTS].bulk_write(ops[start:start + 1_000], ordered=False)
    return members


def rebuild_all(db: Database, schema: DatasetSchema, batch_size: int = 20_000) -> int:
    """Every client's facts from the stored opportunities, in one pass (after a bulk load: per-document
    updates would cost a round trip per client per batch). Returns how many clients have facts."""
    fields = history_fields(schema)
    if not fields:
        return 0
    members: dict[str, dict[str, str]] = {}
    # Whole documents: a document counts only if valid as a whole, as in the recomputation (and SecantusDB
    # serves whole documents faster than projected ones).
    for chunk in db[OPPORTUNITIES].find_raw_batches({}, batch_size=batch_size):
        frame = validate(records_frame(bson.decode_all(chunk), schema), schema, dedupe=False).frame
        for client, number, packed in pack(frame, schema):
            members.setdefault(client, {})[member_key(number)] = packed
    # The flag first: while facts are rebuilt, a capture updates only facts that exist and creates none
    # (one created now would hold only its own opportunity); replaces, so one created anyway is overwritten.
    db[SETTINGS].delete_one({"_id": COMPLETE})
    db[CLIENT_FACTS].delete_many({})
    docs = [{"_id": c, "fields": list(fields), "m": m} for c, m in members.items()]
    for start in range(0, len(docs), 5_000):
        db[CLIENT_FACTS].bulk_write([pymongo.ReplaceOne({"_id": d["_id"]}, d, upsert=True)
                                     for d in docs[start:start + 5_000]], ordered=False)
    db[SETTINGS].replace_one({"_id": COMPLETE}, {"_id": COMPLETE}, upsert=True)
    return len(docs)
