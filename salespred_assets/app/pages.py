"""Server-rendered pages: log in, capture, validate (look up), list and move opportunities. No JavaScript."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from pydantic import ValidationError
from pymongo.errors import ConnectionFailure
from redis import RedisError
from starlette.concurrency import run_in_threadpool

from salespred_assets import i18n
from salespred_assets.app import auth, idempotency, opportunities, reasons as app_reasons
from salespred_assets.app.auth import LoginRefused, Sessions, Viewer
from salespred_assets.app.context import AppContext, Unavailable
from salespred_assets.app.models import (
    LoginIn,
    OpportunityChange,
    OpportunityIn,
    field_errors,
)
from salespred_assets.core.names import SELLER, Names
from salespred_assets.core.schema import CODE_SETS, DEFAULT_SCHEMA
from salespred_assets.mongo import catalogs
from salespred_assets.registry.model_store import NoModel

router = APIRouter(include_in_schema=False)
log = logging.getLogger("salespred.app")
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d(?:[T ][\d:.]+(?:Z|[+-]\d\d:?\d\d)?)?")


@pass_context
def _value(context: Any, item: Any) -> str:
    """A stored value in the page's locale: 48000.0 -> 48.000 (es) or 48,000 (en), an ISO date as the locale
    writes it (30 nov 2026 / Nov 30, 2026); other text as it is."""
    lang = context.get("lang", i18n.DEFAULT)
    if isinstance(item, str) and ISO_DATE.fullmatch(item):
        return i18n.date(lang, item)
    return i18n.value(lang, item)


templates.env.filters["num"] = _value
PAGE_SIZE = 20
FORM_FIELDS = ["cliente", "unidad_negocio", "tipos", "regiones", "territorios", "industrias", "lead_source",
               "acv", "contract_years", "tcv", "margen_ganancia", "fecha_cierre_oportunidad"]
DETAIL_FIELDS = ["numero_opportunidad", "cliente", "unidad_negocio", "tipos", "regiones", "territorios", "industrias",
                 "lead_source", "acv", "tcv", "margen_ganancia", "fecha_creacion_oportunidad",
                 "fecha_cierre_oportunidad", "fecha_cierre_planificada", "edad_oferta", "etapas", "numero_vendedor"]
STAGES = [*DEFAULT_SCHEMA.open, *DEFAULT_SCHEMA.won, *DEFAULT_SCHEMA.lost]
CODE_FIELDS = tuple(CODE_SETS)
CHANGE_FIELDS = ["etapas"]  # the detail page's form changes the stage (the API changes the rest too)


class LoginRequired(Exception):
    """The page needs a session; answered with a redirect to /login."""


class CsrfFailed(Exception):
    """A form came without this session's token (403)."""


def lang_of(request: Request) -> str:
    return i18n.pick(request.cookies.get(i18n.COOKIE))


def names_of(request: Request) -> Names:
    """The catalogs as this process holds them (read off the event loop by :func:`page_viewer`); never a read here."""
    ctx: AppContext | None = getattr(request.app.state, "ctx", None)
    try:
        return (catalogs.cached(ctx.mongo) if ctx else None) or Names()
    except Exception as exc:  # noqa: BLE001 - names help; a page without them still shows every code
        log.warning("catalog names unavailable: %s", exc)
        return Names()


class Naming:
    """What templates call to show a code: ``name(kind, code)``, ``stage(code)``, ``seller(number)``."""

    def __init__(self, names: Names, lang: str) -> None:
        self.names, self.lang = names, lang

    def name(self, kind: str, code: Any) -> str:
        if kind == DEFAULT_SCHEMA.stage:
            return self.stage(code)
        return self.names.display(kind, code, self.lang)

    def stage(self, code: Any) -> str:
        """The catalog's name of the stage, else the message catalog's (Ganada / Won), else the code."""
        return i18n.stage_name(self.lang, code, self.names)

    def seller(self, number: Any) -> str:
        return self.names.display(SELLER, number, self.lang)


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    lang = lang_of(request)
    naming = Naming(names_of(request), lang)
    base = {"t": i18n.Translator(lang), "has": lambda key: i18n.has(lang, key), "lang": lang,
            "languages": i18n.LANGUAGES, "viewer": None, "csrf": "",
            "here": page_address(request),
            "name": naming.name, "stage": naming.stage, "seller": naming.seller, "code_fields": CODE_FIELDS}
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def page_address(request: Request) -> str:
    """Where this page can be opened again (the language switch goes there): its own address for a GET; for
    a page answering a form (a POST), the page the form is on, since a link cannot send the form again."""
    if request.method in ("GET", "HEAD"):
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")
    path = request.url.path
    if path.startswith("/opportunities/") and path.endswith("/stage"):
        return path.removesuffix("/stage")
    return path if path in ("/opportunities/new", "/login") else "/"


