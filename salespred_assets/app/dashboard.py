"""The managers' sales dashboard at ``/dashboard``: the five Power BI tiles and the model-quality trend.

Figures come from the SQL reporting views (``SALESPRED_SQL_URL``, or the embedded SQLite file), read
on each request; the body is the one the ``sales_dashboard`` asset writes, styled by ``/dashboard.css``
so that the app's Content-Security-Policy (no inline styles) holds, under the app's header (language switch,
menu, log-out). Sellers who are not managers get 403.
Tests (or a deployment) may set ``app.state.sql`` to a ``SqlResource``.
"""

from __future__ import annotations

import logging

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
log = logging.getLogger(__name__)
def _sql(request: Request) -> SqlResource:
    sql = getattr(request.app.state, "sql", None)
    if sql is None:  # once per app, not per request: the environment's reporting database
        sql = request.app.state.sql = database_resources()[1]
    return sql


@router.get("/dashboard")
async def sales_dashboard(request: Request) -> Response:
    viewer = await pages.viewer_for(request)  # not logged in: redirected to /login
    lang = pages.lang_of(request)
    context = pages.page_context(request, viewer)
    if viewer.role != "manager":
        return pages.render(request, "error.html", 403, **context, message="dashboard.forbidden", code=403)
    try:
        # The seller x stage matrix shows the manager's team; the other tiles are company-wide.
        figs = await run_in_threadpool(dashboard.figures, _sql(request).engine, viewer.team)
    except ViewError as exc:
        log.warning("the dashboard has no reporting views yet (%s): materialise the reporting assets "
                    "(salespred demo --once, or the reporting group in the Dagster UI)", exc)
        return pages.render(request, "error.html", 503, **context, message="dashboard.no_views", code=503)
    except SQLAlchemyError as exc:
        log.warning("the reporting database does not answer: %s", str(exc).splitlines()[0][:200])
        return pages.render(request, "error.html", 503, **context, message="dashboard.sql_down", code=503)
    body = dashboard.render_body(figs, lang, pages.names_of(request))  # regions and stages by name
    response = pages.render(request, "dashboard.html", **context, body=body)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/dashboard.css")
async def dashboard_css() -> Response:
    return Response(dashboard.CSS, media_type="text/css; charset=utf-8", headers={"Cache-Control": "max-age=3600"})
