"""The REST API under /api: what the pages do, for a native (Flutter) client. OpenAPI at /docs."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, TypeVar

import redis as redis_lib
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from pymongo.errors import PyMongoError
from starlette.concurrency import run_in_threadpool

from salespred_assets import i18n
from salespred_assets.app import auth, idempotency, opportunities, reasons
from salespred_assets.app.auth import LoginRefused, Viewer
from salespred_assets.app.context import AppContext, Unavailable
from salespred_assets.app.models import (
    CaptureOut,
    ChangeOut,
    ErrorOut,
    LoginIn,
    OpportunityChange,
    OpportunityIn,
    OpportunityList,
    PredictionOut,
    SellerOut,
    TokenOut,
)
from salespred_assets.core.names import STAGE_CODES, Names
from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo import catalogs

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api")
bearer = HTTPBearer(auto_error=False, description="A token from POST /api/auth/token")
M = TypeVar("M", bound=BaseModel)

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "Bad input: a message for each field; nothing was written"}}
DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "MongoDB (or Redis, for tokens) is unavailable; nothing was written"}}
MISSING: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown, or another seller's opportunity (the same answer)"}}


def ctx_of(request: Request) -> AppContext:
    return request.app.state.ctx


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body that the endpoint parses itself (strictly, from the raw JSON)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def parse(request: Request, model: type[M]) -> M:
    """Validate the raw JSON body strictly: ``"12"`` is not a number, unknown keys are refused."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"", strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from exc


LangQuery = Annotated[str | None, Query(description="The language of the reasons' sentences: `es` or "
                                                                  "`en` (else `Accept-Language`; default `es`)")]


def reader_lang(request: Request) -> str:
    """The language of an API answer's text: ``?lang=``, then ``Accept-Language``, then the default."""
    return i18n.negotiate(request.query_params.get("lang"), request.headers.get("accept-language"))


async def namer_for(request: Request) -> reasons.Namer:
    """The codes' names for the reasons: held in memory, else read in a worker thread (never on the event
    loop). Names help but are not the answer: if MongoDB fails here, codes show as themselves (logged), and
    a capture already stored is never turned into an error."""
    ctx = ctx_of(request)
    held = reasons.namer(ctx, held_only=True)
    if held is not None:
        return held
    try:
        return await run_in_threadpool(reasons.namer, ctx) or reasons.code_itself
    except PyMongoError as exc:
        log.warning("catalog names unavailable, codes shown as they are: %s", str(exc).splitlines()[0][:200])
        return reasons.code_itself


def with_reasons(request: Request, response: Response, body: dict[str, Any], name: reasons.Namer) -> dict[str, Any]:
    """``body`` with its prediction's reasons as sentences in the reader's language (``Content-Language``)."""
    lang = reader_lang(request)
    response.headers["Content-Language"] = lang
    response.headers["Vary"] = "Accept-Language"
    if body.get("prediction_error"):  # why there is no prediction, for a person too
        key = "api.no_model" if body["prediction_error"] == opportunities.NO_MODEL else "page.prediction_unavailable"
        body = {**body, "prediction_message": i18n.translate(lang, key)}
    if body.get("prediction") is None:
        return body
    return {**body, "prediction": reasons.for_prediction(body["prediction"], lang, name)}


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None:
        raise HTTPException(401, "missing bearer token: get one from POST /api/auth/token", headers=_CHALLENGE)
    return credentials.credentials


async def _viewer_named(request: Request, number: str | None, token: str) -> Viewer:
    """The seller a resolved token names, with their team (from memory when fresh; else read off the loop)."""
    ctx = ctx_of(request)
    viewer = None
    if number:
        roster = auth.fresh_roster(ctx.mongo)
        viewer = roster.viewer(number) if roster else await run_in_threadpool(auth.load_viewer, ctx.mongo, number)
    if viewer is None:
        raise HTTPException(401, "invalid, expired or revoked token: log in again at POST /api/auth/token",
                            headers=_CHALLENGE)
    request.state.token = token
    return viewer


async def api_viewer(request: Request, credentials: BearerDep) -> Viewer:
    # Async: a token check is one Redis round trip on the event loop, with no worker-thread hop.
    ctx = ctx_of(request)
    token = _token(credentials)
    try:
        number = await ctx.tokens.aresolve(token, ctx.aredis())
    except redis_lib.RedisError as exc:
        raise Unavailable("Redis", f"the token store cannot be read ({exc}); try again shortly") from exc
    return await _viewer_named(request, number, token)


ViewerDep = Annotated[Viewer, Depends(api_viewer)]


