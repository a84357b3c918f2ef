"""Loading data into MongoDB: synthetic demo data, or a CRM export (CSV) described by a schema."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pymongo.errors import BulkWriteError, DuplicateKeyError

from salespred_assets import settings
from salespred_assets.core import synthetic
from salespred_assets.core.exports import ExportCheck, check_export, read_text
from salespred_assets.core.passwords import hash_password, is_hash
from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.mongo import catalogs, client_facts
from salespred_assets.mongo.resource import (
    OPPORTUNITIES,
    OPPORTUNITY_COUNTER,
    OPPORTUNITY_HISTORY,
    QUARANTINE,
    SELLERS,
    SETTINGS,
    MongoResource,
)

Progress = Callable[[int], None]
SELLER_FIELDS = ["numero_vendedor", "username", "first_name", "last_name", "title"]
STAGING = "__staging"       # suffix of the collections a --replace load fills before swapping them in
SWAP_MARKER = "load_swap"   # settings document: staging is complete, swap these collections in
DEFAULT_MAX_REJECTED = 0.01
WRITE_BATCH = 5_000


def checkpoint(name: str) -> None:
    """A named point of a load; does nothing. The kill tests replace it to SIGKILL the process right there."""


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
    catalogs.ensure_demo_if_empty(mongo)  # names for the synthetic codes; a loaded catalog is never topped up
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


def prepare_sellers(sellers: list[dict[str, Any]], source: str = "") -> list[dict[str, Any]]:
    """Every seller checked, its password hashed, before anything is written: one bad seller, none written."""
    out: list[dict[str, Any]] = []
    seen: dict[str, set[str]] = {"numero_vendedor": set(), "username": set()}
    for i, raw in enumerate(sellers):
        where = f"{source} row {i + 2}" if source else "seller"
        doc = {k: (None if pd.isna(v) else str(v)) for k, v in raw.items() if k in [*SELLER_FIELDS, "reports_to"]}
        missing = [k for k in ("numero_vendedor", "username") if not doc.get(k)]
        if missing:
            raise SalespredError(f"{where} ({raw.get('numero_vendedor') or raw.get('username') or '?'}) lacks "
                                 f"{missing}; nothing was written")
        password = raw.get("password")
        if password is None or (isinstance(password, float) and pd.isna(password)) or str(password) == "":
            raise SalespredError(f"{where}: seller {doc['numero_vendedor']} has no password to hash; "
                                 "nothing was written")
        for key, values in seen.items():
            value = str(doc[key])
            if value in values:
                raise SalespredError(f"{where}: {key} {value!r} is given to two sellers; nothing was written")
            values.add(value)
        doc["password_hash"] = str(password) if is_hash(password) else hash_password(str(password))
        out.append(doc)
    return out


def write_sellers(mongo: MongoResource, sellers: list[dict[str, Any]], *, collection: str = SELLERS,
                  prepared: bool = False) -> int:
    """Upsert sellers by number; a plain ``password`` is replaced by its argon2 hash before storage."""
    mongo.ensure_indexes()
    docs = sellers if prepared else prepare_sellers(sellers)
    for doc in docs:
        try:
            mongo.db[collection].replace_one({"numero_vendedor": doc["numero_vendedor"]}, doc, upsert=True)
        except DuplicateKeyError as exc:
            raise SalespredError(f"username {doc['username']!r} is already used by another seller") from exc
    return len(docs)


def read_sellers_csv(path: str | Path) -> list[dict[str, Any]]:
    """The sellers file, checked and hashed (nothing written)."""
    p = Path(path)
    if not p.exists():
        raise SalespredError(f"sellers file {p} does not exist")
    import io

    try:
        frame = pd.read_csv(io.StringIO(read_text(p)), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise SalespredError(f"{p} is not a well-formed CSV: {str(exc).strip().splitlines()[-1]}") from exc
    need = {"numero_vendedor", "username", "password"}
    if not need <= set(frame.columns):
        raise SalespredError(f"{p} must have the columns {sorted(need)}; it has {list(frame.columns)}")
    return prepare_sellers(frame.to_dict("records"), source=str(p))


def load_sellers_csv(mongo: MongoResource, path: str | Path) -> int:
    return write_sellers(mongo, read_sellers_csv(path), prepared=True)


@dataclass
class LoadReport:
    """What a CSV load did (or would have done, when refused): every row loaded or set aside with its reasons."""

    file: str
    rows: int
    inserted: int = 0
    already_loaded: int = 0
    rejected: int = 0
    reasons: list[tuple[str, int, list[int]]] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    sellers: int | None = None
    replaced: bool = False
    written: bool = False

    @property
    def rejected_share(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0


class TooManyRejected(SalespredError):
    """More rows were rejected than ``--max-rejected`` allows; nothing was written."""

    def __init__(self, report: LoadReport, max_rejected: float) -> None:
        self.report = report
        super().__init__(
            f"{report.file}: {report.rejected:,} of {report.rows:,} rows rejected ({report.rejected_share:.1%}), more "
            f"than --max-rejected {max_rejected:.1%} allows; nothing was written. Correct the rows listed above, or "
            f"pass --max-rejected {min(1.0, round(report.rejected_share + 0.005, 3))} to load the valid rows and set "
            "the others aside in opportunities_quarantine" + (f". {report.hints[0]}" if report.hints else ""))


def load_csv(mongo: MongoResource, path: str | Path, schema: DatasetSchema = DEFAULT_SCHEMA, *,
             schema_name: str = "the default schema (the capture app's)", max_rejected: float = DEFAULT_MAX_REJECTED,
             replace: bool = False, sellers_path: str | Path | None = None,
             progress: Progress | None = None) -> LoadReport:
    """Load a CRM export: every row is written to ``opportunities`` or set aside in the quarantine with its reasons.

    Everything is read and checked first (the export and the sellers file); nothing is written when the
    export cannot be read, a stage value is unknown to the schema, a seller is invalid, or more than
    ``max_rejected`` of the rows are rejected. ``replace`` swaps in the new data set as a whole
    (:func:`finish_swap`); otherwise the valid rows are added, and a row already loaded with the same
    content is skipped, so a load interrupted and run again ends with every row once.
    """
    if not 0 <= max_rejected <= 1:
        raise SalespredError(f"--max-rejected must lie between 0 and 1 (a share of the rows), not {max_rejected}")
    finish_swap(mongo)
    check = check_export(path, schema, schema_name)
    if not check.rows:
        raise SalespredError(f"{path} has a header but no rows: nothing to load")
    sellers = read_sellers_csv(sellers_path) if sellers_path else None
    if sellers is not None and not replace:
        _check_sellers_fit(mongo, sellers)
    # Every number of the file, before rows already loaded are set aside: a load killed after its inserts and
    # run again must still raise the counter past them, or the app would hand out their numbers again.
    top_number = _top_number(schema, check.documents)
    already = 0 if replace else _set_aside_loaded(mongo, check, schema)
    report = LoadReport(check.name, check.rows, already_loaded=already, rejected=check.rejected,
                        reasons=check.reasons(), hints=check.hints, replaced=replace)
    if report.rejected_share > max_rejected:
        raise TooManyRejected(report, max_rejected)
    if replace:
        _replace(mongo, check, schema, sellers, progress)
    else:
        _append(mongo, check, schema, sellers, top_number, progress)
    report.inserted, report.written = len(check.documents), True
    report.sellers = len(sellers) if sellers is not None else None
    return report


def seed_csv(mongo: MongoResource, path: str | Path, schema: DatasetSchema = DEFAULT_SCHEMA,
             progress: Progress | None = None, max_rejected: float = 1.0) -> dict[str, int]:
    """Add an export's rows (rejected ones to the quarantine); {"inserted": n, "rejected": m}."""
    report = load_csv(mongo, path, schema, max_rejected=max_rejected, progress=progress)
    return {"inserted": report.inserted, "rejected": report.rejected}


