"""New and changed opportunities, in batches: what the new-opportunity sensor finds, and how a batch is scored.

**Finding them** (:func:`plan`, called by the sensor on every tick) uses two MongoDB watermarks, kept in
the sensor's cursor (:class:`Cursor`):

- *new documents*: the ObjectId ``_id`` watermark. Documents with ``last_id < _id`` are read through the
  ``_id`` index, in ``_id`` order, and become a **range batch** whose key is the range itself,
  ``"<lo>-<hi>"`` (``lo`` exclusive, ``hi`` inclusive, both as 24 hex digits). ObjectIds lead with their
  creation second, so a document appears in ``_id`` order about when it is written; the scan stops
  ``SETTLE_SECONDS`` short of now so that an insert still in flight (or from a client whose clock runs a
  little behind) is not stepped over.
- *changed documents* (a stage moved to Won, an amount corrected) and the rare *late insert* whose
  ``_id`` sorts below the watermark (a capture retried after an outage keeps its first ``_id``): a
  MongoDB **change stream**, resumed from the token in the cursor. Updates and replacements of documents
  at or below the watermark, and inserts the range scan did not see, become a **change batch**: key
  ``"chg-<digest>"``, its ``_id``s kept in the ``scoring_batches`` collection (a manifest).

Why a change stream rather than an ``updated_at`` field: every writer changes documents (the capture app,
CRM synchronisations, a person with mongosh), and a change stream sees all of them without any writer's
cooperation, in commit order, with a resumable position; an ``updated_at`` field would be only as
reliable as the least careful writer and its clock. Change streams need a replica set (MongoDB Atlas
always is one; a single-node replica set is enough; SecantusDB supports them). On a standalone server the
sensor keeps scoring new documents and says in every tick that changes are not followed; the nightly
retrain's full rescore then catches changes up. If the stream's history is lost (the oplog rolled over
while the sensor was stopped), the sensor asks for one full rescore and starts a new stream.

Keys are deterministic: evaluating a tick again from the same cursor gives the same keys, and the sensor
uses the key as the ``run_key``, so Dagster never launches the same batch twice.

**The history of changes** (:mod:`salespred_assets.mongo.history`): the same change events record, in
``opportunity_history``, what each update or replacement changed in the tracked fields (stage, amounts,
close date) with source ``stream``: the new values from the event's ``updateDescription``, the previous
ones from its before-image (``fullDocumentBeforeChange``, when the server keeps them: see
:meth:`MongoResource.ensure_indexes`; otherwise None). An update that sets ``_historial`` was made by the
seller app, which records its own entry under that id: the stream writes that id only if it is missing.
Entries are keyed by the event's resume token and only inserted when absent, so evaluating a tick again
records nothing twice; they are written before the cursor moves, so a tick that fails records again.

**Scoring a batch** (:func:`score_batch`, the ``new_opportunity_scores`` run's computation) reads only
that batch's documents (an ``_id`` range or ``_id`` lookups), scores them through :mod:`scoring.online`
(client facts from MongoDB) and sets invalid ones aside in the quarantine. It writes nothing to SQL or
Redis: the asset hands the scored rows to the IO managers, which upsert the batch's ``fact_opportunity``
rows (one transaction), append its ``fact_prediction_history`` rows and write its keys into the live
Redis generation. Nothing else is read or rewritten, so its cost follows the batch, not the collection.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import OperationFailure

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.mongo import history
from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE, MongoResource
from salespred_assets.registry import model_store
from salespred_assets.scoring import online

log = logging.getLogger("salespred.batches")

PARTITIONS = "opportunity_batches"      # the DynamicPartitionsDefinition's name
MANIFESTS = "scoring_batches"           # MongoDB collection: the _ids of each change batch
ZERO_ID = "0" * 24
CHANGES_PREFIX = "chg-"
SETTLE_SECONDS = 5
MAX_BATCH_ROWS = 20_000                 # new documents per range batch
MAX_CHANGES = 20_000                    # change events read per tick
LOOKUP_CHUNK = 100                      # _ids per {$in} lookup (SecantusDB's $in grows with its square)
WATCHED = ["insert", "update", "replace"]
# Server answers meaning "no change streams here" (standalone server) and "the position is gone".
_NO_CHANGE_STREAMS = {40573, 40324}
_HISTORY_LOST = {286, 280, 260, 9}


# ---- keys ---------------------------------------------------------------------------------------
def range_key(lo: str | None, hi: str) -> str:
    """The key of the batch ``lo < _id <= hi`` (``lo`` None: from the first document)."""
    return f"{lo or ZERO_ID}-{hi}"


def parse_range(key: str) -> tuple[ObjectId, ObjectId] | None:
    """(lo, hi) of a range key, None for a change batch; a malformed key is an error that says so."""
    if key.startswith(CHANGES_PREFIX):
        return None
    lo, sep, hi = key.partition("-")
    if not sep or not ObjectId.is_valid(lo) or not ObjectId.is_valid(hi) or lo >= hi:
        raise SalespredError(f"batch key {key!r} is neither '<lo>-<hi>' (two ObjectIds, lo < hi) nor "
                             f"'{CHANGES_PREFIX}<digest>'; batch keys come from the new-opportunity sensor "
                             f"or from `salespred batches plan`")
    return ObjectId(lo), ObjectId(hi)


def changes_key(ids: Sequence[Any], after: Any) -> str:
    """A change batch's key: the same events read from the same position give the same key."""
    digest = hashlib.sha1(json.dumps([str(after), sorted(map(str, ids))]).encode()).hexdigest()[:20]
    return CHANGES_PREFIX + digest


