"""Capture, look-up and prediction of opportunities: the one code path behind the API and the pages.

A capture takes the next number from MongoDB's atomic counter (never "highest plus one"), writes one
document in exactly the shape the pipeline reads (the same as :mod:`salespred_assets.core.synthetic`),
then scores it with the current model and writes the prediction to the Redis cache
(:func:`salespred_assets.scoring.online.predict_document`). Look-ups always filter by what the caller
may see, so another seller's opportunity and an unknown number are indistinguishable.

A capture and every later change made here are recorded in the opportunity history
(:mod:`salespred_assets.mongo.history`): the capture with the initial values, a change (:func:`change`)
with what it changed and who changed it. A change is applied by one update guarded on the values it
read, so a concurrent change is refused (409) rather than overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

import pymongo
from fastapi.exceptions import RequestValidationError
from pymongo.collection import Collection
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from salespred_assets.app.auth import Viewer
from salespred_assets.app.context import (
    AppContext,
    CaptureRefused,
    ChangeRefused,
    NotFound,
    Unavailable,
)
from salespred_assets.app.models import OpportunityChange, OpportunityIn, today
from salespred_assets.core.schema import DEFAULT_SCHEMA, OPEN_STAGES
from salespred_assets.mongo import client_facts, history
from salespred_assets.mongo.resource import OPPORTUNITIES, OPPORTUNITY_COUNTER
from salespred_assets.registry.model_store import NoModel
from salespred_assets.scoring import online

log = logging.getLogger("salespred.app")

# What an opportunity number in a URL may look like; anything else cannot exist (404).
NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
FIRST_STAGE = OPEN_STAGES[0]
CLOSED_STAGES = DEFAULT_SCHEMA.won + DEFAULT_SCHEMA.lost
PUBLIC = {"_id": 0, history.MARKER: 0}  # what callers see of a document


def format_number(n: int) -> str:
    """``OP-00042``; wider when the number needs it (``OP-123456``)."""
    return f"OP-{n:05d}"


def build_document(data: OpportunityIn, number: str, seller: str, created: dt.date) -> dict[str, Any]:
    """The MongoDB document, field for field as the original app (and the synthetic generator) wrote it."""
    close = data.fecha_cierre_oportunidad
    return {
        "numero_opportunidad": number,
        "cliente": data.cliente,
        "unidad_negocio": data.unidad_negocio,
        "etapas": FIRST_STAGE,
        "tipos": data.tipos,
        "acv": float(data.acv),
        "tcv": float(data.tcv if data.tcv is not None else data.acv),
        "margen_ganancia": float(data.margen_ganancia),
        "regiones": data.regiones,
        "territorios": data.territorios,
        "industrias": data.industrias,
        "fecha_creacion_oportunidad": created.isoformat(),
        "fecha_cierre_oportunidad": close.isoformat(),
        "fecha_cierre_planificada": close.isoformat(),  # the date the seller typed: never changed afterwards
        "edad_oferta": 0.0,  # the age so far (a closed opportunity's is its final duration)
        "lead_source": data.lead_source,
        "numero_vendedor": seller,
    }


@dataclass
class Captured:
    number: str
    document: dict[str, Any]
    prediction: dict[str, Any] | None
    source: str
    error: str | None

    def body(self) -> dict[str, Any]:
        return {"numero_opportunidad": self.number, "opportunity": self.document, "prediction": self.prediction,
                "prediction_source": self.source, "prediction_error": self.error}


def capture(ctx: AppContext, viewer: Viewer, data: OpportunityIn) -> Captured:
    """Store a validated opportunity for ``viewer`` and predict it.

    MongoDB failing before or during the insert raises (the caller answers 503; a number taken from the
    counter is then skipped, never reused). Once the document is stored the capture has succeeded:
    a failing prediction is reported in the result, not as an error.
    """
    schema = ctx.mongo.schema()
    if schema != DEFAULT_SCHEMA:
        raise CaptureRefused("the loaded data follows a custom schema (salespred seed --schema); the capture form "
                             "writes the original document shape only. Load data in that shape to capture here.")
    number = format_number(ctx.mongo.next_value(OPPORTUNITY_COUNTER))
    created = min(today(), data.fecha_cierre_oportunidad)  # validated "today or later", even across midnight
    doc = build_document(data, number, viewer.number, created)
    _insert(ctx, doc)
    client_facts.record(ctx.mongo.db, schema, [doc])  # the client's facts for scoring, in the same write path
    _record_capture(ctx, doc, viewer.number)
    stored = {k: v for k, v in doc.items() if k != "_id"}
    try:
        prediction = online.predict_document(ctx.mongo, ctx.redis, doc, schema)
        return Captured(number, stored, prediction, "model", None)
    except Exception as exc:  # noqa: BLE001 - the document is stored; never turn that into a failure
        log.warning("captured %s but could not predict it: %s", number, exc)
        return Captured(number, stored, None, "unavailable", _reason(exc))


def _insert(ctx: AppContext, doc: dict[str, Any]) -> None:
    coll = ctx.mongo.db[OPPORTUNITIES]
    try:
        coll.insert_one(doc)  # sets doc["_id"] before sending
    except ServerSelectionTimeoutError:
        raise  # nothing was sent
    except AutoReconnect:
        # The connection dropped mid-write: the server may or may not have stored it. Retry once with
        # the same _id; a duplicate _id proves the first attempt landed.
        with contextlib.suppress(DuplicateKeyError):
            coll.insert_one(doc)


def _record_capture(ctx: AppContext, doc: dict[str, Any], seller: str) -> None:
    number = doc[DEFAULT_SCHEMA.id]
    try:
        history.record(ctx.mongo.db, number, history.initial(doc), "capture", seller=seller,
                       entry_id=history.capture_id(number))
    except PyMongoError as exc:  # the opportunity is stored: the capture has succeeded all the same
        log.warning("captured %s but could not record it in the history: %s", number, str(exc).splitlines()[0][:200])


NO_MODEL = "no model has been trained yet"  # ``prediction_error``'s stable text for integrations


def _reason(exc: Exception) -> str:
    if isinstance(exc, NoModel):  # its message is an instruction for the operator: the log has it (above)
        return NO_MODEL
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def visible(ctx: AppContext, viewer: Viewer, number: str) -> dict[str, Any]:
    """The opportunity's document (without ``_id``) if ``viewer`` may see it; :class:`NotFound` otherwise."""
    return _find_visible(ctx, viewer, number, PUBLIC)