def _set_aside_loaded(mongo: MongoResource, check: ExportCheck, schema: DatasetSchema) -> int:
    """Rows whose number is already in ``opportunities``: skipped when identical, else quarantined as duplicates."""
    ids = [d[schema.id] for d in check.documents]
    existing: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(ids), WRITE_BATCH):
        for doc in mongo.db[OPPORTUNITIES].find({schema.id: {"$in": ids[start:start + WRITE_BATCH]}}, {"_id": 0}):
            existing.setdefault(doc[schema.id], doc)
    if not existing:
        return 0
    same = [i for i, d in enumerate(check.documents) if existing.get(d[schema.id]) == d]
    clash = [i for i, d in enumerate(check.documents) if d[schema.id] in existing and existing[d[schema.id]] != d]
    check.set_aside(clash, f"{schema.id}: duplicate")
    gone = set(same)
    kept = [(d, r) for i, (d, r) in enumerate(zip(check.documents, check.document_rows, strict=True)) if i not in gone]
    check.documents = [d for d, _ in kept]
    check.document_rows = [r for _, r in kept]
    return len(same)


def _insert(mongo: MongoResource, docs: list[dict[str, Any]], collection: str, progress: Progress | None) -> None:
    for start in range(0, len(docs), WRITE_BATCH):
        batch = [dict(d) for d in docs[start:start + WRITE_BATCH]]  # insert_many adds an _id to each
        try:
            mongo.insert_opportunities(batch, collection=collection)
        except BulkWriteError as exc:
            first_error = exc.details.get("writeErrors", [])[:1]
            raise SalespredError(f"writing {collection} failed after {start} rows: {first_error}") from exc
        if progress:
            progress(len(batch))
        checkpoint("opportunities-batch")


