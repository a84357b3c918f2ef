"""A real browser on a phone-sized screen: log in, capture an opportunity, see its prediction.

Debian's chromium driven by Playwright (no browser download) against the app under a real uvicorn
server. The screenshot lands in salespred_tests/artifacts/ (not committed).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from salespred_assets import i18n
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import RunningServer

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium, "
                    "or scripts/install-system-deps.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield browser
        browser.close()


def test_phone_log_in_capture_and_see_the_prediction(browser, app, app_db):
    ARTIFACTS.mkdir(exist_ok=True)
    with RunningServer(app) as server:
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
        page = context.new_page()
        page.goto(f"{server.url}/opportunities/new")
        assert page.url.startswith(f"{server.url}/login")  # not logged in yet
        page.get_by_label("Usuario").fill("luis")
        page.get_by_label("Contraseña").fill(app_db.passwords["luis"])
        page.get_by_role("button", name="Ingresar").click()
        page.wait_for_url(f"{server.url}/opportunities/new")

        page.get_by_label("Código de cliente").fill("CL-00042")
        for name, code in (("unidad_negocio", "BU-04"), ("tipos", "TY-00"), ("regiones", "RE-02"),
                           ("territorios", "TE-09"), ("industrias", "IN-23"), ("lead_source", "LS-06")):
            page.locator(f"select#{name}").select_option(code)
        page.get_by_label("ACV").fill("48000")
        page.get_by_label("Años").fill("2")
        page.get_by_label("Margen de ganancia").fill("0.18")
        page.get_by_label("Fecha de cierre").fill((dt.date.today() + dt.timedelta(days=60)).isoformat())
        page.screenshot(path=str(ARTIFACTS / "capture-form-phone.png"), full_page=True)
        page.get_by_role("button", name="Guardar y predecir").click()

        page.wait_for_url(re.compile(r".*/opportunities/OP-\d+\?saved=1$"))
        verdict = page.get_by_test_id("prediction")
        verdict.wait_for()
        assert re.fullmatch(r"Probablemente (ganada|perdida)", page.locator(".headline").inner_text().strip())
        assert re.fullmatch(r"\d+\s?%", page.get_by_test_id("probability").inner_text().strip())
        assert page.get_by_test_id("grade").inner_text().strip() in {"A", "B", "C", "D"}
        # Phone-width layout: nothing wider than the screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        sentences = page.locator(".reasons .sentence").all_inner_texts()
        assert sentences and all(s.endswith(".") for s in sentences)
        assert all(re.fullmatch(r"[+\u2212]\d+ puntos?", p) for p in page.locator(".reasons .points").all_inner_texts())
        shot = ARTIFACTS / "prediction-phone.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        number = re.search(r"/opportunities/(OP-\d+)", page.url).group(1)
        stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
        assert stored["numero_vendedor"] == "NV-1" and stored["tcv"] == 96000.0

        page.get_by_role("link", name="EN", exact=True).click()
        page.wait_for_load_state()
        assert re.fullmatch(r"Likely (won|lost)", page.locator(".headline").inner_text().strip())

        # The seller closes it as won: the page now shows the outcome, never a probability or a grade.
        page.locator("select#etapas").select_option("Won")
        page.get_by_role("button", name="Save the stage").click()
        page.wait_for_url(re.compile(rf".*/opportunities/{number}\?changed=1$"))
        today = dt.date.today()  # the close date: the day it was closed
        headlines = (("EN", f"Won on {i18n.date('en', today)}"), ("ES", f"Ganada el {i18n.date('es', today)}"))
        for lang, headline in headlines:  # the page is in English at first
            if lang == "ES":
                page.get_by_role("link", name=lang, exact=True).click()
                page.wait_for_load_state()
            page.get_by_test_id("outcome").wait_for()
            assert page.locator(".headline").inner_text().strip() == headline
            assert page.get_by_test_id("probability").count() == 0 and page.get_by_test_id("grade").count() == 0
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / f"closed-won-phone-{lang.lower()}.png"), full_page=True)
        assert app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number})["etapas"] == "Won"
        context.close()
