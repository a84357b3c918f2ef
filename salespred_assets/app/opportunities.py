"""Capture, look-up and prediction of opportunities: the one code path behind the API and the pages.

A capture takes the next number from MongoDB's atomic counter (never "highest plus one"), writes one
document in exactly the shape the pipeline reads (the same as :mod:`salespred_assets.core.synthetic`),
then scores it with the current model and writes the prediction to the Redis cache
(:func:`salespred_assets.scoring_service.predict_document`). Look-ups always filter by what the caller
may see, so another seller's opportunity and an unknown number are indistinguishable.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import Any

from pymongo.errors import AutoReconnect, DuplicateKeyError, PyMongoError, ServerSelectionTimeoutError

from salespred_assets import scoring_service
from salespred_assets.app.auth import Viewer
from salespred_assets.app.context import (
    AppContext,
    CaptureRefused,
    NotFound,
    Unavailable,
)
from salespred_assets.app.models import OpportunityIn, today
from salespred_assets.core.schema import DEFAULT_SCHEMA, OPEN_STAGES
from salespred_assets.mongo import history
from salespred_assets.mongo.model_store import NoModel
from salespred_assets.mongo.resource import OPPORTUNITIES, OPPORTUNITY_COUNTER

log = logging.getLogger("salespred.app")

# What an opportunity number in a URL may look like; anything else cannot exist (404).
NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
FIRST_STAGE = OPEN_STAGES[0]


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
    _record_capture(ctx, doc, viewer.number)
    stored = {k: v for k, v in doc.items() if k != "_id"}
    try:
        prediction = scoring_service.predict_document(ctx.mongo, ctx.redis, doc, schema)
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
        try:
            coll.insert_one(doc)
        except DuplicateKeyError:
            pass


def _record_capture(ctx: AppContext, doc: dict[str, Any], seller: str) -> None:
    number = doc[DEFAULT_SCHEMA.id]
    try:
        history.record(ctx.mongo.db, number, history.initial(doc), "capture", seller=seller,
                       entry_id=history.capture_id(number))
    except PyMongoError as exc:  # the opportunity is stored: the capture has succeeded all the same
        log.warning("captured %s but could not record it in the history: %s", number, str(exc).splitlines()[0][:200])


def _reason(exc: Exception) -> str:
    if isinstance(exc, NoModel):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def visible(ctx: AppContext, viewer: Viewer, number: str) -> dict[str, Any]:
    """The opportunity's document (without ``_id``) if ``viewer`` may see it; :class:`NotFound` otherwise."""
    if not NUMBER.match(number):
        raise NotFound(number)
    schema = ctx.mongo.schema()
    doc = ctx.mongo.db[OPPORTUNITIES].find_one({schema.id: number, **viewer.visibility(schema.seller)}, {"_id": 0})
    if doc is None:
        raise NotFound(number)
    return doc


def prediction(ctx: AppContext, viewer: Viewer, number: str) -> tuple[dict[str, Any], str]:
    """(prediction, source) for an opportunity ``viewer`` may see: the cache first, else the model."""
    if not NUMBER.match(number):
        raise NotFound(number)
    try:
        value, source = scoring_service.prediction_for(ctx.mongo, ctx.redis, number, sellers=viewer.team)
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
    items = list(coll.find(query, {"_id": 0}).sort("_id", -1).skip(offset).limit(limit))
    return items, coll.count_documents(query)