def _append(mongo: MongoResource, check: ExportCheck, schema: DatasetSchema, sellers: list[dict[str, Any]] | None,
            top_number: int, progress: Progress | None) -> None:
    mongo.ensure_indexes()
    if schema != DEFAULT_SCHEMA:
        mongo.set_schema(schema)
    if top_number:  # first ($max): numbers the app hands out never meet the file's, even if killed below
        mongo.raise_counter(OPPORTUNITY_COUNTER, top_number)
    if sellers is not None:  # checked against the stored sellers already: before the opportunities that name them
        write_sellers(mongo, sellers, prepared=True)
    _insert(mongo, check.documents, OPPORTUNITIES, progress)
    # A file loaded again (corrected, or after an interruption) replaces what its last load set aside.
    mongo.db[QUARANTINE].delete_many({"source.path": check.path})  # the same file, not one of the same name
    mongo.write_quarantine(check.quarantine, f"csv:{uuid.uuid4().hex[:12]}", replace_all=False)
    client_facts.rebuild_all(mongo.db, schema)  # what captures score with, in one pass


def _top_number(schema: DatasetSchema, docs: list[dict[str, Any]]) -> int:
    """The highest OP-<n> number among ``docs`` (0 when none, or when the export numbers otherwise)."""
    if schema.id != DEFAULT_SCHEMA.id:
        return 0
    return max((int(x[3:]) for x in (str(d[schema.id]) for d in docs) if x.startswith("OP-") and x[3:].isdigit()),
               default=0)


def _check_sellers_fit(mongo: MongoResource, sellers: list[dict[str, Any]]) -> None:
    """A username another stored seller holds would stop the sellers' write half-way: refuse before writing."""
    wanted = {s["username"]: s["numero_vendedor"] for s in sellers}
    for held in mongo.db[SELLERS].find({"username": {"$in": list(wanted)}}, {"username": 1, "numero_vendedor": 1}):
        if held["numero_vendedor"] != wanted[held["username"]]:
            raise SalespredError(f"username {held['username']!r} is already used by seller {held['numero_vendedor']}"
                                 f", not {wanted[held['username']]}: fix the sellers file; nothing was written")


def _replace(mongo: MongoResource, check: ExportCheck, schema: DatasetSchema, sellers: list[dict[str, Any]] | None,
             progress: Progress | None) -> None:
    numbers = [int(x[3:]) for x in (d[schema.id] for d in check.documents)
               if schema.id == DEFAULT_SCHEMA.id and str(x).startswith("OP-") and x[3:].isdigit()]
    swap_in(mongo, [check.documents], check.quarantine, schema, sellers, max(numbers, default=0), progress)