# ---- the cursor ---------------------------------------------------------------------------------
@dataclass
class Cursor:
    """The sensor's position: the ``_id`` watermark and the change stream's resume token."""

    last_id: str | None = None
    token: dict[str, Any] | None = None
    changes: str = "unknown"            # "followed" | "unsupported" | "unknown"

    def dumps(self) -> str:
        return json.dumps({"v": 1, "last_id": self.last_id, "token": self.token, "changes": self.changes},
                          sort_keys=True)

    @classmethod
    def loads(cls, raw: str | None) -> Cursor | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(last_id=data.get("last_id"), token=data.get("token"), changes=data.get("changes", "unknown"))
        except (ValueError, AttributeError) as exc:
            raise SalespredError(f"the new-opportunity sensor's cursor is not valid JSON ({exc}); reset it in the "
                                 f"Dagster UI (Sensors > new_opportunities > Cursor) to start again") from exc


@dataclass
class Batch:
    key: str
    kind: str                           # "new" | "changed"
    rows: int
    ids: list[Any] = field(default_factory=list, repr=False)


@dataclass
class Plan:
    batches: list[Batch]
    cursor: Cursor
    notes: list[str] = field(default_factory=list)
    resync: str | None = None           # why a full rescore is needed (change history lost)
    history: int = 0                    # history entries the change events made (see the module doc)


# ---- planning (the sensor) ----------------------------------------------------------------------
def settle_bound(now: dt.datetime | None = None, settle_s: float | None = None) -> ObjectId:
    """ObjectIds below this were created more than ``settle_s`` (default SETTLE_SECONDS) seconds ago."""
    now = now or dt.datetime.now(dt.UTC)
    return ObjectId.from_datetime(now - dt.timedelta(seconds=SETTLE_SECONDS if settle_s is None else settle_s))


def new_ids(db: Database, last_id: str | None, bound: ObjectId, limit: int = MAX_BATCH_ROWS) -> list[ObjectId]:
    """``_id``s above the watermark and below the settle bound, in order (index only: no documents read)."""
    query: dict[str, Any] = {"$lt": bound}
    if last_id:
        query["$gt"] = ObjectId(last_id)
    cursor = db[OPPORTUNITIES].find({"_id": query}, {"_id": 1}).sort("_id", 1).limit(limit)
    return [d["_id"] for d in cursor if isinstance(d["_id"], ObjectId)]


def _watch(db: Database, token: dict | None, schema: DatasetSchema | None = None):
    # Events keep only what the batches and the history need: a tracked field's old and new value, the
    # opportunity number (from the before-image, or looked up when there is none), and the commit time.
    schema = schema or DEFAULT_SCHEMA
    pipeline: list[dict[str, Any]] = [
        {"$match": {"operationType": {"$in": WATCHED}}},
        {"$project": history.stream_projection(schema.id, history.tracked_fields(schema))}]
    return db[OPPORTUNITIES].watch(pipeline, resume_after=token, max_await_time_ms=50, batch_size=5_000,
                                   full_document="updateLookup", full_document_before_change="whenAvailable")


def start_token(db: Database) -> tuple[dict | None, str]:
    """A resume token for "now" (no events read), and whether change streams are available."""
    try:
        with _watch(db, None) as stream:
            stream.try_next()
            return stream.resume_token, "followed"
    except OperationFailure as exc:
        if exc.code in _NO_CHANGE_STREAMS or "replica set" in str(exc).lower():
            return None, "unsupported"
        raise