def local_path(value: str | None, default: str) -> str:
    """Only same-site paths are followed after login or a language switch (no open redirects)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def page_viewer(request: Request) -> Viewer:
    ctx: AppContext = request.app.state.ctx
    session = ctx.sessions.read(request.cookies.get(Sessions.COOKIE))
    viewer = auth.load_viewer(ctx.mongo, session["sub"]) if session else None
    if session is None or viewer is None:
        raise LoginRequired()
    request.state.sid = session["sid"]
    request.state.viewer = viewer  # an error page later in this request shows it without reading again
    try:  # on this worker thread: the page then renders names from memory
        catalogs.names(ctx.mongo)
    except Exception as exc:  # noqa: BLE001 - the page shows codes instead of names
        log.warning("catalog names could not be read: %s", exc)
    return viewer


async def viewer_for(request: Request) -> Viewer:
    return await run_in_threadpool(page_viewer, request)


def page_context(request: Request, viewer: Viewer) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx
    return {"viewer": viewer, "csrf": ctx.sessions.csrf(request.state.sid)}


def optional_page_context(request: Request, *, redis_failed: bool = False) -> dict[str, Any]:
    """The header's viewer for an error page, when known without asking MongoDB (which may be what failed):
    the one this request already loaded, else from the session and the sellers in memory. With
    ``redis_failed`` the session is not read (Redis, which it checks, would make the reader wait again)."""
    ctx: AppContext = request.app.state.ctx
    known: Viewer | None = getattr(request.state, "viewer", None)
    if known is not None:
        return {"viewer": known, "csrf": ctx.sessions.csrf(request.state.sid)}
    if redis_failed:
        return {}
    try:
        session = ctx.sessions.read(request.cookies.get(Sessions.COOKIE))
        roster = auth.fresh_roster(ctx.mongo) if session else None
        viewer = roster.viewer(session["sub"]) if roster and session else None
        if viewer is None or session is None:
            return {}
        return {"viewer": viewer, "csrf": ctx.sessions.csrf(session["sid"])}
    except Exception:  # noqa: BLE001 - an error page must render even when Redis is what failed
        return {}


async def checked_form(request: Request) -> dict[str, str]:
    """The form's text fields, after checking this session's CSRF token."""
    ctx: AppContext = request.app.state.ctx
    fields = await text_form(request)
    if not ctx.sessions.csrf_ok(request.state.sid, fields.pop("csrf", None)):
        raise CsrfFailed()
    return fields


async def text_form(request: Request) -> dict[str, str]:
    """The form's text fields (file parts are ignored)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


