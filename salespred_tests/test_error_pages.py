"""Errors in the reader's language: pages answer pages (with the app's header), the API answers JSON whose
``detail`` stays stable and whose ``message`` follows ``?lang=`` or ``Accept-Language``."""

from __future__ import annotations

import logging
import re
import time
import uuid

import pytest

from salespred_assets import i18n
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


def test_a_capture_refused_with_503_keeps_what_was_typed_even_long_after_the_last_read(tmp_path, redis_url,
                                                                                         monkeypatch):
    from salespred_assets.app import auth
    from salespred_assets.mongo import catalogs
    from salespred_tests.app_fixtures import valid_payload
    from salespred_tests.conftest import MongoServer

    # The same memos with a shorter life, so that "long after" is a fraction of a second here.
    monkeypatch.setattr(auth._rosters, "ttl_s", 0.3)
    monkeypatch.setattr(catalogs._cache, "ttl_s", 0.3)
    server = MongoServer(storage=str(tmp_path / "mongo"))
    server.start()
    try:
        mongo = MongoResource(uri=server.uri, database="capture_fault", timeout_ms=800)
        redis = RedisResource(url=redis_url, namespace=f"tcap{uuid.uuid4().hex[:10]}")
        loading.seed_synthetic(mongo, 40, seed=5, as_of=AS_OF)  # with the demo catalogs
        passwords = add_sellers(mongo)
        industry = catalogs.names(mongo).display("industrias", "IN-23", "es")
        assert industry != "IN-23"
        with new_client(create_app(mongo, redis, SECRET, login_limits=LIMITS)) as client:
            client.post("/login", data={"username": "luis", "password": passwords["luis"]})
            form = client.get("/opportunities/new").text
            submission = re.search(r'name="submission" value="([^"]+)"', form).group(1)
            time.sleep(0.5)  # the sellers and the catalogs read above are no longer fresh
            server.stop()
            typed = {**valid_payload(cliente="CL-07777", acv=51234.5), "csrf": _csrf(form), "submission": submission}
            refused = client.post("/opportunities/new", data=typed)
            assert refused.status_code == 503 and refused.headers["Retry-After"]
            assert 'data-testid="capture-refused"' in refused.text  # the form, not the generic error page
            assert 'value="CL-07777"' in refused.text and 'value="51234.5"' in refused.text
            assert f'value="{submission}"' in refused.text  # the same token: sending it again is safe
            assert f'<option value="IN-23" selected>{industry}</option>' in refused.text  # names, not codes
            assert "Luis Gómez" in refused.text and "MongoDB" not in refused.text  # no server names for sellers
            assert 'href="/lang/en?next=/opportunities/new"' in refused.text  # the switch opens the form's page
    finally:
        server.stop()


def test_a_page_answering_a_form_switches_language_to_the_page_the_form_is_on(app, app_db):
    number = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-1"})["numero_opportunidad"]
    with new_client(app) as client:
        _log_in(client, app_db)
        page = client.get(f"/opportunities/{number}")
        refused = client.post(f"/opportunities/{number}/stage", data={"csrf": _csrf(page.text), "etapas": "nope"})
        assert refused.status_code == 422
        assert f'href="/lang/en?next=/opportunities/{number}"' in refused.text  # not the POST-only /stage


def test_a_server_down_reads_without_server_names_and_only_a_refused_write_says_nothing_was_saved(client, app_db):
    headers = login_token(client, app_db, "luis")  # a token in the Redis both apps share
    dead = MongoResource(uri="mongodb://127.0.0.1:1/?directConnection=true", database="none", timeout_ms=300)
    with new_client(create_app(dead, app_db.redis, SECRET, login_limits=LIMITS)) as down:
        login = down.post("/login", data={"username": "luis", "password": "whatever"})
        assert login.status_code == 503 and "no se guardó nada" in login.text  # a form was refused
        assert "MongoDB" not in login.text
        read = down.get("/api/opportunities?lang=es", headers=headers)
        assert read.status_code == 503 and "MongoDB" in read.json()["detail"]  # for the operator
        # A read saves nothing anyway: no "nothing was saved".
        assert read.json()["message"] == i18n.translate("es", "error.unavailable")
        assert "no se guardó" not in read.json()["message"]
        write = down.post("/api/auth/token?lang=en", json={"username": "luis", "password": "x"})
        assert write.status_code == 503 and "nothing was saved" in write.json()["message"]
        assert "MongoDB" not in write.json()["message"]


def test_a_bug_answers_the_localised_500_page_or_the_apis_error_and_logs_the_traceback(app, app_db, monkeypatch):
    from salespred_assets.app import opportunities

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in listing")

    monkeypatch.setattr(opportunities, "listing", broken)
    records = _Records()
    logger = logging.getLogger("salespred.app")
    logger.addHandler(records)
    try:
        with new_client(app, raise_server_exceptions=False) as client:
            _log_in(client, app_db)
            page = client.get("/opportunities")
            assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
            assert "Algo salió mal" in page.text and 'action="/logout"' in page.text  # the app's header
            assert "Internal Server Error" not in page.text and "a bug in listing" not in page.text
            assert "content-security-policy" in page.headers and page.headers["x-frame-options"] == "DENY"
            headers = login_token(client, app_db, "luis")
            api = client.get("/api/opportunities", headers={**headers, "Accept-Language": "en"})
            assert api.status_code == 500 and api.json()["detail"] == "internal server error"
            assert api.json()["message"] == "The request could not be handled. Try again."
            assert api.headers["Content-Language"] == "en"
    finally:
        logger.removeHandler(records)
    assert any("unexpected error on GET /opportunities" in m for m in records.messages), records.messages


def test_the_apis_field_errors_are_in_the_same_language_as_its_message(client, app_db):
    headers = login_token(client, app_db, "luis")
    spanish = client.post("/api/opportunities?lang=es", json={"acv": "x"}, headers=headers)
    english = client.post("/api/opportunities", json={"acv": "x"}, headers={**headers, "Accept-Language": "en"})
    assert spanish.status_code == english.status_code == 422
    assert spanish.json()["errors"].keys() == english.json()["errors"].keys()
    assert spanish.json()["errors"]["acv"] != english.json()["errors"]["acv"]  # not English under a Spanish message
    assert spanish.json()["detail"] == english.json()["detail"]  # stable English for integrations
    assert spanish.headers["Content-Language"] == "es" and english.headers["Content-Language"] == "en"
    assert spanish.headers["Vary"] == "Accept-Language"


def test_an_error_page_shows_the_viewer_already_known_without_waiting_for_redis_again(app, app_db):
    import socket

    hole = socket.socket()  # accepts connections (the backlog) and never answers: a Redis that hangs
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        hung = RedisResource(url=f"redis://127.0.0.1:{hole.getsockname()[1]}/0", namespace=app_db.redis.namespace,
                             timeout_s=1.5)
        with new_client(app) as healthy:
            _log_in(healthy, app_db)
            cookies = dict(healthy.cookies)
        with new_client(create_app(app_db.mongo, hung, SECRET, login_limits=LIMITS)) as client:
            client.cookies.update(cookies)
            started = time.monotonic()
            missing = client.get("/opportunities/OP-99999999")  # the session's check waits for Redis once
            elapsed = time.monotonic() - started
        assert missing.status_code == 404 and 'action="/logout"' in missing.text  # the header knows the seller
        assert elapsed < 2.6, f"{elapsed:.1f} s: the error page read the session from Redis again"
    finally:
        hole.close()
