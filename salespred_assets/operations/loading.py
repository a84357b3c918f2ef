"""Loading data into MongoDB: synthetic demo data, or a CRM export (CSV) described by a schema."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pymongo.errors import BulkWriteError, DuplicateKeyError

from salespred_assets import settings
from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.passwords import hash_password, is_hash
from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.mongo import client_facts
from salespred_assets.mongo.resource import OPPORTUNITIES, OPPORTUNITY_COUNTER, SELLERS, MongoResource

Progress = Callable[[int], None]
SELLER_FIELDS = ["numero_vendedor", "username", "first_name", "last_name", "title"]


def credentials_path() -> Path:
    return settings.home() / "demo-credentials.txt"


def seed_synthetic(mongo: MongoResource, n: int, *, seed: int = 42, as_of: dt.date | None = None,
                   batch_size: int = 5_000, progress: Progress | None = None) -> int:
    """Insert ``n`` synthetic opportunities after the ones already there; returns how many."""
    if n <= 0:
        raise SalespredError("--synthetic needs a positive number of opportunities")
    db = mongo.db
    mongo.ensure_indexes()
    start = db[OPPORTUNITIES].estimated_document_count()
    written = 0
    buffer: list[dict[str, Any]] = []
    for docs in synthetic.generate(n, seed=seed, as_of=as_of, start=start):
        buffer.extend(docs)
        while len(buffer) >= batch_size:
            written += mongo.insert_opportunities(buffer[:batch_size])
            del buffer[:batch_size]
            if progress:
                progress(batch_size)
    if buffer:
        written += mongo.insert_opportunities(buffer)
        if progress:
            progress(len(buffer))
    mongo.raise_counter(OPPORTUNITY_COUNTER, start + n - 1)  # the last number used
    client_facts.rebuild_all(db, mongo.schema())  # what captures score with, in one pass
    return written


def ensure_demo_sellers(mongo: MongoResource) -> Path | None:
    """Create the five demo sellers if there are none; their passwords go to a private file only."""
    if mongo.db[SELLERS].count_documents({}) > 0:
        return None
    sellers = synthetic.demo_sellers()
    write_sellers(mongo, sellers)
    path = credentials_path()
    lines = ["# salespred demo logins (generated; only argon2 hashes are stored in MongoDB)",
             "# username  password  title"]
    lines += [f"{s['username']}  {s['password']}  {s['title']}" for s in sellers]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def write_sellers(mongo: MongoResource, sellers: list[dict[str, Any]]) -> int:
    """Upsert sellers by number; a plain ``password`` is replaced by its argon2 hash before storage."""
    mongo.ensure_indexes()
    n = 0
    for raw in sellers:
        doc = {k: (None if pd.isna(v) else str(v)) for k, v in raw.items() if k in [*SELLER_FIELDS, "reports_to"]}
        missing = [k for k in ("numero_vendedor", "username") if not doc.get(k)]
        if missing:
            raise SalespredError(f"seller {raw.get('numero_vendedor') or raw.get('username') or '?'} lacks {missing}")
        password = raw.get("password")
        if password is None or (isinstance(password, float) and pd.isna(password)) or str(password) == "":
            raise SalespredError(f"seller {doc['numero_vendedor']} has no password to hash")
        doc["password_hash"] = str(password) if is_hash(password) else hash_password(str(password))
        try:
            mongo.db[SELLERS].replace_one({"numero_vendedor": doc["numero_vendedor"]}, doc, upsert=True)
        except DuplicateKeyError as exc:
            raise SalespredError(f"username {doc['username']!r} is already used by another seller") from exc
        n += 1
    return n


def load_sellers_csv(mongo: MongoResource, path: str | Path) -> int:
    p = Path(path)
    if not p.exists():
        raise SalespredError(f"sellers file {p} does not exist")
    frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    need = {"numero_vendedor", "username", "password"}
    if not need <= set(frame.columns):
        raise SalespredError(f"{p} must have the columns {sorted(need)}; it has {list(frame.columns)}")
    return write_sellers(mongo, frame.to_dict("records"))


def seed_csv(mongo: MongoResource, path: str | Path, schema: DatasetSchema = DEFAULT_SCHEMA,
             chunk_rows: int = 20_000, progress: Progress | None = None) -> dict[str, int]:
    """Load a CRM export into ``opportunities``: valid rows are inserted, invalid ones reported.

    Each row becomes a document in the export's own field names and types (numbers as numbers, dates
    as ``YYYY-MM-DD``), so that the pipeline reads it exactly as it reads the capture app's documents.
    """
    p = Path(path)
    if not p.exists():
        raise SalespredError(f"CSV file {p} does not exist")
    header = pd.read_csv(p, nrows=0).columns.tolist()
    absent = [f for f in schema.fields if f not in header]
    if absent:
        raise SalespredError(f"{p} lacks the fields {absent} that the schema declares; "
                             f"its columns are {header}. Pass --schema with a schema file for this export.")
    dtypes = dict.fromkeys(schema.number_fields, "float64")
    dtypes.update({c: "str" for c in schema.fields if c not in schema.number_fields})
    mongo.ensure_indexes()
    if schema != DEFAULT_SCHEMA:
        mongo.set_schema(schema)
    inserted = rejected = 0
    for chunk in pd.read_csv(p, usecols=schema.fields, dtype=dtypes, chunksize=chunk_rows, keep_default_na=True):
        records = chunk.to_dict("records")
        checked = validate(records_frame(records, schema), schema, dedupe=False)
        rejected += len(checked.quarantine)
        ok = set(checked.frame[schema.id])
        docs = [{k: v for k, v in r.items() if not (isinstance(v, float) and pd.isna(v))}
                for r in records if r[schema.id] in ok]
        try:
            inserted += mongo.insert_opportunities(docs)
        except BulkWriteError as exc:
            first_error = exc.details.get("writeErrors", [])[:1]
            raise SalespredError(f"loading {p} failed after {inserted} rows: {first_error}") from exc
        if progress:
            progress(len(records))
    if schema.id == DEFAULT_SCHEMA.id:
        numbers = [int(x[3:]) for x in mongo.db[OPPORTUNITIES].distinct(schema.id)
                   if str(x).startswith("OP-") and x[3:].isdigit()]
        if numbers:
            mongo.raise_counter(OPPORTUNITY_COUNTER, max(numbers))
    client_facts.rebuild_all(mongo.db, schema)  # what captures score with, in one pass
    return {"inserted": inserted, "rejected": rejected}
