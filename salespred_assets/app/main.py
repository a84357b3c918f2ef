"""The seller app: server-rendered pages for phones, and the same features as a REST API under /api.

``salespred serve`` runs :func:`create_app` with uvicorn. Configuration comes from the environment
(``SALESPRED_MONGO_URI``, ``SALESPRED_REDIS_URL``, ``SALESPRED_SECRET_KEY``; embedded services when
unset and local). Tests pass their own resources.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymongo.errors
import redis as redis_lib
import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from salespred_assets import i18n, settings
from salespred_assets.app import api, auth, dashboard, fastlane, health, idempotency, pages
from salespred_assets.app.context import (
    MAX_BODY_BYTES,
    AppContext,
    CaptureRefused,
    ChangeRefused,
    NotFound,
    Unavailable,
)
from salespred_assets.app.models import ErrorOut, field_errors
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.resources import database_resources

log = logging.getLogger("salespred.app")
HERE = Path(__file__).resolve().parent
DESCRIPTION = """Sellers log in, capture opportunities and see at once whether each is likely won or lost, with
the probability, a 1-99 score, a grade and the top reasons; they move them through their stages until
they are won or lost. Log in at `POST /api/auth/token`, then send
`Authorization: Bearer <token>`. Field names are those of the MongoDB documents (Spanish).

Errors: `401` no or bad token; `404` unknown or not yours (the same answer); `409` a change the
opportunity cannot take (it is closed, or changed meanwhile); `422` bad input, with a message for each
field in `errors`; `429` too many failed logins (see `Retry-After`); `503` MongoDB or Redis unavailable,
nothing was written. Every error has the same body: `{"detail": "<one line>", "message": "<for a person>",
"errors": {"<field>": "<message>"}}` (`errors` only for 422); `message` is in the language of `?lang=` or
`Accept-Language` (Spanish by default), `detail` stays in English for integrations. Retry a capture safely
with an `Idempotency-Key` header (see `POST /api/opportunities`)."""


def create_app(mongo: MongoResource | None = None, redis: RedisResource | None = None, secret: str | None = None,
               *, token_ttl_s: int = 8 * 3600, session_ttl_s: int = 12 * 3600,
               login_limits: tuple[int, int, int] = (5, 20, 900)) -> FastAPI:
    """The app. ``login_limits`` = (failures per user, failures per client address, window in seconds)."""
    settings.load_environment()
    production = settings.environment() == "production"
    secret = secret or auth.secret_key()  # first: in production a missing key stops here
    if mongo is None or redis is None:  # the one way resources come from the environment, with the app's timeouts
        configured_mongo, _, configured_redis = database_resources(mongo_timeout_ms=3000, redis_timeout_s=2.0,
                                                                           pin_embedded=True)
        mongo, redis = mongo or configured_mongo, redis or configured_redis
    per_user, per_client, window = login_limits
    ctx = AppContext(
        mongo=mongo, redis=redis,
        sessions=auth.Sessions(secret, redis, ttl_s=session_ttl_s),
        tokens=auth.TokenStore(redis, ttl_s=token_ttl_s),
        limiter=auth.LoginLimiter(redis, per_user=per_user, per_client=per_client, window_s=window),
        secure_cookies=production,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            mongo.ensure_indexes()
            idempotency.ensure_indexes(mongo.db)
        except pymongo.errors.PyMongoError as exc:
            log.warning("could not ensure MongoDB indexes at start (%s); requests will answer 503 until it is up",
                        str(exc).splitlines()[0][:200])
        yield

    app = SellerApp(title="salespred seller app", version="1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # Swagger UI from the swagger-ui-bundle wheel, not a CDN: /docs works offline.
    app.mount("/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="salespred seller app API",
                                   swagger_js_url="/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/swagger/swagger-ui.css",
                                   swagger_favicon_url="/swagger/favicon-32x32.png")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(dashboard.router)  # /dashboard for managers (reporting views)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: the process answers (no database is asked; /healthz is the readiness check)."""
        return fastlane.LIVE  # GET is answered by the fast lane; this documents it and answers the rest

    @app.get("/healthz", tags=["health"])
    def healthz(request: Request) -> JSONResponse:
        """Readiness: `ok`, `degraded` (Redis down) or `unavailable` (MongoDB down, 503). The servers'
        addresses, versions and round-trip times only with the operator's token in `X-Health-Token`."""
        body, code = health.report(mongo, redis, health.is_operator(request.headers.get(health.HEADER)))
        return JSONResponse(body, status_code=code)

    _install_handlers(app)
    app.openapi = lambda: exact_openapi(app)  # type: ignore[method-assign]
    app.add_middleware(HttpGuard)
    app.lane = fastlane.FastLane(ctx, HttpGuard.headers_for("/api"))
    return app


