"""Errors in the reader's language: pages answer pages (with the app's header), the API answers JSON whose
``detail`` stays stable and whose ``message`` follows ``?lang=`` or ``Accept-Language``."""

from __future__ import annotations

import logging
import re
import uuid

import pytest

from salespred_assets.app.context import MAX_BODY_BYTES
from salespred_assets.app.main import create_app
from salespred_assets.mongo.resource import OPPORTUNITIES, MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import LIMITS, SECRET, add_sellers, login_token, new_client
from salespred_tests.helpers import AS_OF

pytestmark = pytest.mark.integration


def _log_in(client, app_db, username: str = "luis") -> None:
    client.post("/login", data={"username": username, "password": app_db.passwords[username]})


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_the_api_says_its_errors_in_the_callers_language(client, app_db):
    headers = login_token(client, app_db, "luis")
    url = "/api/opportunities/OP-99999999"
    spanish = client.get(url, headers=headers)  # no preference: Spanish, the sellers' language
    english = client.get(url, headers={**headers, "Accept-Language": "en-GB,en;q=0.9"})
    asked = client.get(url + "?lang=en", headers={**headers, "Accept-Language": "es"})
    assert {r.status_code for r in (spanish, english, asked)} == {404}
    assert spanish.json()["detail"] == english.json()["detail"] == asked.json()["detail"]  # stable for machines
    assert spanish.json()["message"] == "No existe esa oportunidad o no tiene acceso a ella."
    assert "does not exist" in english.json()["message"] and asked.json()["message"] == english.json()["message"]

    invalid = client.post("/api/opportunities", json={"acv": "x"}, headers={**headers, "Accept-Language": "en"})
    assert invalid.status_code == 422 and invalid.json()["errors"] and "Check the data" in invalid.json()["message"]
    wrong = client.post("/api/auth/token?lang=es", json={"username": "luis", "password": "not it"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "Usuario o contraseña incorrectos."
    big = client.post("/api/opportunities?lang=en", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                      headers={**headers, "Content-Type": "application/json"})
    assert big.status_code == 413 and big.headers["content-type"].startswith("application/json")
    assert "64 KiB" in big.json()["message"]


def test_a_form_too_large_is_a_page_in_the_readers_language_with_the_header(app, app_db):
    with new_client(app) as client:
        _log_in(client, app_db)
        form = client.get("/opportunities/new")
        client.cookies.set("lang", "en")
        refused = client.post("/opportunities/new", data={"csrf": _csrf(form.text), "cliente": "x" * 70_000})
        assert refused.status_code == 413 and refused.headers["content-type"].startswith("text/html")
        assert "Form too large" in refused.text and "64 KiB" in refused.text
        assert 'action="/logout"' in refused.text and 'href="/lang/es' in refused.text  # the app's header
        assert '"detail"' not in refused.text


def test_an_unknown_page_is_a_page_in_the_readers_language(app, app_db):
    with new_client(app) as client:
        anonymous = client.get("/no-such-page")
        assert anonymous.status_code == 404 and "Página no encontrada" in anonymous.text
        assert 'href="/lang/en' in anonymous.text and 'action="/logout"' not in anonymous.text
        _log_in(client, app_db)
        client.cookies.set("lang", "en")
        missing = client.get("/opportunities/OP-99999999")
        assert missing.status_code == 404 and "does not exist" in missing.text and 'action="/logout"' in missing.text
        bad_query = client.get("/opportunities?page=abc")  # a page's bad query is a page too, not JSON
        assert bad_query.status_code == 422 and bad_query.headers["content-type"].startswith("text/html")
        assert "The address has a value that is not valid" in bad_query.text


def test_the_csrf_refusal_is_a_page(app, app_db):
    with new_client(app) as client:
        _log_in(client, app_db)
        refused = client.post("/logout", data={"csrf": "not this one"})
        assert refused.status_code == 403 and "Acceso denegado" in refused.text
        assert "El formulario caducó" in refused.text


@pytest.fixture(scope="module")
def bare_app(mongo_server, redis_url):
    """Sellers and opportunities but no model yet."""
    mongo = MongoResource(uri=mongo_server.uri, database=f"bare_{uuid.uuid4().hex[:12]}", timeout_ms=3000)
    redis = RedisResource(url=redis_url, namespace=f"tbare{uuid.uuid4().hex[:10]}", timeout_s=2.0)
    loading.seed_synthetic(mongo, 40, seed=7, as_of=AS_OF)
    passwords = add_sellers(mongo)
    yield create_app(mongo, redis, SECRET, login_limits=LIMITS), mongo, passwords
    mongo.client.drop_database(mongo.database)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_with_no_model_a_seller_reads_a_sentence_and_the_instruction_goes_to_the_log(bare_app):
    app, mongo, passwords = bare_app
    number = mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-1"})["numero_opportunidad"]
    records = _Records()
    logger = logging.getLogger("salespred.app")
    logger.addHandler(records)
    try:
        with new_client(app) as client:
            client.post("/login", data={"username": "luis", "password": passwords["luis"]})
            for lang, sentence in (("es", "Las predicciones todavía no están disponibles"),
                                   ("en", "Predictions are not available yet")):
                client.cookies.set("lang", lang)
                page = client.get(f"/opportunities/{number}")
                assert page.status_code == 200 and sentence in page.text
                assert "materialise" not in page.text and "salespred demo" not in page.text
            token = client.post("/api/auth/token", json={"username": "luis", "password": passwords["luis"]})
            api = client.get(f"/api/opportunities/{number}/prediction?lang=en",
                             headers={"Authorization": f"Bearer {token.json()['access_token']}"})
            assert api.status_code == 503 and api.json()["message"] == "Predictions are not available yet."
    finally:
        logger.removeHandler(records)
    assert any("salespred demo --once" in m for m in records.messages), records.messages
