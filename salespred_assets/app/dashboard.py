"""The managers' sales dashboard at ``/dashboard``: the five Power BI tiles and the model-quality trend.

Figures come from the SQL reporting views (``SALESPRED_SQL_URL``, or the embedded SQLite file), read
on each request; the page is the one the ``sales_dashboard`` asset writes, styled by ``/dashboard.css``
so that the app's Content-Security-Policy (no inline styles) holds. Sellers who are not managers get 403.
Tests (or a deployment) may set ``app.state.sql`` to a ``SqlResource``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from salespred_assets import dashboard
from salespred_assets.app import pages
from salespred_assets.resources import database_resources
from salespred_assets.sql.resource import SqlResource
from salespred_assets.sql.views import ViewError

router = APIRouter(include_in_schema=False)
MESSAGES = {
    "es": {"forbidden": "El tablero de ventas es para gerentes.", "back": "← Oportunidades",
           "no_views": "El tablero aún no tiene datos: materialice los activos de reporting (salespred demo --once).",
           "sql_down": "La base de datos de reportes no responde; intente de nuevo en unos segundos."},
    "en": {"forbidden": "The sales dashboard is for managers.", "back": "← Opportunities",
           "no_views": "The dashboard has no data yet: materialise the reporting assets (salespred demo --once).",
           "sql_down": "The reporting database does not answer; try again in a few seconds."},
}


def _sql(request: Request) -> SqlResource:
    sql = getattr(request.app.state, "sql", None)
    if sql is None:  # once per app, not per request: the environment's reporting database
        sql = request.app.state.sql = database_resources()[1]
    return sql


def _messages(lang: str) -> dict[str, str]:
    return MESSAGES.get(lang, MESSAGES["en"])


@router.get("/dashboard")
async def sales_dashboard(request: Request) -> Response:
    viewer = await pages.viewer_for(request)  # not logged in: redirected to /login
    lang = pages.lang_of(request)
    text = _messages(lang)
    if viewer.role != "manager":
        return pages.render(request, "error.html", 403, **pages.page_context(request, viewer),
                            message=text["forbidden"])
    try:
        # The seller x stage matrix shows the manager's team; the other tiles are company-wide.
        html = await run_in_threadpool(dashboard.render_dashboard, _sql(request).engine, lang, sellers=viewer.team,
                                       stylesheet="/dashboard.css", back=("/opportunities", text["back"]))
    except ViewError:
        return pages.render(request, "error.html", 503, **pages.page_context(request, viewer), message=text["no_views"])
    except SQLAlchemyError:
        return pages.render(request, "error.html", 503, **pages.page_context(request, viewer), message=text["sql_down"])
    return Response(html, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


@router.get("/dashboard.css")
async def dashboard_css() -> Response:
    return Response(dashboard.CSS, media_type="text/css; charset=utf-8", headers={"Cache-Control": "max-age=3600"})