def read_changes(db: Database, token: dict | None, limit: int = MAX_CHANGES,
                 schema: DatasetSchema | None = None) -> tuple[list[dict[str, Any]], dict | None, str | None]:
    """(change events, projected as :func:`_watch` says; the token after the last one read; a problem or None)."""
    events: list[dict[str, Any]] = []
    try:
        with _watch(db, token, schema) as stream:
            while len(events) < limit:
                event = stream.try_next()
                if event is None:
                    break
                events.append(event)
            return events, stream.resume_token, None
    except OperationFailure as exc:
        if exc.code in _NO_CHANGE_STREAMS or "replica set" in str(exc).lower():
            return [], None, "unsupported"
        if exc.code in _HISTORY_LOST or "resume" in str(exc).lower():
            return [], None, f"history lost: {str(exc).splitlines()[0][:200]}"
        raise


def plan(mongo: MongoResource, cursor: Cursor, *, now: dt.datetime | None = None,
         max_rows: int = MAX_BATCH_ROWS, max_changes: int = MAX_CHANGES) -> Plan:
    """The batches since ``cursor``, and the cursor after them (nothing is scored here).

    Order matters: the ``_id`` range is scanned first, then the change stream is read; an insert event
    whose ``_id`` is at or below the new watermark and that the scan did not return is a late insert,
    and goes into the change batch.
    """
    db = mongo.db
    schema = mongo.schema()
    notes: list[str] = []
    recorded = 0
    token, changes = cursor.token, cursor.changes
    if token is None:
        # The stream must be positioned before the scan, or an insert between the two could be missed.
        token, changes = start_token(db)
    ids = new_ids(db, cursor.last_id, settle_bound(now), max_rows)
    batches: list[Batch] = []
    hi = cursor.last_id
    if ids:
        hi = str(ids[-1])
        batches.append(Batch(range_key(cursor.last_id, hi), "new", len(ids)))
    resync = None
    changed: list[Any] = []
    if changes != "unsupported":
        before = token
        events, after, problem = read_changes(db, token, max_changes, schema)
        if problem == "unsupported":
            changes, token = "unsupported", None  # scan-secrets: allow (a stream state, not a secret)
        elif problem:
            resync = f"the change stream could not resume ({problem}); a full rescore catches up"
            token, changes = start_token(db)
        else:
            changes, token = "followed", after or token  # scan-secrets: allow (a stream state)
            # Before the cursor moves past these events: a failure here fails the tick, which then reads them again.
            recorded = history.record_stream(db, events, schema.id, history.tracked_fields(schema))
            changed = _changed_ids(((e["operationType"], e["documentKey"]["_id"]) for e in events), set(ids), hi)
            if changed:
                key = changes_key(changed, before)
                _write_manifest(db, key, changed)
                batches.append(Batch(key, "changed", len(changed), changed))
    if changes == "unsupported":
        notes.append("MongoDB offers no change streams here (a standalone server): new documents are scored, "
                     "changed ones wait for the nightly rescore; run MongoDB as a replica set to follow changes")
    return Plan(batches, Cursor(last_id=hi, token=token, changes=changes), notes, resync, recorded)


def _changed_ids(events: Iterable[tuple[str, Any]], scanned: set[ObjectId], hi: str | None) -> list[Any]:
    """Documents to rescore from change events: changes at or below the watermark, and late inserts.

    Anything above the watermark is left to a later range batch, which reads its latest state anyway.
    """
    watermark = ObjectId(hi) if hi else None
    out: dict[str, Any] = {}
    for op, _id in events:
        if isinstance(_id, ObjectId):
            if watermark is None or _id > watermark:
                continue
            if op == "insert" and _id in scanned:
                continue
        out[str(_id)] = _id
    return list(out.values())


def _write_manifest(db: Database, key: str, ids: list[Any]) -> None:
    db[MANIFESTS].replace_one({"_id": key}, {"_id": key, "ids": ids, "rows": len(ids),
                                             "created_at": dt.datetime.now(dt.UTC)}, upsert=True)


def drop_manifests(db: Database, keys: Sequence[str]) -> int:
    """Forget the manifests of change batches that are no longer partitions."""
    changed = [k for k in keys if k.startswith(CHANGES_PREFIX)]
    return sum(db[MANIFESTS].delete_many({"_id": {"$in": list(chunk)}}).deleted_count
               for chunk in _chunks(changed, LOOKUP_CHUNK))


# ---- reading and scoring a batch (the run) ----------------------------------------------------
def batch_ids(db: Database, key: str) -> list[Any]:
    """The ``_id``s of a change batch, from its manifest."""
    doc = db[MANIFESTS].find_one({"_id": key})
    if doc is None:
        raise SalespredError(f"change batch {key} has no manifest in MongoDB collection '{MANIFESTS}'; it is "
                             f"written by the sensor that created the batch (was the collection dropped?)")
    return list(doc["ids"])


