"""The managers' /dashboard in a real browser (Debian's chromium): every figure on the page equals the views.

The seller app runs under uvicorn with sellers in MongoDB and the reporting tables in a SQLite file;
a manager logs in and opens /dashboard, a seller gets 403. The screenshot lands in
salespred_tests/artifacts/sales-dashboard.png (not committed).
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from salespred_assets import i18n
from salespred_assets.app.main import create_app
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.sql import views
from salespred_assets.sql.resource import SqlResource
from salespred_tests import reporting_fixtures as rf
from salespred_tests.app_fixtures import (
    LIMITS,
    SECRET,
    SELLERS,
    RunningServer,
    add_sellers,
    new_client,
)
from salespred_tests.test_app_browser import ARTIFACTS, browser  # noqa: F401 - the chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.integration]
DESKTOP = {"width": 1366, "height": 900}


@pytest.fixture(scope="module")
def dashboard_app(mongo_server, redis_url, tmp_path_factory):
    mongo = MongoResource(uri=mongo_server.uri, database=f"dash_{uuid.uuid4().hex[:12]}", timeout_ms=3000)
    redis = RedisResource(url=redis_url, namespace=f"tdash{uuid.uuid4().hex[:10]}", timeout_s=2.0)
    passwords = add_sellers(mongo)
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'report.db'}")
    rf.reporting_database(engine)
    app = create_app(mongo, redis, SECRET, login_limits=LIMITS)
    app.state.sql = SqlResource(url=str(engine.url))
    yield app, passwords, engine
    mongo.client.drop_database(mongo.database)


def _expected_figures(engine: sa.Engine, team: set[str]) -> dict[str, float]:
    """What the page must show, read from the views with plain pandas (not the dashboard's code); the
    seller x stage matrix holds only the manager's ``team``."""
    want: dict[str, float] = {}
    for r in views.read(engine, views.CLOSED_BY_RESULT).itertuples():
        want[f"closed.{r.result}.tcv"] = r.tcv
        want[f"closed.{r.result}.opportunities"] = r.opportunities
    pipeline = views.read(engine, views.OPEN_PIPELINE)
    want["pipeline.expected_tcv"] = pipeline["expected_tcv"].sum()
    for r in pipeline.itertuples():
        want[f"pipeline.horizon.{r.horizon_order}.expected_tcv"] = r.expected_tcv
        want[f"pipeline.horizon.{r.horizon_order}.opportunities"] = r.opportunities
    for r in views.read(engine, views.EXPECTED_BY_CLOSE_MONTH).itertuples():
        want[f"by_month.{r.close_year:04d}-{r.close_month:02d}.expected_tcv"] = r.expected_tcv
    for r in views.read(engine, views.EXPECTED_BY_REGION).itertuples():
        want[f"by_region.{r.region}.expected_tcv"] = r.expected_tcv
    matrix = views.read(engine, views.SELLER_STAGE_MATRIX)
    matrix = matrix[matrix["seller"].isin(team)]
    for r in matrix.itertuples():
        want[f"matrix.{r.seller}.{r.stage}.opportunities"] = r.opportunities
        want[f"matrix.{r.seller}.{r.stage}.tcv"] = r.tcv
    for seller, rows in matrix.groupby("seller"):
        want[f"matrix.{seller}.opportunities"] = rows["opportunities"].sum()
    want["matrix.total.tcv"] = matrix["tcv"].sum()
    for r in views.read(engine, views.MODEL_QUALITY).itertuples():
        want[f"quality.{r.model_version}.roc_auc"] = r.roc_auc
    return want


def test_a_seller_who_is_not_a_manager_gets_403(dashboard_app):
    app, passwords, _ = dashboard_app
    with new_client(app) as client:
        assert client.get("/dashboard", follow_redirects=False).headers["location"].startswith("/login")
        client.post("/login", data={"username": "luis", "password": passwords["luis"]})
        refused = client.get("/dashboard")
        assert refused.status_code == 403 and "gerentes" in refused.text
        assert "data-figure" not in refused.text and 'href="/dashboard"' not in refused.text  # no menu entry


def test_a_manager_sees_the_views_figures_in_chromium(browser, dashboard_app):  # noqa: F811
    app, passwords, engine = dashboard_app
    team = {"NV-0"} | {number for number, *_, boss in SELLERS if boss == "NV-0"}  # Ana and her reports
    want = _expected_figures(engine, team)
    others = {r.seller for r in views.read(engine, views.SELLER_STAGE_MATRIX).itertuples()} - team
    assert others, "the fixture should give sellers outside Ana's team some open opportunities"
    ARTIFACTS.mkdir(exist_ok=True)
    with RunningServer(app) as server:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        refused: list[str] = []  # what the Content-Security-Policy blocked, if anything
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{server.url}/login")
        page.get_by_label("Usuario").fill("ana")
        page.get_by_label("Contraseña").fill(passwords["ana"])
        page.get_by_role("button", name="Ingresar").click()
        page.get_by_role("link", name="Tablero de ventas").click()  # the managers' menu entry
        page.wait_for_url(f"{server.url}/dashboard")
        page.locator("#tile-quality svg[role=img]").wait_for()
        assert page.locator("h1").inner_text() == "Predicción de ventas"

        shown = dict(page.eval_on_selector_all(
            "[data-figure]", "els => els.map(e => [e.dataset.figure, Number(e.dataset.value)])"))
        missing = sorted(set(want) - set(shown))
        assert not missing, f"figures the page does not show: {missing[:10]}"
        assert not [k for k in shown if k.split(".")[1:2] and k.split(".")[1] in others], "another team's figures"
        for key, value in want.items():
            assert shown[key] == pytest.approx(float(value), rel=1e-9, abs=1e-9), key
        # The headline as a person reads it, and styles loaded despite the CSP (the tiles form a grid).
        assert page.locator('[data-figure="pipeline.expected_tcv"]').inner_text() == i18n.compact(
            "es", want["pipeline.expected_tcv"])
        assert page.evaluate("getComputedStyle(document.querySelector('.dash .tiles')).display") == "grid"
        # Under the app's header: the language switch and the log-out of the menu.
        assert page.get_by_role("link", name="EN", exact=True).count() == 1
        assert page.get_by_role("button", name="Salir").count() == 1
        assert refused == []
        shot = ARTIFACTS / "sales-dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        context.close()
