"""The catalogs in MongoDB (collection ``catalogs``, one document per kind and code) and their cached reader.

Readers (the app, scoring's reasons) ask :func:`names` for a :class:`~salespred_assets.core.names.Names`:
read at most every few seconds per process, so a ``salespred catalog load`` shows within seconds and a
page costs no MongoDB read. ``names(mongo).display(kind, code, lang)`` is the lookup; sellers are named
through the same object (kind ``numero_vendedor``), from their first and last names.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from pymongo import UpdateOne

from salespred_assets.core.memo import Expiring
from salespred_assets.core.names import KINDS, Entry, Names, demo_entries
from salespred_assets.mongo.resource import SELLERS, MongoResource

CATALOGS = "catalogs"
# Each replacement fills its own staging collection, STAGING + "<unix seconds>_<random>": two concurrent
# replacements never share one (one could otherwise rename the other's half-filled staging over the catalog).
STAGING = CATALOGS + "__staging"
STALE_S = 3600.0  # a staging collection this old belongs to a replacement that died; it is dropped
_STAGED_AT = re.compile(re.escape(STAGING) + r"_(\d+)_[0-9a-f]+$")
INDEX = "kind_code_unique"
TTL_S = 5.0

log = logging.getLogger("salespred.catalogs")
# While MongoDB is down, the last catalogs (up to an hour old) still name the codes.
_cache: Expiring[Names] = Expiring(ttl_s=TTL_S, refresh_ahead=True, stale_s=3600.0)


def ensure_index(mongo: MongoResource, collection: str = CATALOGS) -> None:
    mongo.db[collection].create_index([("kind", 1), ("code", 1)], name=INDEX, unique=True)


def read(mongo: MongoResource) -> list[Entry]:
    out = []
    for doc in mongo.db[CATALOGS].find({}, {"_id": 0}):
        if doc.get("kind") in KINDS and doc.get("code"):
            out.append(Entry(str(doc["kind"]), str(doc["code"]), str(doc.get("es") or ""), str(doc.get("en") or ""),
                             str(doc["group"]) if doc.get("group") else None))
    return out


def seller_names(mongo: MongoResource) -> dict[str, str]:
    """Seller number -> "first last". A seller without either is left out, so they show as their number:
    the login name is a credential's half and is never shown (nor read), and no hash is read."""
    out = {}
    for doc in mongo.db[SELLERS].find({}, {"_id": 0, "numero_vendedor": 1, "first_name": 1, "last_name": 1}):
        if doc.get("numero_vendedor") is None:
            continue
        full = " ".join(f"{doc.get('first_name') or ''} {doc.get('last_name') or ''}".split())
        if full:
            out[str(doc["numero_vendedor"])] = full
    return out


_last: dict[object, Names] = {}


def _reader(mongo: MongoResource) -> Callable[[], Names]:
    def read_names() -> Names:
        # A refresh that changed nothing returns the object already held: what is cached by it (the
        # reasons' sentences) stays valid, and no caller holds on to a stale copy per refresh.
        fresh = Names(read(mongo), seller_names(mongo))
        key = mongo.identity()
        if fresh.same_as(_last.get(key)):
            return _last[key]
        _last[key] = fresh
        return fresh
    return read_names


def names(mongo: MongoResource) -> Names:
    """The catalogs and the sellers' names, at most :data:`TTL_S` seconds old."""
    return _cache.get(mongo.identity(), _reader(mongo))


def cached(mongo: MongoResource) -> Names | None:
    """The catalogs when this process holds them fresh (no MongoDB read); None when they must be read first."""
    return _cache.peek(mongo.identity(), _reader(mongo))


def name(mongo: MongoResource, kind: str, code: object, lang: str) -> str:
    """``code``'s display name in ``lang`` (the other language's, else the code itself when unknown)."""
    return names(mongo).display(kind, code, lang)


def forget() -> None:
    """Drop the cached catalogs (this process's next read goes to MongoDB)."""
    _cache.clear()
    _last.clear()