def serve_app() -> FastAPI:
    """The app as ``salespred serve`` runs it, in each worker process."""
    app = create_app()
    # The imports (pandas, scikit-learn, Dagster) leave a large heap that never changes; without this, every
    # full collection walks it and stalls all requests in flight for a tenth of a second or more.
    gc.collect()
    gc.freeze()
    return app


class SellerApp(FastAPI):
    """FastAPI with the fast lane in front: what the lane answers never reaches routing or middleware."""

    lane: fastlane.FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.lane is not None and await self.lane.answer(scope, send):
            return
        await super().__call__(scope, receive, send)


# ---- the OpenAPI document ---------------------------------------------------------------------------------
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
_STATUS_TEXT = {"413": f"The request body is larger than {MAX_BODY_BYTES} bytes; nothing was read",
                "422": "Bad input: a message for each field in `errors`; nothing was written",
                "503": "MongoDB or Redis is unavailable; nothing was written (see `Retry-After`)"}


def exact_openapi(app: FastAPI) -> dict:
    """FastAPI's document, made to say what the app answers: one error body (``ErrorOut``) for every error,
    413 wherever a body is read, 422 wherever input is validated and 503 wherever a server is asked."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                # An optional header is absent or text: never JSON null, which FastAPI's anyOf would allow.
                options = parameter["schema"].get("anyOf", [])
                if parameter["in"] == "header" and {"type": "null"} in options and len(options) == 2:
                    kept = {k: v for k, v in parameter["schema"].items() if k != "anyOf"}
                    parameter["schema"] = {**next(o for o in options if o != {"type": "null"}), **kept}
            responses = operation["responses"]
            if "requestBody" in operation:
                responses.setdefault("413", {"description": _STATUS_TEXT["413"]})
            if operation.get("parameters") or "requestBody" in operation:
                responses.setdefault("422", {"description": _STATUS_TEXT["422"]})
            if (path.startswith("/api/") and path != "/api/codes") or path == "/healthz":
                responses.setdefault("503", {"description": _STATUS_TEXT["503"]})
            for status, response in responses.items():
                if status.startswith(("4", "5")) and path != "/healthz":
                    response.update(_ERROR)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, which the app never answers
        schemas.pop(name, None)
    schemas["ErrorOut"] = ErrorOut.model_json_schema()
    app.openapi_schema = spec
    return spec


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route answers on this request's path (Starlette's 405 names only the first route's)."""
    methods = {method for method in _METHODS if any(
        route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)}
    return sorted(methods | {"OPTIONS"}) if methods else []


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


# ---- errors -----------------------------------------------------------------------------------------
def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api") or request.url.path in ("/healthz", "/livez", "/openapi.json")


def api_lang(request: Request) -> str:
    """The API's language for texts: ``?lang=``, then ``Accept-Language``, then the default."""
    return i18n.negotiate(request.query_params.get("lang"), request.headers.get("accept-language"))