# ---- log in / out, language ---------------------------------------------------------------------
@router.get("/")
async def home(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    logged_in = await run_in_threadpool(ctx.sessions.read, request.cookies.get(Sessions.COOKIE)) is not None
    return RedirectResponse("/opportunities/new" if logged_in else "/login", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str = "/opportunities/new") -> Response:
    return render(request, "login.html", next=local_path(next, "/opportunities/new"))


@router.post("/login")
async def login_submit(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    form = await text_form(request)
    target = local_path(form.pop("next", None), "/opportunities/new")
    try:  # like the API: a message per field, and unknown fields ($ or dotted keys too) are refused
        body = LoginIn.model_validate(form)
    except ValidationError as exc:
        errors = field_errors(list(exc.errors(include_url=False)), lang_of(request))
        return render(request, "login.html", 422, errors=errors, username=form.get("username", "")[:64], next=target)
    client = request.client.host if request.client else "unknown"
    try:
        number = await run_in_threadpool(auth.login, ctx.mongo, ctx.limiter, body.username, body.password, client)
    except LoginRefused as exc:
        if exc.retry_after:
            limited = render(request, "login.html", 429, error="login.limited", seconds=exc.retry_after,
                             username=body.username, next=target)
            limited.headers["Retry-After"] = str(exc.retry_after)
            return limited
        return render(request, "login.html", 401, error="login.wrong", username=body.username, next=target)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(Sessions.COOKIE, ctx.sessions.issue(number), max_age=ctx.sessions.ttl_s, httponly=True,
                        samesite="lax", secure=ctx.secure_cookies)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    await viewer_for(request)
    await checked_form(request)
    await run_in_threadpool(ctx.sessions.revoke, request.state.sid)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(Sessions.COOKIE)
    return response


@router.get("/lang/{code}")
async def switch_language(request: Request, code: str, next: str = "/") -> Response:
    response = RedirectResponse(local_path(next, "/"), status_code=303)
    response.set_cookie(i18n.COOKIE, i18n.pick(code), max_age=365 * 24 * 3600, samesite="lax")
    return response


# ---- capture ------------------------------------------------------------------------------------
def capture_page(request: Request, viewer: Viewer, status: int = 200, values: dict[str, str] | None = None,
                 errors: dict[str, str] | None = None, submission: str | None = None, alert: str = "") -> Response:
    """The capture form, with a one-time submission token for this session (a new one unless given)."""
    ctx: AppContext = request.app.state.ctx
    token = submission or idempotency.form_token(ctx.sessions.secret, request.state.sid)
    names, lang = names_of(request), lang_of(request)
    options = {kind: names.grouped(kind, codes, lang) for kind, codes in CODE_SETS.items()}
    return render(request, "capture.html", status, **page_context(request, viewer), options=options,
                  values=values or {}, errors=errors or {}, submission=token, alert=alert)


@router.get("/opportunities/new")
async def capture_form(request: Request) -> Response:
    viewer = await viewer_for(request)
    return capture_page(request, viewer)


@router.post("/opportunities/new")
async def capture_submit(request: Request) -> Response:
    ctx: AppContext = request.app.state.ctx
    viewer = await viewer_for(request)
    fields = await checked_form(request)
    submission = fields.pop("submission", None)
    # An empty box is a missing field; an unknown field is refused even when empty ("$gt=").
    data = {k: v for k, v in fields.items() if k not in FORM_FIELDS or v.strip() != ""}
    values = {k: v[:64] for k, v in fields.items() if k in FORM_FIELDS}
    lang = lang_of(request)
    try:
        body = OpportunityIn.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(list(exc.errors(include_url=False)), lang)
        key = idempotency.form_key(ctx.sessions.secret, request.state.sid, submission)
        return capture_page(request, viewer, 422, values, errors, submission if key else None)
    # The form's one-time token: a second submission of the same form (a double click, a reload, a retry
    # after a network error) captures nothing and shows the opportunity the first one saved.
    key = idempotency.form_key(ctx.sessions.secret, request.state.sid, submission)
    if key is None:
        return capture_page(request, viewer, 422, values, {"submission": i18n.translate(lang, "err.form_token")})

    def work() -> tuple[int, dict[str, Any]]:
        return 201, {"numero_opportunidad": opportunities.capture(ctx, viewer, body).number}

    digest = idempotency.fingerprint(body.model_dump(mode="json"))
    try:
        outcome = await run_in_threadpool(idempotency.run_once, ctx.mongo.db, viewer.number, key, digest, work)
    except (Unavailable, ConnectionFailure, RedisError) as exc:
        # Nothing was saved: the seller gets the form back with what they typed, and the same token to retry.
        service = exc.service if isinstance(exc, Unavailable) else "Redis" if isinstance(exc, RedisError) \
            else "MongoDB"
        log.warning("capture refused, %s unavailable: %s", service, str(exc).splitlines()[0][:200] if str(exc) else "")
        refused = capture_page(request, viewer, 503, values, {}, submission,
                               alert=i18n.translate(lang, "error.capture_unavailable"))
        refused.headers["Retry-After"] = "5"
        return refused
    except idempotency.KeyReused:
        return capture_page(request, viewer, 422, values, {"submission": i18n.translate(lang, "err.form_reused")})
    except idempotency.InProgress:
        return capture_page(request, viewer, 409, values, {"submission": i18n.translate(lang, "err.form_pending")},
                            submission)
    number = str(outcome.body["numero_opportunidad"])
    return RedirectResponse(f"/opportunities/{quote(number)}?saved=1", status_code=303)


# ---- look up ------------------------------------------------------------------------------------
@router.get("/opportunities")
async def opportunity_list(request: Request, number: str = "", page: int = 0) -> Response:
    ctx: AppContext = request.app.state.ctx
    viewer = await viewer_for(request)
    if number.strip():
        return RedirectResponse(f"/opportunities/{quote(number.strip()[:64], safe='')}", status_code=303)
    page = max(0, min(page, 50_000))
    items, total = await run_in_threadpool(opportunities.listing, ctx, viewer, PAGE_SIZE, page * PAGE_SIZE)
    return render(request, "list.html", **page_context(request, viewer), items=items, total=total, page=page,
                  more=(page + 1) * PAGE_SIZE < total)


@router.get("/opportunities/{number}")
async def opportunity_detail(request: Request, number: str, saved: int = 0, changed: int = 0) -> Response:
    viewer = await viewer_for(request)
    return await detail_page(request, viewer, number, saved=bool(saved), changed=bool(changed))


@router.post("/opportunities/{number}/stage")
async def stage_submit(request: Request, number: str) -> Response:
    ctx: AppContext = request.app.state.ctx
    viewer = await viewer_for(request)
    fields = await checked_form(request)
    data = {k: v for k, v in fields.items() if k not in CHANGE_FIELDS or v.strip() != ""}
    lang = lang_of(request)
    # Like the API, unknown fields are refused; unlike it, the form always names a stage.
    errors = {k[:64]: i18n.translate(lang, "err.extra") for k in data if k not in CHANGE_FIELDS}
    if "etapas" not in data:
        errors["etapas"] = i18n.translate(lang, "err.missing")
    try:
        body = OpportunityChange.model_validate({k: v for k, v in data.items() if k in CHANGE_FIELDS})
    except ValidationError as exc:
        errors.update(field_errors(list(exc.errors(include_url=False)), lang))
    if errors:
        return await detail_page(request, viewer, number, status=422, errors=errors)
    await run_in_threadpool(opportunities.change, ctx, viewer, number, body)
    return RedirectResponse(f"/opportunities/{quote(number, safe='')}?changed=1", status_code=303)


async def detail_page(request: Request, viewer: Viewer, number: str, status: int = 200, **extra: Any) -> Response:
    """An opportunity, its prediction and reasons, and (while it is open) the form that moves its stage."""
    ctx: AppContext = request.app.state.ctx
    doc = await run_in_threadpool(opportunities.visible, ctx, viewer, number)
    prediction, source, problem = None, None, None
    try:
        prediction, source = await run_in_threadpool(opportunities.prediction, ctx, viewer, number)
    except (Unavailable, NoModel, ValueError) as exc:
        # A plain sentence for the seller; what an operator should do goes to the log.
        no_model = isinstance(exc, NoModel) or (isinstance(exc, Unavailable) and exc.service == "model")
        log.warning("no prediction for %s: %s", number, exc.detail if isinstance(exc, Unavailable) else exc)
        problem = "page.no_model" if no_model else "page.prediction_unavailable"
    lang = lang_of(request)
    reasons = app_reasons.render((prediction or {}).get("reasons"), lang, names_of(request).display)
    schema = await run_in_threadpool(ctx.mongo.schema)
    changeable = schema == DEFAULT_SCHEMA and doc.get(DEFAULT_SCHEMA.stage) not in opportunities.CLOSED_STAGES
    context = {"saved": False, "changed": False, "errors": {}, **extra}
    return render(request, "detail.html", status, **page_context(request, viewer), number=number, doc=doc,
                  fields=[f for f in DETAIL_FIELDS if f in doc], prediction=prediction, source=source,
                  problem=problem, reasons=reasons, closed_on=doc.get(schema.close) if schema.close else None,
                  stages=STAGES if changeable else [], **context)