def replace_synthetic(mongo: MongoResource, n: int, *, seed: int = 42, as_of: dt.date | None = None,
                      sellers: list[dict[str, Any]] | None = None, progress: Progress | None = None) -> int:
    """``n`` synthetic opportunities (numbers from 0) in place of the data set, all or nothing (:func:`swap_in`)."""
    if n <= 0:
        raise SalespredError("--synthetic needs a positive number of opportunities")
    finish_swap(mongo)
    empty = pd.DataFrame(columns=["_id", "id", "reason", "document"])
    swap_in(mongo, synthetic.generate(n, seed=seed, as_of=as_of), empty, DEFAULT_SCHEMA, sellers, n - 1, progress)
    catalogs.ensure_demo_if_empty(mongo)
    return n


def swap_in(mongo: MongoResource, documents: Iterable[list[dict[str, Any]]], quarantine: pd.DataFrame,
            schema: DatasetSchema, sellers: list[dict[str, Any]] | None, last_number: int,
            progress: Progress | None) -> None:
    """Fill staging collections, mark them complete, then swap them in (:func:`finish_swap`).

    The history of the old opportunities is replaced by an empty one: it describes a data set that is gone,
    and training would rewind the new rows with it. Without a sellers file the sellers stay as they are.
    """
    db = mongo.db
    swapped = [OPPORTUNITIES, QUARANTINE, OPPORTUNITY_HISTORY, *([SELLERS] if sellers is not None else [])]
    for name in (OPPORTUNITIES, QUARANTINE, OPPORTUNITY_HISTORY, SELLERS):
        db.drop_collection(name + STAGING)  # what a killed load left behind
    checkpoint("staging-dropped")
    mongo.ensure_indexes(STAGING)  # the same indexes as the live collections, before any document
    db.create_collection(QUARANTINE + STAGING)
    for batch in documents:
        _insert(mongo, batch, OPPORTUNITIES + STAGING, progress)
    checkpoint("opportunities-staged")
    mongo.write_quarantine(quarantine, f"load:{uuid.uuid4().hex[:12]}", replace_all=False,
                           collection=QUARANTINE + STAGING)
    if sellers is not None:
        for doc in sellers:
            db[SELLERS + STAGING].insert_one(dict(doc))
    checkpoint("staged")
    db[SETTINGS].replace_one({"_id": SWAP_MARKER}, {"_id": SWAP_MARKER, "collections": swapped,
                                                    "schema": schema.to_dict(), "last_number": last_number,
                                                    "at": dt.datetime.now(dt.UTC)}, upsert=True)
    checkpoint("marked")
    finish_swap(mongo)


def finish_swap(mongo: MongoResource) -> bool:
    """Swap in the staging collections of a ``--replace`` load marked complete; True when there was one.

    Each rename (``dropTarget``) replaces one live collection by its complete staging copy, indexes
    included, so each collection always holds either its old or its new data. Renames of several
    collections cannot be atomic together: the marker stays until the last one is done, and every load
    calls this first, so a swap interrupted half-way is finished by the next ``salespred seed``.
    """
    db = mongo.db
    marker = db[SETTINGS].find_one({"_id": SWAP_MARKER})
    if marker is None:
        return False
    db[SETTINGS].delete_one({"_id": client_facts.COMPLETE})  # the old data set's facts: trusted no more
    present = set(db.list_collection_names())
    for name in marker["collections"]:
        if name + STAGING in present:
            db[name + STAGING].rename(name, dropTarget=True)
            checkpoint(f"swapped-{name}")
    mongo.set_schema(DatasetSchema.from_dict(marker["schema"], source="the load's swap marker"))
    if marker.get("last_number"):
        mongo.raise_counter(OPPORTUNITY_COUNTER, int(marker["last_number"]))
    mongo.ensure_indexes()  # the live opportunities keep their before-images for the history
    # Before the marker goes: a load killed while rebuilding finishes the swap, and the facts, again.
    client_facts.rebuild_all(db, DatasetSchema.from_dict(marker["schema"], source="the load's swap marker"))
    db[SETTINGS].delete_one({"_id": SWAP_MARKER})
    return True