def api_error(request: Request, status: int, detail: str, key: str | None = None,
              headers: dict[str, str] | None = None, errors: dict[str, str] | None = None,
              params: dict[str, str] | None = None) -> JSONResponse:
    """The one error body: ``detail`` (English, stable for integrations) and ``message`` (the same news for a
    person, in the caller's language); ``errors`` only for 422."""
    lang = api_lang(request)
    body: dict[str, object] = {"detail": detail, "message": _message(lang, status, key, params or {})}
    if errors is not None:
        body["errors"] = errors
    # Like every answer with text for a person: its language, and that it follows Accept-Language.
    return JSONResponse(body, status_code=status,
                        headers={**(headers or {}), "Content-Language": lang, "Vary": "Accept-Language"})


def _message(lang: str, status: int, key: str | None, params: dict[str, str]) -> str:
    if key and i18n.has(lang, key):
        return i18n.translate(lang, key, **params)
    generic = f"error.status.{status}"
    return i18n.translate(lang, generic if i18n.has(lang, generic) else "error.generic")


async def _error(request: Request, status: int, detail: str, page_key: str, headers: dict[str, str] | None = None,
                 **params: str) -> Response:
    if _is_api(request):
        return api_error(request, status, detail, page_key, headers, params=params)
    texts: dict[str, Any] = dict(params)  # the message's placeholders, never error_page's own options
    return await error_page(request, status, page_key, headers, **texts)