def write(mongo: MongoResource, entries: list[Entry], *, replace: bool = False) -> dict[str, int]:
    """Store checked entries: added or updated by (kind, code); with ``replace``, the catalog becomes exactly these.

    A replacement is filled in a staging collection and renamed over the live one (one rename), so a
    reader sees the old catalog or the new one, never a mix. Returns counts for the command's summary.
    """
    db = mongo.db
    if replace:
        drop_stale_staging(mongo)
        staging = staging_name()
        try:
            ensure_index(mongo, staging)
            db[staging].insert_many([e.as_doc() for e in entries], ordered=False)
            before = db[CATALOGS].count_documents({})
            db[staging].rename(CATALOGS, dropTarget=True)
        finally:
            # After the rename a no-op on MongoDB; under concurrent replacements the embedded server
            # (SecantusDB) has been seen to leave the renamed name behind, empty, and a single drop did
            # not always remove it: drop until it is gone. A failed replacement leaves the catalog only.
            _drop_until_gone(mongo, staging)
        forget()
        return {"written": len(entries), "removed": before, "total": len(entries)}
    ensure_index(mongo)
    ops = [UpdateOne({"kind": e.kind, "code": e.code},
                     {"$set": e.as_doc(), **({} if e.group else {"$unset": {"group": ""}})}, upsert=True)
           for e in entries]
    result = db[CATALOGS].bulk_write(ops, ordered=False)
    forget()
    return {"written": result.upserted_count + result.modified_count, "removed": 0,
            "total": db[CATALOGS].count_documents({})}


def _drop_until_gone(mongo: MongoResource, name: str, attempts: int = 50, quiet: int = 3) -> None:
    # The embedded server (SecantusDB) has been seen to re-create a just-renamed or just-dropped staging name,
    # empty, a few milliseconds later, under concurrent replacements: it counts as gone once absent from
    # ``quiet`` checks in a row, 10 ms apart.
    absent = 0
    for _ in range(attempts):
        if mongo.db.list_collection_names(filter={"name": name}):
            mongo.db.drop_collection(name)
            absent = 0
        else:
            absent += 1
            if absent >= quiet:
                return
        time.sleep(0.01)
    log.warning("the staging collection %s could not be dropped; the next replacement drops it when stale", name)


def staging_name(now: float | None = None) -> str:
    """A staging collection's name of its own, with its creation time (how a stale one is recognised)."""
    return f"{STAGING}_{int(time.time() if now is None else now)}_{uuid.uuid4().hex[:12]}"


def drop_stale_staging(mongo: MongoResource, max_age_s: float = STALE_S) -> list[str]:
    """Drop the staging collections of replacements that died (older than ``max_age_s``); a running
    replacement's (younger) is left alone. Returns the names dropped."""
    dropped = []
    now = time.time()
    for name in mongo.db.list_collection_names():
        if not name.startswith(STAGING):
            continue
        match = _STAGED_AT.match(name)
        # The one shared name of earlier releases has no time in it: only a dead run can have left it now.
        if match is None and name != STAGING:
            continue
        if match is None or now - int(match.group(1)) > max_age_s:
            mongo.db.drop_collection(name)
            log.warning("dropped %s, the staging collection of a catalog replacement that did not finish", name)
            dropped.append(name)
    return dropped


def ensure_demo_if_empty(mongo: MongoResource) -> int:
    """The demo catalog, only into an empty catalog: a catalog someone loaded (even one replaced on
    purpose to hold fewer names) is never topped up with demo names."""
    if mongo.db[CATALOGS].estimated_document_count() > 0:
        return 0
    return ensure_demo(mongo)


def ensure_demo(mongo: MongoResource) -> int:
    """Add the demo catalog's entries that are missing (a name already stored, edited or not, is kept)."""
    ensure_index(mongo)
    ops = [UpdateOne({"kind": e.kind, "code": e.code}, {"$setOnInsert": e.as_doc()}, upsert=True)
           for e in demo_entries()]
    result = mongo.db[CATALOGS].bulk_write(ops, ordered=False)
    forget()
    return int(result.upserted_count)