def read_batch(mongo: MongoResource, key: str, schema: DatasetSchema) -> list[dict[str, Any]]:
    """The documents of one batch: an ``_id`` range through the index, or ``_id`` lookups."""
    coll = mongo.db[OPPORTUNITIES]
    projection = dict.fromkeys(schema.fields, 1)
    bounds = parse_range(key)
    if bounds is not None:
        lo, hi = bounds
        return list(coll.find({"_id": {"$gt": lo, "$lte": hi}}, projection))
    docs: list[dict[str, Any]] = []
    for chunk in _chunks(batch_ids(mongo.db, key), LOOKUP_CHUNK):
        docs.extend(coll.find({"_id": {"$in": list(chunk)}}, projection))
    return docs


@dataclass
class ScoredBatch:
    """One batch scored by one model version; its rows are written by the asset's IO managers."""

    key: str
    model_version: str
    documents: int
    quarantined: int
    predictions: pd.DataFrame = field(repr=False)
    seconds: dict[str, float]
    attempts: int = 1

    @property
    def scored(self) -> int:
        return len(self.predictions)

    @property
    def scored_at(self) -> str | None:
        return pd.Timestamp(self.predictions["scored_at"].iloc[0]).isoformat() if self.scored else None


def score_batch(mongo: MongoResource, key: str, run_id: str = "", max_attempts: int = 3) -> ScoredBatch:
    """Score one batch with the current model (invalid documents go to the quarantine); SQL and Redis untouched.

    If the current model changes while the batch is scored (a promotion or rollback in between), the
    batch is scored again with the new one; :func:`still_current` tells the caller, after its writes,
    whether it changed again meanwhile.
    """
    schema = mongo.schema()
    for attempt in range(1, max_attempts + 1):
        version = model_store.current_version(mongo.db)
        if version is None:
            raise model_store.NoModel("no model has been promoted yet: run the `retrain` job first")
        result = _score_once(mongo, key, schema, version, run_id)
        result.attempts = attempt
        if still_current(mongo, version):
            return result
        log.info("the current model changed while batch %s was scored; scoring it again", key)
    raise SalespredError(f"batch {key}: the current model kept changing during {max_attempts} attempts; "
                         f"run the batch again once promotions have settled")


def still_current(mongo: MongoResource, version: str) -> bool:
    """Whether ``version`` is still the current model (rows by any other would be left behind)."""
    return model_store.current_version(mongo.db) == version


def _score_once(mongo: MongoResource, key: str, schema: DatasetSchema, version: str, run_id: str) -> ScoredBatch:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    docs = read_batch(mongo, key, schema)
    seconds["read_s"] = time.perf_counter() - started

    started = time.perf_counter()
    model = model_store.load(mongo.db, version)
    preds, quarantine = online.score_documents(mongo, docs, model=model, schema=schema)
    seconds["score_s"] = time.perf_counter() - started

    started = time.perf_counter()
    bad = set(quarantine["_id"].dropna().astype(str)) if len(quarantine) else set()
    if len(quarantine):
        mongo.write_quarantine(quarantine, run_id, replace_all=False)
    fixed = [d["_id"] for d in docs if str(d["_id"]) not in bad]
    for chunk in _chunks(fixed, LOOKUP_CHUNK):  # documents set aside before and valid now
        mongo.db[QUARANTINE].delete_many({"_id": {"$in": list(chunk)}})
    seconds["quarantine_s"] = time.perf_counter() - started
    return ScoredBatch(key=key, model_version=version, documents=len(docs), quarantined=len(quarantine),
                       predictions=preds, seconds=seconds)


# ---- full rescore fan-out ---------------------------------------------------------------------
def tile(mongo: MongoResource, rows: int) -> list[str]:
    """Range keys that cover every document, ``rows`` per batch: a full rescore fanned out over runs."""
    if rows <= 0:
        raise SalespredError("--rows must be a positive number of documents per batch")
    keys: list[str] = []
    lo: str | None = None
    coll = mongo.db[OPPORTUNITIES]
    while True:
        query = {"_id": {"$gt": ObjectId(lo)}} if lo else {}
        ids = [d["_id"] for d in coll.find(query, {"_id": 1}).sort("_id", 1).limit(rows)]
        ids = [i for i in ids if isinstance(i, ObjectId)]
        if not ids:
            return keys
        hi = str(ids[-1])
        keys.append(range_key(lo, hi))
        lo = hi


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