# ---- auth ---------------------------------------------------------------------------------------
@router.post("/auth/token", response_model=TokenOut, tags=["auth"], openapi_extra=json_body(LoginIn),
             responses={401: {"model": ErrorOut, "description": "Wrong username or password"},
                        429: {"model": ErrorOut, "description": "Too many failed logins; see Retry-After"},
                        **INVALID, **DOWN})
async def issue_token(request: Request) -> TokenOut:
    """Log in with a seller's username and password; returns a bearer token that expires."""
    ctx = ctx_of(request)
    body = await parse(request, LoginIn)
    client = request.client.host if request.client else "unknown"
    try:
        number = await run_in_threadpool(auth.login, ctx.mongo, ctx.limiter, body.username, body.password, client)
    except LoginRefused as exc:
        if exc.retry_after:
            raise HTTPException(429, f"too many failed logins for this user or from this address; try again in "
                                     f"{exc.retry_after} s", headers={"Retry-After": str(exc.retry_after)}) from exc
        raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"}) from exc
    try:
        token = await run_in_threadpool(ctx.tokens.issue, number)
    except redis_lib.RedisError as exc:
        raise Unavailable("Redis", f"tokens cannot be issued ({exc}); the web pages still work") from exc
    viewer = await run_in_threadpool(auth.load_viewer, ctx.mongo, number)
    if viewer is None:  # removed between the password check and now
        raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    return TokenOut(access_token=token, expires_in=ctx.tokens.ttl_s, seller=SellerOut(**viewer.public()))


@router.delete("/auth/token", status_code=204, tags=["auth"], responses={**UNAUTHORIZED, **DOWN})
def revoke_token(request: Request, viewer: ViewerDep) -> Response:
    """Revoke the token this request carries (log out)."""
    ctx_of(request).tokens.revoke(request.state.token)
    return Response(status_code=204)


@router.get("/me", response_model=SellerOut, tags=["auth"], responses={**UNAUTHORIZED})
def me(viewer: ViewerDep) -> SellerOut:
    """The logged-in seller, their role and the seller numbers they may see."""
    return SellerOut(**viewer.public())


@router.get("/codes", tags=["opportunities"])
def codes(request: Request, response: Response,
          lang: Annotated[str | None, Query(max_length=8, description="`es` or `en`; else `Accept-Language`")] = None,
          accept_language: Annotated[str | None, Header(max_length=256)] = None) -> dict[str, Any]:
    """The codes each dropdown offers (business units, types, regions, territories, industries, lead sources).

    Each kind's key lists its codes, as always. `names` gives, per kind (and for the stages, `etapas`), every
    code with its display name in `lang` (from `?lang=`, else `Accept-Language`, else Spanish), sorted by
    that name, and for a territory the region it is grouped under (`group`, a name). A code the catalog
    does not name has its code as its name. Submit the code, show the name.
    """
    language = i18n.negotiate(lang, accept_language)
    try:
        names = catalogs.names(ctx_of(request).mongo)
    except Exception as exc:  # noqa: BLE001 - without names every code still shows, as itself
        log.warning("catalog names unavailable for /api/codes: %s", exc)
        names = Names()
    response.headers["Content-Language"] = language
    response.headers["Vary"] = "Accept-Language"
    stages = names.options("etapas", list(STAGE_CODES), language,
                           display=lambda code: i18n.stage_name(language, code, names))
    return {**CODE_SETS, "lang": language,
            "names": {**{kind: names.options(kind, values, language) for kind, values in CODE_SETS.items()},
                      "etapas": stages}}


# ---- opportunities ------------------------------------------------------------------------------
IdempotencyKey = Annotated[str | None, Header(alias=idempotency.HEADER, pattern=idempotency.KEY_PATTERN,
                                              description=idempotency.HEADER_DESCRIPTION)]


@router.post("/opportunities", status_code=201, response_model=CaptureOut, tags=["opportunities"],
             openapi_extra=json_body(OpportunityIn),
             responses={**UNAUTHORIZED, **DOWN,
                        422: {"model": ErrorOut, "description": "Bad input: a message for each field; or an "
                                                                "`Idempotency-Key` used before with another body. "
                                                                "Nothing was written"},
                        409: {"model": ErrorOut, "description": "The loaded data does not use the capture shape, or "
                                                                "the first request with this `Idempotency-Key` is "
                                                                "still running (see `Retry-After`)"}})
