"""MongoDB: the operational store the capture app writes and the pipeline reads.

Collections (in database ``salespred``):

- ``opportunities``             one document per opportunity, in the capture app's shape
- ``opportunities_quarantine``  documents the pipeline set aside, with the reason
- ``opportunity_history``       every change to an opportunity's stage, amounts and close date, with its
                                time and source (:mod:`salespred_assets.mongo.history`)
- ``sellers``                   sellers, passwords only as argon2 hashes
- ``counters``                  atomic counters (the next opportunity number)
- ``models.files/.chunks``      GridFS: model artifacts and cards, loadable by any process
- ``model_registry``            one document per model version; which one is current
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
import pymongo
from bson import ObjectId
from pydantic import Field
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from salespred_assets.core.documents import SOURCE_ID, Validated, combine, validate
from salespred_assets.core.memo import Expiring
from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.embedded import services
from salespred_assets.errors import ServiceUnavailable
from salespred_assets.mongo.extract import batch_frame

OPPORTUNITIES = "opportunities"
QUARANTINE = "opportunities_quarantine"
OPPORTUNITY_HISTORY = "opportunity_history"
SELLERS = "sellers"
COUNTERS = "counters"
SETTINGS = "settings"
OPPORTUNITY_COUNTER = "numero_opportunidad"
ID_RANGE_INDEX = "id_range"
HISTORY_INDEX = "opportunity_at"
BATCH = 5_000
log = logging.getLogger("salespred.mongo")
_schemas: Expiring[DatasetSchema] = Expiring(ttl_s=5.0)


@functools.lru_cache(maxsize=8)
def _client(uri: str, timeout_ms: int) -> pymongo.MongoClient:
    # One pooled client per URI and process, as pymongo recommends.
    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                               appname="salespred", tz_aware=True)


@functools.lru_cache(maxsize=8)
def _identity(uri: str, timeout_ms: int, database: str) -> tuple[str, str]:
    return uri, _client(uri, timeout_ms).get_default_database(default=database).name


class MongoResource(dg.ConfigurableResource):
    """Connection to MongoDB (Atlas or SecantusDB); an empty URI means the embedded server."""

    uri: str = Field(default="", description="MongoDB URI; empty starts/uses the embedded SecantusDB")
    database: str = Field(default="salespred", description="Database name")
    timeout_ms: int = Field(default=5000, description="Server selection and connect timeout")

    def resolved_uri(self) -> str:
        return self.uri or services.resolve("mongo")

    @property
    def client(self) -> pymongo.MongoClient:
        return _client(self.resolved_uri(), self.timeout_ms)

    @property
    def db(self) -> Database:
        # A database named in the URI (mongodb://host/name) wins over the `database` field.
        return self.client.get_default_database(default=self.database)

    def identity(self) -> tuple[str, str]:
        """(URI, database name): names this database in per-process caches, without building objects."""
        return _identity(self.resolved_uri(), self.timeout_ms, self.database)

    def ping(self) -> None:
        """Raise :class:`ServiceUnavailable` with the (masked) URI unless the server answers."""
        uri = self.resolved_uri()
        try:
            _client(uri, self.timeout_ms).admin.command("ping")
        except PyMongoError as exc:
            raise ServiceUnavailable("MongoDB", uri, exc) from exc

    def ensure_indexes(self) -> None:
        db = self.db
        db[OPPORTUNITIES].create_index(DEFAULT_SCHEMA.id, name="numero_opportunidad_1")
        client, seller = DEFAULT_SCHEMA.client, DEFAULT_SCHEMA.seller
        assert client and seller  # the default schema names both
        db[OPPORTUNITIES].create_index(client, name="cliente_1")
        db[OPPORTUNITIES].create_index(seller, name="numero_vendedor_1")
        db[OPPORTUNITY_HISTORY].create_index([("opportunity", 1), ("at", 1)], name=HISTORY_INDEX)
        self._keep_before_images()
        db[SELLERS].create_index("username", unique=True, name="username_unique")
        db[SELLERS].create_index("numero_vendedor", unique=True, name="numero_vendedor_unique")
        if "secantusVersion" in self.client.admin.command("buildInfo"):
            # SecantusDB's built-in _id index answers point lookups only; an _id range (the new-opportunity
            # batches) would scan the collection. A secondary index led by _id serves ranges. mongod's own
            # _id index already does, so it is created on SecantusDB only.
            db[OPPORTUNITIES].create_index([("_id", 1), (DEFAULT_SCHEMA.stage, 1)], name=ID_RANGE_INDEX)

    def _keep_before_images(self) -> None:
        """Ask the server to keep each change's before-image, so the change stream can say what a value was.

        Best effort: it needs MongoDB 6.0+ (or SecantusDB) and the collMod privilege; without it the
        history still records what changed and to what, with "from" unknown (None). Costs one stored
        document per update or delete of an opportunity (a mass delete takes about twice as long).
        """
        try:
            self.db.command("collMod", OPPORTUNITIES, changeStreamPreAndPostImages={"enabled": True})
        except OperationFailure as exc:
            log.warning("MongoDB keeps no before-images of opportunities (%s); changes made outside the app are "
                        "recorded in the history without their previous values", str(exc).splitlines()[0][:200])

    # ---- opportunities -------------------------------------------------------------------
    def iter_raw(self, query: dict | None = None, batch_size: int = BATCH,
                 fields: list[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Documents in natural order, in batches (decoded from raw BSON batches)."""
        import bson

        projection = dict.fromkeys(fields, 1) if fields else None
        cursor = self.db[OPPORTUNITIES].find_raw_batches(query or {}, projection, batch_size=batch_size)
        for chunk in cursor:
            yield bson.decode_all(chunk)

    def read_opportunities(self, schema: DatasetSchema = DEFAULT_SCHEMA, query: dict | None = None,
                           batch_size: int = 20_000) -> Validated:
        """Read and validate; the frame keeps ``_id`` so every row can be traced to its document.

        A reader thread pulls raw BSON batches while this thread decodes and validates the previous
        one, so the server's work and ours overlap (the socket wait releases the GIL). No projection:
        SecantusDB serves whole documents faster than projected ones.
        """
        batches: queue.Queue = queue.Queue(maxsize=4)
        failure: list[BaseException] = []

        def reader() -> None:
            try:
                for chunk in self.db[OPPORTUNITIES].find_raw_batches(query or {}, batch_size=batch_size):
                    batches.put(chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
                failure.append(exc)
            finally:
                batches.put(None)

        thread = threading.Thread(target=reader, name="mongo-extract", daemon=True)
        thread.start()
        parts = []
        while (chunk := batches.get()) is not None:
            parts.append(validate(batch_frame(chunk, schema), schema, dedupe=False))
        thread.join()
        if failure:
            raise failure[0]
        return combine(parts, schema)

    def count_opportunities(self) -> int:
        return self.db[OPPORTUNITIES].estimated_document_count()

    def insert_opportunities(self, docs: list[dict[str, Any]]) -> int:
        if not docs:
            return 0
        result = self.db[OPPORTUNITIES].insert_many(docs, ordered=False)
        return len(result.inserted_ids)

    def write_quarantine(self, quarantine: pd.DataFrame, run_id: str, *, replace_all: bool) -> int:
        """Record each set-aside document with its reason; ``replace_all`` drops entries now fixed."""
        coll = self.db[QUARANTINE]
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        ops = []
        for row in quarantine.to_dict("records"):
            key = _object_id(row[SOURCE_ID]) if row[SOURCE_ID] else ObjectId()
            ops.append(pymongo.ReplaceOne({"_id": key}, {
                "_id": key, "id": row["id"], "reason": row["reason"],
                "document": _bson_safe(row["document"]), "run_id": run_id, "quarantined_at": now,
            }, upsert=True))
        for start in range(0, len(ops), BATCH):
            coll.bulk_write(ops[start:start + BATCH], ordered=False)
        if replace_all:
            keep = [op._filter["_id"] for op in ops]
            coll.delete_many({"_id": {"$nin": keep}})
        return len(ops)

    # ---- the active data contract ----------------------------------------------------------
    # Shadows pydantic's deprecated BaseModel.schema() classmethod, on purpose: `mongo.schema()` is this
    # project's name for the data contract (a rename would touch every caller).
    def schema(self) -> DatasetSchema:  # type: ignore[override]
        """The schema of the loaded data (set by `salespred seed --schema`); default: the seed's shape.

        Read at most every few seconds per process: the seller app asks on every request.
        """
        def read() -> DatasetSchema:
            doc = self.db[SETTINGS].find_one({"_id": "schema"})
            return DatasetSchema.from_dict(doc["schema"], source="MongoDB settings.schema") if doc else DEFAULT_SCHEMA

        return _schemas.get((self.resolved_uri(), self.db.name), read)

    def set_schema(self, schema: DatasetSchema) -> None:
        self.db[SETTINGS].replace_one({"_id": "schema"}, {"_id": "schema", "schema": schema.to_dict()}, upsert=True)
        _schemas.clear()

    # ---- counters ------------------------------------------------------------------------
    def raise_counter(self, name: str, last_used: int) -> None:
        """Make sure the counter never hands out ``last_used`` or anything below it."""
        self.db[COUNTERS].update_one({"_id": name}, {"$max": {"seq": int(last_used)}}, upsert=True)

    def next_value(self, name: str) -> int:
        """Atomically take the next number (one server-side $inc: never reused, even under races)."""
        doc = self.db[COUNTERS].find_one_and_update({"_id": name}, {"$inc": {"seq": 1}}, upsert=True,
                                                     return_document=pymongo.ReturnDocument.AFTER)
        assert doc is not None  # upsert=True with ReturnDocument.AFTER always returns the document
        return int(doc["seq"])

    # ---- sellers -------------------------------------------------------------------------
    def read_sellers(self) -> pd.DataFrame:
        """Sellers without their password hashes: nothing downstream may see them."""
        docs = list(self.db[SELLERS].find({}, {"_id": 0, "password_hash": 0, "password": 0}))
        cols = ["numero_vendedor", "username", "first_name", "last_name", "title", "reports_to"]
        frame = pd.DataFrame(docs, columns=cols)
        return frame.sort_values("numero_vendedor").reset_index(drop=True)


def _object_id(value: str) -> Any:
    return ObjectId(value) if ObjectId.is_valid(value) else value


def _bson_safe(doc: dict[str, Any]) -> dict[str, Any]:
    """Keys with '$' or '.' cannot be stored as-is; keep them readable but inert."""
    out = {}
    for key, value in doc.items():
        safe = str(key).replace("$", "＄").replace(".", "．")
        if isinstance(value, dict):
            value = _bson_safe(value)
        out[safe] = value
    return out


__all__ = ["OPPORTUNITIES", "OPPORTUNITY_HISTORY", "QUARANTINE", "SELLERS", "SOURCE_ID", "MongoResource"]