def _find_visible(ctx: AppContext, viewer: Viewer, number: str, projection: dict[str, int] | None) -> dict[str, Any]:
    if not NUMBER.match(number):
        raise NotFound(number)
    schema = ctx.mongo.schema()
    doc = ctx.mongo.db[OPPORTUNITIES].find_one({schema.id: number, **viewer.visibility(schema.seller)}, projection)
    if doc is None:
        raise NotFound(number)
    return doc


def prediction(ctx: AppContext, viewer: Viewer, number: str) -> tuple[dict[str, Any], str]:
    """(prediction, source) for an opportunity ``viewer`` may see: the cache first, else the model."""
    if not NUMBER.match(number):
        raise NotFound(number)
    try:
        value, source = online.prediction_for(ctx.mongo, ctx.redis, number, sellers=viewer.team)
    except NoModel as exc:
        raise Unavailable("model", str(exc)) from exc
    if value is None:
        raise NotFound(number)
    return value, source


def listing(ctx: AppContext, viewer: Viewer, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The newest opportunities ``viewer`` may see, and how many there are in all."""
    schema = ctx.mongo.schema()
    query = viewer.visibility(schema.seller)
    coll = ctx.mongo.db[OPPORTUNITIES]
    items = list(coll.find(query, PUBLIC).sort("_id", -1).skip(offset).limit(limit))
    return items, coll.count_documents(query)


# ---- changes ------------------------------------------------------------------------------------
@dataclass
class Changed:
    number: str
    document: dict[str, Any]
    changes: dict[str, dict[str, Any]]
    history_id: str | None
    prediction: dict[str, Any] | None
    source: str
    error: str | None

    def body(self) -> dict[str, Any]:
        return {"numero_opportunidad": self.number, "opportunity": self.document, "changes": self.changes,
                "history_id": self.history_id, "prediction": self.prediction, "prediction_source": self.source,
                "prediction_error": self.error}


def change(ctx: AppContext, viewer: Viewer, number: str, data: OpportunityChange) -> Changed:
    """Change an open opportunity ``viewer`` may see, record the change in the history and rescore it.

    Raises :class:`NotFound`, :class:`ChangeRefused` (closed, changed meanwhile, custom schema) or
    ``RequestValidationError`` (TCV below ACV once combined with the stored amounts). Once the update is
    stored the change has succeeded: a failing history write (the change stream then records it) or
    prediction is logged or reported, not raised.
    """
    if ctx.mongo.schema() != DEFAULT_SCHEMA:
        raise ChangeRefused("change.custom_schema", "the loaded data follows a custom schema (salespred seed "
                                                    "--schema); the app changes documents of the original shape only")
    current = _find_visible(ctx, viewer, number, None)
    _refuse_closed(current, number)
    update = {k: v for k, v in planned(current, data.given(), today()).items() if current.get(k) != v}
    if not update:
        return Changed(number, _public(current), {}, None, None, "unchanged", None)
    _check_amounts(current, update)
    changes = history.diff(current, update, history.TRACKED)
    entry_id = history.new_id("app")
    stored = _apply(ctx, viewer, current, update, entry_id)
    client_facts.record(ctx.mongo.db, DEFAULT_SCHEMA, [stored])  # a close changes the client's win history
    _record_change(ctx, number, changes, viewer.number, entry_id)
    prediction, source, error = _rescore(ctx, stored)
    return Changed(number, _public(stored), changes, entry_id if changes else None, prediction, source, error)


def planned(current: dict[str, Any], given: dict[str, Any], day: dt.date) -> dict[str, Any]:
    """The values to set: those given and, when it closes, its actual close date and final duration (days).

    That is the data contract of closed rows in the reference data: ``edad_oferta`` = close - creation.
    """
    target = dict(given)
    if given.get(DEFAULT_SCHEMA.stage) in CLOSED_STAGES:
        created = _as_date(current.get(str(DEFAULT_SCHEMA.created))) or day
        target[str(DEFAULT_SCHEMA.close)] = day.isoformat()
        target["edad_oferta"] = float(max(0, (day - created).days))
    return target


def _as_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _refuse_closed(doc: dict[str, Any], number: str) -> None:
    stage = doc.get(DEFAULT_SCHEMA.stage)
    if stage in CLOSED_STAGES:
        raise ChangeRefused("change.closed", f"opportunity {number} is closed ({stage}); a closed opportunity "
                                             f"cannot be changed", stage=str(stage))


def _check_amounts(current: dict[str, Any], update: dict[str, Any]) -> None:
    if "acv" not in update and "tcv" not in update:
        return  # a stage or date change is never refused for amounts it does not touch
    acv, tcv = update.get("acv", current.get("acv")), update.get("tcv", current.get("tcv"))
    if isinstance(acv, (int, float)) and isinstance(tcv, (int, float)) and tcv < acv:
        blamed = "tcv" if "tcv" in update else "acv"
        raise RequestValidationError([{"loc": ("body", blamed), "type": "tcv_below_acv", "msg":
                                       f"TCV ({tcv:g}) must be greater than or equal to ACV ({acv:g})"}])


def _apply(ctx: AppContext, viewer: Viewer, current: dict[str, Any], update: dict[str, Any],
           entry_id: str) -> dict[str, Any]:
    """One update, guarded on the stage and the values it replaces; its marker tells the stream it is the app's."""
    guard = {"_id": current["_id"], **viewer.visibility(DEFAULT_SCHEMA.seller),
             **{f: current.get(f) for f in (DEFAULT_SCHEMA.stage, *update)}}
    stored = _update(ctx.mongo.db[OPPORTUNITIES], guard, {"$set": {**update, history.MARKER: entry_id}}, entry_id)
    if stored is None:
        now = _find_visible(ctx, viewer, current[DEFAULT_SCHEMA.id], None)  # NotFound if it went
        _refuse_closed(now, current[DEFAULT_SCHEMA.id])
        raise ChangeRefused("change.conflict", "the opportunity was changed by someone else meanwhile; read it "
                                               "again and retry")
    return stored


def _update(coll: Collection, guard: dict[str, Any], update: dict[str, Any], entry_id: str) -> dict[str, Any] | None:
    after = pymongo.ReturnDocument.AFTER
    try:
        return coll.find_one_and_update(guard, update, return_document=after)
    except ServerSelectionTimeoutError:
        raise  # nothing was sent
    except AutoReconnect:
        # The connection dropped mid-write: it may have landed, and then the guard no longer matches, but
        # the document carries this change's marker.
        return (coll.find_one_and_update(guard, update, return_document=after)
                or coll.find_one({"_id": guard["_id"], history.MARKER: entry_id}))


def _record_change(ctx: AppContext, number: str, changes: dict[str, dict], seller: str, entry_id: str) -> None:
    try:
        history.record(ctx.mongo.db, number, changes, "app", seller=seller, entry_id=entry_id)
    except PyMongoError as exc:  # the change is stored; the change stream records it from the marker
        log.warning("changed %s but could not record it in the history (the change stream will): %s", number,
                    str(exc).splitlines()[0][:200])


def _rescore(ctx: AppContext, doc: dict[str, Any]) -> tuple[dict[str, Any] | None, str, str | None]:
    try:
        return online.predict_document(ctx.mongo, ctx.redis, doc, DEFAULT_SCHEMA), "model", None
    except Exception as exc:  # noqa: BLE001 - the change is stored; never turn that into a failure
        log.warning("changed %s but could not predict it: %s", doc.get(DEFAULT_SCHEMA.id), exc)
        return None, "unavailable", _reason(exc)


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in PUBLIC}
