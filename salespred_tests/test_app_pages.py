"""The seller app's pages against real SecantusDB and Redis, and the `salespred serve` command."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import AppDB, new_client, valid_payload
from salespred_tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration


def page_login(client, app_db: AppDB, username: str) -> None:
    response = client.post("/login", data={"username": username, "password": app_db.passwords[username]},
                           follow_redirects=False)
    assert response.status_code == 303 and "salespred_session" in response.cookies


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def submission_of(html: str) -> str:
    """The capture form's one-time token."""
    return re.search(r'name="submission" value="([^"]+)"', html).group(1)


def test_pages_are_spanish_by_default_and_switch_to_english(client):
    login = client.get("/login")
    assert login.status_code == 200 and '<html lang="es">' in login.text and "Contraseña" in login.text
    switched = client.get("/lang/en?next=/login", follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/login"
    english = client.get("/login")
    assert '<html lang="en">' in english.text and "Password" in english.text and "Contraseña" not in english.text
    assert client.get("/lang/en?next=https://evil.example/", follow_redirects=False).headers["location"] == "/"
    client.get("/lang/es")


def test_pages_need_a_login(client):
    for path in ("/opportunities/new", "/opportunities", "/opportunities/OP-00001"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == f"/login?next={path}"
    wrong = client.post("/login", data={"username": "ana", "password": "nope"})
    assert wrong.status_code == 401 and "Usuario o contraseña incorrectos" in wrong.text
    client.cookies.set("salespred_session", "eyJzdWIiOiJOVi0wIn0.forged.sig")
    assert client.get("/opportunities/new", follow_redirects=False).status_code == 303


def test_log_in_capture_and_see_the_prediction(client, app_db):
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    page_login(client, app_db, "luis")
    assert client.get("/", follow_redirects=False).headers["location"] == "/opportunities/new"
    form = client.get("/opportunities/new")
    assert form.status_code == 200 and "Ingrese los datos" in form.text and 'value="Luis Gómez"' in form.text
    for name, codes in CODE_SETS.items():  # each code field is a dropdown of its known codes (shown by name)
        select = re.search(rf'<select id="{name}".*?</select>', form.text, re.DOTALL).group(0)
        assert sorted(re.findall(r'<option value="([^"]+)"', select)) == codes
    before = app_db.mongo.db[OPPORTUNITIES].count_documents({})
    saved = client.post("/opportunities/new", data={**valid_payload(tcv=""), "contract_years": "2",
                                                    "csrf": csrf_of(form.text), "submission": submission_of(form.text)},
                           follow_redirects=False)
    assert saved.status_code == 303, saved.text
    number = re.fullmatch(r"/opportunities/(OP-\d+)\?saved=1", saved.headers["location"]).group(1)
    stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
    assert stored["numero_vendedor"] == "NV-1" and stored["tcv"] == 96000.0
    assert app_db.mongo.db[OPPORTUNITIES].count_documents({}) == before + 1
    detail = client.get(saved.headers["location"])
    assert detail.status_code == 200 and f"Oportunidad guardada con el número {number}" in detail.text
    assert re.search(r"Probablemente (ganada|perdida)", detail.text)
    assert re.search(r'data-testid="probability">\d+(\xa0)?%', detail.text) and 'data-testid="grade">' in detail.text
    assert "Predicción del último cálculo guardado." in detail.text  # written by the capture
    listing = client.get("/opportunities")
    assert number in listing.text and "Mis oportunidades" in listing.text
    lookup = client.get(f"/opportunities?number={number}", follow_redirects=False)
    assert lookup.headers["location"] == f"/opportunities/{number}"


def test_bad_form_input_is_explained_per_field_and_nothing_is_written(client, app_db):
    page_login(client, app_db, "luis")
    csrf = csrf_of(client.get("/opportunities/new").text)
    before = app_db.mongo.db[OPPORTUNITIES].count_documents({})
    bad = {**valid_payload(), "cliente": "X-1", "acv": "abc", "margen_ganancia": "2", "tcv": "",
           "fecha_cierre_oportunidad": "2001-01-01", "unidad_negocio": "", "csrf": csrf}
    spanish = client.post("/opportunities/new", data=bad)
    assert spanish.status_code == 422
    for message in ("Debe ser CL- seguido de dígitos", "Debe ser un número.", "Debe ser menor o igual que 1",
                    "Debe ser hoy", "Obligatorio."):
        assert message in spanish.text, message
    assert 'value="X-1"' in spanish.text  # what the seller typed is kept
    client.get("/lang/en")
    english = client.post("/opportunities/new", data=bad)
    assert english.status_code == 422 and "Must be CL- followed by digits" in english.text
    client.get("/lang/es")
    assert app_db.mongo.db[OPPORTUNITIES].count_documents({}) == before


def test_forms_need_the_sessions_csrf_token(client, app_db):
    page_login(client, app_db, "luis")
    before = app_db.mongo.db[OPPORTUNITIES].count_documents({})
    assert client.post("/opportunities/new", data=valid_payload()).status_code == 403
    assert client.post("/opportunities/new", data={**valid_payload(), "csrf": "0" * 40}).status_code == 403
    assert app_db.mongo.db[OPPORTUNITIES].count_documents({}) == before
    assert client.post("/logout", data={}).status_code == 403


def test_logging_out_revokes_the_session_cookie(app, app_db):
    with new_client(app) as client:
        page_login(client, app_db, "ana")
        cookie = client.cookies["salespred_session"]
        csrf = csrf_of(client.get("/opportunities/new").text)
        assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    with new_client(app) as replay:  # someone who kept a copy of the cookie
        replay.cookies.set("salespred_session", cookie)
        response = replay.get("/opportunities/new", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_pages_hide_other_sellers_opportunities(client, app_db):
    page_login(client, app_db, "luis")
    of_jorge = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-3"})["numero_opportunidad"]
    for number in (of_jorge, "OP-99999999"):
        response = client.get(f"/opportunities/{number}")
        assert response.status_code == 404 and "No existe esa oportunidad o no tiene acceso a ella" in response.text
    assert of_jorge not in client.get("/opportunities").text


def test_serve_command_runs_the_app(mongo_server, redis_url, tmp_path):
    port = free_port()
    env = {**os.environ, "SALESPRED_HOME": str(tmp_path), "SALESPRED_MONGO_URI": mongo_server.uri,
           "SALESPRED_REDIS_URL": redis_url}
    env.pop("SALESPRED_SECRET_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "salespred_assets.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 60), proc.stdout.read1().decode() if proc.poll() is not None else "not answering"
        assert "Ingresar" in httpx.get(f"http://127.0.0.1:{port}/login").text
        key = Path(tmp_path) / "secret_key"  # generated once, private
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) >= 32
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