async def error_page(request: Request, status: int, key: str, headers: dict[str, str] | None = None,
                     *, redis_failed: bool = False, **params: Any) -> Response:
    """An error as a page in the reader's language, with the app's header (and its menu when logged in)."""
    # Redis may be slow to fail: when it is what failed, the session (which it checks) is not read again.
    header = await run_in_threadpool(lambda: pages.optional_page_context(request, redis_failed=redis_failed))
    response = pages.render(request, "error.html", status, **header, message=key, params=params, code=status)
    response.headers.update(headers or {})
    return response


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = field_errors(list(exc.errors()), api_lang(request))  # for a person, in their language
        english = field_errors(list(exc.errors()))  # detail stays English, stable for integrations
        summary = "invalid input: " + "; ".join(f"{k}: {v}" for k, v in list(english.items())[:5])
        if not _is_api(request):  # a page's query (?page=abc): a page, not JSON
            return await error_page(request, 422, "error.bad_request")
        return api_error(request, 422, summary, "api.invalid", errors=errors)

    @app.exception_handler(pymongo.errors.ConnectionFailure)
    async def mongo_down(request: Request, exc: pymongo.errors.ConnectionFailure) -> Response:
        log.warning("MongoDB unavailable: %s", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return await _error(request, 503, "MongoDB is unavailable; nothing was written. Try again shortly.",
                      _unavailable_key(request), {"Retry-After": "5"})

    @app.exception_handler(redis_lib.RedisError)
    async def redis_down(request: Request, exc: redis_lib.RedisError) -> Response:
        log.warning("Redis unavailable: %s", exc)
        if not _is_api(request):  # the page's header does not read the session again from the Redis that failed
            return await error_page(request, 503, _unavailable_key(request), {"Retry-After": "5"}, redis_failed=True)
        return api_error(request, 503, "Redis is unavailable. Try again shortly.", _unavailable_key(request),
                         {"Retry-After": "5"})

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> Response:
        if exc.service == "model":  # the developer's instruction goes to the log, a plain sentence to people
            log.warning("no model to score with: %s", exc.detail)
            return await _error(request, 503, str(exc), "api.no_model" if _is_api(request) else "page.no_model",
                          {"Retry-After": "5"})
        return await _error(request, 503, str(exc), _unavailable_key(request), {"Retry-After": "5"})

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return await _error(request, 404, "no such opportunity, or not yours to see", "error.not_found")

    @app.exception_handler(CaptureRefused)
    async def refused(request: Request, exc: CaptureRefused) -> Response:
        log.warning("capture refused: %s", exc)  # what to do is for the operator; sellers get a sentence
        return await _error(request, 409, str(exc), "page.capture_refused")

    @app.exception_handler(ChangeRefused)
    async def change_refused(request: Request, exc: ChangeRefused) -> Response:
        return await _error(request, 409, exc.detail, exc.key, None, **exc.params)

    @app.exception_handler(pages.LoginRequired)
    async def login_required(request: Request, exc: pages.LoginRequired) -> Response:
        target = pages.local_path(request.url.path, "/opportunities/new")
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @app.exception_handler(pages.CsrfFailed)
    async def csrf_failed(request: Request, exc: pages.CsrfFailed) -> Response:
        return await _error(request, 403, "the form's CSRF token is missing or wrong", "error.csrf")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> Response:
        return await too_large_response(request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug: the traceback goes to the log; the reader gets the app's 500 in their language.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        try:
            response = await _error(request, 500, "internal server error", "error.generic")
        except Exception:  # the error page itself failed: a last, plain answer in both languages
            log.exception("the 500 page could not be rendered")
            response = PlainTextResponse("Algo salió mal. Something went wrong.", status_code=500)
        # Starlette answers this outside the middleware: the security headers are added here.
        for name, value in HttpGuard.headers_for(request.url.path):
            response.headers[name.decode()] = value.decode()
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            allow = ", ".join(allowed_methods(app, request.scope))
            if request.method == "OPTIONS":  # what this path answers, for every route on it
                return Response(status_code=204, headers={"Allow": allow})
            return await _error(request, 405, f"method {request.method} is not allowed here; allowed: {allow}",
                          "error.method", {"Allow": allow})
        if _is_api(request):
            key = "api.login_wrong" if str(exc.detail).startswith("wrong username") else _API_KEYS.get(exc.status_code)
            return api_error(request, exc.status_code, str(exc.detail), key,
                             dict(exc.headers or {}), params={"seconds": (exc.headers or {}).get("Retry-After", "")})
        if exc.status_code == 404:
            return await error_page(request, 404, "error.page_not_found")
        return await error_page(request, exc.status_code, f"error.status.{exc.status_code}", dict(exc.headers or {}))


def _unavailable_key(request: Request) -> str:
    """What a person reads when a server is down: no server names; "nothing was saved" only for a refused write."""
    return "error.unavailable" if request.method in ("GET", "HEAD") else "error.unavailable_write"


_API_KEYS = {401: "api.unauthorized", 409: "api.conflict", 429: "api.login_limited", 404: "error.page_not_found"}


async def too_large_response(request: Request) -> Response:
    """413: JSON for the API, a page in the reader's language for a form."""
    detail = f"the request body is larger than {MAX_BODY_BYTES} bytes"
    size = f"{i18n.number(pages.lang_of(request), MAX_BODY_BYTES // 1024)} KiB"
    if _is_api(request):
        return api_error(request, 413, detail, "error.too_large", params={"size": size})
    return await error_page(request, 413, "error.too_large", size=size)


# ---- middleware ---------------------------------------------------------------------------------------
class BodyTooLarge(Exception):
    pass


class HttpGuard:
    """Every HTTP response gets security headers (no sniffing, no framing, no referrers leaving the site;
    pages load only their own files), and request bodies over ``MAX_BODY_BYTES``, declared or streamed,
    are refused before anything parses them."""

    CSP = b"default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"same-origin"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @classmethod
    def headers_for(cls, path: str) -> list[tuple[bytes, bytes]]:
        docs = path.startswith(("/docs", "/swagger"))  # Swagger UI starts itself with an inline script
        return [*cls.HEADERS, *([] if docs else [(b"content-security-policy", cls.CSP)])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers_for(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            response = await too_large_response(Request(scope))
            await response(scope, receive, with_headers)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, with_headers)