async def create_opportunity(request: Request, response: Response, viewer: ViewerDep,
                             idempotency_key: IdempotencyKey = None, lang: LangQuery = None) -> Any:
    """Capture an opportunity and predict it at once.

    The server sets the number (from an atomic counter), the creation date (today), the stage (S1),
    the seller (you), the offer age (0 days: its age so far) and `fecha_cierre_planificada`, the close
    date as typed, which never changes afterwards. The prediction comes from
    the current model and is written to the Redis cache; if it cannot be made, the opportunity is still
    stored and `prediction_error` says why.
    """
    body = await parse(request, OpportunityIn)
    ctx = ctx_of(request)
    if idempotency_key is None:
        result = await run_in_threadpool(opportunities.capture, ctx, viewer, body)
        response.headers["Location"] = f"/api/opportunities/{result.number}"
        return with_reasons(request, response, result.body(), await namer_for(request))

    name = await namer_for(request)

    def work() -> tuple[int, dict[str, Any]]:
        # Stored as it is answered (in the first request's language), so that a replay is byte for byte the
        # first answer's JSON.
        captured = opportunities.capture(ctx, viewer, body)
        answer = with_reasons(request, response, captured.body(), name)
        return 201, CaptureOut.model_validate(answer).model_dump(mode="json")

    digest = idempotency.fingerprint(json.loads(await request.body()))
    try:
        outcome = await run_in_threadpool(idempotency.run_once, ctx.mongo.db, viewer.number, idempotency_key,
                                          digest, work, reader_lang(request))
    except idempotency.KeyReused as exc:
        raise RequestValidationError([{"loc": ("header", idempotency.HEADER), "type": "idempotency_key_reused",
                                       "msg": "this Idempotency-Key was used with another body; use a new key for "
                                              "a new capture"}]) from exc
    except idempotency.InProgress as exc:
        raise HTTPException(409, "a request with this Idempotency-Key is still being processed; retry shortly",
                            headers={"Retry-After": "1"}) from exc
    headers = {"Location": f"/api/opportunities/{outcome.body['numero_opportunidad']}",
               "Content-Language": outcome.lang or reader_lang(request)}
    if outcome.replayed:  # the first answer, byte for byte, in its language whatever this retry asks
        headers["Idempotent-Replayed"] = "true"
    else:
        headers["Vary"] = "Accept-Language"
    return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)


@router.get("/opportunities", response_model=OpportunityList, tags=["opportunities"],
            responses={**UNAUTHORIZED, **DOWN})
def list_opportunities(request: Request, viewer: ViewerDep,
                       limit: Annotated[int, Query(ge=1, le=100)] = 20,
                       offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
    """The opportunities you may see (yours, or your team's), newest first."""
    items, total = opportunities.listing(ctx_of(request), viewer, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/opportunities/{number}", tags=["opportunities"], responses={**UNAUTHORIZED, **MISSING, **DOWN})
def get_opportunity(request: Request, number: str, viewer: ViewerDep) -> dict[str, Any]:
    """One opportunity's document, if you may see it."""
    return opportunities.visible(ctx_of(request), viewer, number)


@router.patch("/opportunities/{number}", response_model=ChangeOut, tags=["opportunities"],
              openapi_extra=json_body(OpportunityChange),
              responses={**UNAUTHORIZED, **MISSING, **INVALID, **DOWN,
                         409: {"model": ErrorOut, "description": "The opportunity is closed (Won or Lost), was changed "
                                                                 "by someone else meanwhile, or the loaded data does "
                                                                 "not use the capture shape; nothing was written"}})
async def change_opportunity(request: Request, response: Response, number: str, viewer: ViewerDep,
                             lang: LangQuery = None) -> dict[str, Any]:
    """Change an open opportunity you may see (yours, or your team's): its stage, amounts or close date.

    Only the fields given change. Moving it to Won or Lost closes it: its close date becomes today and
    `edad_oferta` its final duration (days from creation to today); a closed opportunity cannot be
    changed. The change is recorded in the opportunity history with you as its author, and the
    opportunity is scored again (if that fails, the change stands and `prediction_error` says why).
    """
    body = await parse(request, OpportunityChange)
    result = await run_in_threadpool(opportunities.change, ctx_of(request), viewer, number, body)
    return with_reasons(request, response, result.body(), await namer_for(request))


@router.get("/opportunities/{number}/prediction", response_model=PredictionOut, tags=["opportunities"],
            responses={**UNAUTHORIZED, **MISSING, **DOWN})
async def get_prediction(request: Request, response: Response, number: str, viewer: ViewerDep,
                         lang: LangQuery = None) -> Any:
    """Likely won or lost: from the Redis cache when present, else scored now by the current model.

    The reasons come twice: per input (`factors_for`, `factors_against`) and grouped by concept as sentences
    in the language of `?lang=` or `Accept-Language` (`reasons_for`, `reasons_against`)."""
    # A cached entry the caller may see is usually answered before this, by the fast lane (fastlane.py).
    value, source = await run_in_threadpool(opportunities.prediction, ctx_of(request), viewer, number)
    return with_reasons(request, response, {"numero_opportunidad": number, "source": source, "prediction": value},
                        await namer_for(request))
