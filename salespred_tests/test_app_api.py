"""The seller app's REST API against real SecantusDB and Redis: login, tokens, capture, look-ups."""

from __future__ import annotations

import datetime as dt
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.synthetic import generate
from salespred_assets.mongo.resource import COUNTERS, OPPORTUNITIES, OPPORTUNITY_COUNTER
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import AppDB, login_token, new_client, valid_payload
from salespred_tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _counter(app_db: AppDB) -> int:
    doc = app_db.mongo.db[COUNTERS].find_one({"_id": OPPORTUNITY_COUNTER})
    return int(doc["seq"]) if doc else 0


def _seller_doc(app_db: AppDB, seller: str) -> str:
    return app_db.mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": seller})["numero_opportunidad"]


# ---- login, tokens, roles --------------------------------------------------------------------------
def test_login_gives_a_token_and_the_role_from_the_title(client, app_db):
    manager = login_token(client, app_db, "ana")
    me = client.get("/api/me", headers=manager).json()
    assert me["role"] == "manager" and me["team"] == ["NV-0", "NV-1", "NV-4"]  # NV-1 and NV-4 report to NV-0
    seller = client.get("/api/me", headers=login_token(client, app_db, "luis")).json()
    assert seller["role"] == "seller" and seller["team"] == ["NV-1"]
    assert "password" not in json.dumps(me) and "$argon2" not in json.dumps(me)


def test_wrong_password_and_unknown_user_get_the_same_answer(client, app_db):
    wrong = client.post("/api/auth/token", json={"username": "ana", "password": "not-it"})
    unknown = client.post("/api/auth/token", json={"username": "nobody", "password": "not-it"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer made-up"}).status_code == 401


def test_a_revoked_token_stops_working(client, app_db):
    headers = login_token(client, app_db, "luis")
    assert client.get("/api/me", headers=headers).status_code == 200
    assert client.delete("/api/auth/token", headers=headers).status_code == 204
    assert client.get("/api/me", headers=headers).status_code == 401
    assert client.get("/api/opportunities", headers=headers).status_code == 401


def test_tokens_expire(app_db):
    from salespred_assets.app.main import create_app
    from salespred_tests.app_fixtures import SECRET

    short = create_app(app_db.mongo, app_db.redis, SECRET, token_ttl_s=1)
    with new_client(short) as client:
        headers = login_token(client, app_db, "luis")
        assert client.get("/api/me", headers=headers).status_code == 200
        assert wait_for(lambda: client.get("/api/me", headers=headers).status_code == 401, timeout=10, interval=0.3)


def test_failed_logins_are_limited_per_user(app, app_db):
    attacker, other = new_client(app), new_client(app)
    for _ in range(3):  # the test app allows 3 failures per user
        assert attacker.post("/api/auth/token", json={"username": "jorge", "password": "guess"}).status_code == 401
    right = {"username": "jorge", "password": app_db.passwords["jorge"]}
    limited = attacker.post("/api/auth/token", json=right)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert other.post("/api/auth/token", json=right).status_code == 429  # the user is limited, from anywhere
    assert login_token(attacker, app_db, "marta")  # other users from the same address are not


def test_failed_logins_are_limited_per_client_address(app, app_db):
    attacker, elsewhere = new_client(app), new_client(app)
    for i in range(8):  # the test app allows 8 failures per address
        assert attacker.post("/api/auth/token", json={"username": f"x{i}", "password": "guess"}).status_code == 401
    right = {"username": "sofia", "password": app_db.passwords["sofia"]}
    assert attacker.post("/api/auth/token", json=right).status_code == 429
    assert elsewhere.post("/api/auth/token", json=right).status_code == 200


# ---- capture -----------------------------------------------------------------------------------------
def test_capture_stores_the_pipeline_shape_and_predicts_at_once(client, app_db):
    headers = login_token(client, app_db, "luis")
    before = app_db.mongo.db[OPPORTUNITIES].count_documents({})
    response = client.post("/api/opportunities", json=valid_payload(cliente="CL-42"), headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    number = body["numero_opportunidad"]
    assert re.fullmatch(r"OP-\d{5,}", number) and response.headers["Location"] == f"/api/opportunities/{number}"
    assert app_db.mongo.db[OPPORTUNITIES].count_documents({}) == before + 1

    stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number}, {"_id": 0})
    reference = next(generate(1, seed=1))[0]  # the synthetic generator writes the original shape
    # ... plus the close date as typed, beside the one that will change (the generator writes no such field).
    assert [k for k in stored if k != "fecha_cierre_planificada"] == list(reference)
    assert list(stored).index("fecha_cierre_planificada") == list(stored).index("fecha_cierre_oportunidad") + 1
    assert {k: type(v) for k, v in stored.items() if k in reference} == {k: type(v) for k, v in reference.items()}
    today = dt.date.today()
    close = dt.date.fromisoformat(valid_payload()["fecha_cierre_oportunidad"])
    assert stored == {**body["opportunity"]}
    assert (stored["etapas"], stored["numero_vendedor"], stored["cliente"]) == ("S1", "NV-1", "CL-00042")
    assert stored["fecha_creacion_oportunidad"] == today.isoformat()
    assert stored["fecha_cierre_oportunidad"] == stored["fecha_cierre_planificada"] == close.isoformat()
    assert stored["edad_oferta"] == 0.0  # its age so far, not the planned duration
    assert validate(records_frame([stored], app_db.mongo.schema()), app_db.mongo.schema()).quarantine.empty

    prediction = body["prediction"]
    assert body["prediction_source"] == "model" and body["prediction_error"] is None
    assert 0.0 <= prediction["probability"] <= 1.0 and 1 <= prediction["score"] <= 99
    assert prediction["grade"] in {"A", "B", "C", "D"} and prediction["model_version"] == app_db.model.version
    assert prediction["factors_for"] or prediction["factors_against"]
    # The capture wrote the prediction to the cache: the validate endpoint reads it from there.
    looked_up = client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()
    assert looked_up["source"] == "cache" and looked_up["prediction"]["probability"] == prediction["probability"]


def test_contract_years_give_tcv_and_are_not_stored(client, app_db):
    headers = login_token(client, app_db, "luis")
    payload = valid_payload(acv=1000.5, tcv=..., contract_years=3)
    body = client.post("/api/opportunities", json=payload, headers=headers).json()
    stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": body["numero_opportunidad"]})
    assert stored["tcv"] == pytest.approx(3001.5) and "contract_years" not in stored


def test_numbers_come_from_the_counter_and_are_never_reused(client, app_db):
    headers = login_token(client, app_db, "luis")
    app_db.mongo.raise_counter(OPPORTUNITY_COUNTER, 99_998)
    first = client.post("/api/opportunities", json=valid_payload(), headers=headers).json()["numero_opportunidad"]
    assert first == "OP-99999"
    # Delete the newest: "highest plus one" would hand its number out again; the counter does not.
    app_db.mongo.db[OPPORTUNITIES].delete_one({"numero_opportunidad": first})
    with ThreadPoolExecutor(6) as pool:
        numbers = list(pool.map(
            lambda _: client.post("/api/opportunities", json=valid_payload(),
                                  headers=headers).json()["numero_opportunidad"],
            range(6)))
    assert len(set(numbers)) == 6 and first not in numbers
    assert sorted(numbers) == [f"OP-{n}" for n in range(100_000, 100_006)]  # wider than 5 digits when needed


BAD = [
    ("cliente", {"cliente": "42"}), ("cliente", {"cliente": "CL-"}), ("cliente", {"cliente": "cl-12x"}),
    ("cliente", {"cliente": 42}), ("cliente", {"cliente": {"$ne": ""}}), ("cliente", {"cliente": "CL-" + "9" * 5000}),
    ("unidad_negocio", {"unidad_negocio": "BU-99"}), ("tipos", {"tipos": ""}), ("regiones", {"regiones": None}),
    ("territorios", {"territorios": ["TE-01"]}), ("industrias", {"industrias": "IN-65"}),
    ("lead_source", {"lead_source": ...}),
    ("acv", {"acv": -1}), ("acv", {"acv": "48000"}), ("acv", {"acv": True}), ("acv", {"acv": ...}),
    ("acv", {"acv": 1e13}), ("acv", {"acv": {"$gt": 0}}),
    ("tcv", {"tcv": 10.0}), ("tcv", {"tcv": ...}), ("tcv", {"tcv": -5}),
    ("contract_years", {"tcv": ..., "contract_years": 0}), ("contract_years", {"tcv": ..., "contract_years": 2.5}),
    ("margen_ganancia", {"margen_ganancia": 1.5}), ("margen_ganancia", {"margen_ganancia": -0.1}),
    ("fecha_cierre_oportunidad", {"fecha_cierre_oportunidad": "2020-01-01"}),
    ("fecha_cierre_oportunidad", {"fecha_cierre_oportunidad": "31/12/2030"}),
    ("fecha_cierre_oportunidad", {"fecha_cierre_oportunidad": 1900000000}),
    ("fecha_cierre_oportunidad", {"fecha_cierre_oportunidad": "2999-01-01"}),
    ("numero_vendedor", {"numero_vendedor": "NV-3"}), ("etapas", {"etapas": "Won"}),
    ("numero_opportunidad", {"numero_opportunidad": "OP-00001"}),
    ("$where", {"$where": "sleep(1000)"}), ("a.b", {"a.b": 1}),
]


def test_bad_input_gets_a_message_per_field_and_writes_nothing(client, app_db):
    headers = login_token(client, app_db, "luis")
    before, counter = app_db.mongo.db[OPPORTUNITIES].count_documents({}), _counter(app_db)
    for field, change in BAD:
        response = client.post("/api/opportunities", json=valid_payload(**change), headers=headers)
        assert response.status_code == 422, (field, change, response.text)
        errors = response.json()["errors"]
        assert list(errors) == [field[:64]], (field, errors)
        assert errors[field[:64]] and not errors[field[:64]].startswith("Input should")  # our own messages
    for raw in (b"", b"not json", b"[1, 2]", b'{"acv": NaN}', b'{"acv": Infinity}', b"null"):
        response = client.post("/api/opportunities", content=raw,
                               headers={**headers, "Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["errors"], raw
    nan = client.post("/api/opportunities?lang=en", headers={**headers, "Content-Type": "application/json"},
                      content=json.dumps(valid_payload(), allow_nan=True).replace("48000.0", "NaN"))
    assert nan.status_code == 422 and "finite" in nan.json()["errors"]["acv"]
    huge = client.post("/api/opportunities", content=b"{" + b" " * 70_000 + b"}", headers=headers)
    assert huge.status_code == 413
    assert app_db.mongo.db[OPPORTUNITIES].count_documents({}) == before
    assert _counter(app_db) == counter  # validation happens before a number is taken


def test_login_refuses_operator_objects(client):
    response = client.post("/api/auth/token", json={"username": {"$ne": ""}, "password": {"$ne": ""}})
    assert response.status_code == 422 and set(response.json()["errors"]) == {"username", "password"}


# ---- look-ups and visibility ---------------------------------------------------------------------------
def test_other_sellers_and_unknown_opportunities_are_404(client, app_db):
    luis, ana, marta = (login_token(client, app_db, u) for u in ("luis", "ana", "marta"))
    of_jorge, of_luis = _seller_doc(app_db, "NV-3"), _seller_doc(app_db, "NV-1")
    for path in (f"/api/opportunities/{of_jorge}", f"/api/opportunities/{of_jorge}/prediction"):
        assert client.get(path, headers=luis).status_code == 404
        assert client.get(path, headers=marta).status_code == 200  # NV-3 reports to the VP
    for number in ("OP-99999999", "OP-1$ne", "%7B%22%24ne%22%3A1%7D", "OP 1", "%2E%2E"):
        for suffix in ("", "/prediction"):
            response = client.get(f"/api/opportunities/{number}{suffix}", headers=luis)
            assert response.status_code == 404 and response.json()["detail"] == \
                client.get(f"/api/opportunities/{of_jorge}{suffix}", headers=luis).json()["detail"]
    assert client.get(f"/api/opportunities/{of_luis}", headers=ana).status_code == 200  # the manager's team
    assert client.get(f"/api/opportunities/{of_luis}", headers=marta).status_code == 404
    # A cached prediction is no way around it: cache the other seller's prediction, then ask again.
    assert client.get(f"/api/opportunities/{of_jorge}/prediction", headers=marta).status_code == 200
    assert client.get(f"/api/opportunities/{of_jorge}/prediction", headers=luis).status_code == 404


def test_listing_shows_only_what_the_seller_may_see(client, app_db):
    luis, ana = login_token(client, app_db, "luis"), login_token(client, app_db, "ana")
    mine = client.get("/api/opportunities?limit=100", headers=luis).json()
    assert mine["total"] == app_db.mongo.db[OPPORTUNITIES].count_documents({"numero_vendedor": "NV-1"})
    assert {o["numero_vendedor"] for o in mine["items"]} == {"NV-1"}
    team = client.get("/api/opportunities?limit=100", headers=ana).json()
    assert {o["numero_vendedor"] for o in team["items"]} == {"NV-0", "NV-1", "NV-4"}
    assert client.get("/api/opportunities?limit=1000", headers=luis).status_code == 422


def test_prediction_falls_back_to_the_model_and_fills_the_cache(client, app_db):
    headers = login_token(client, app_db, "luis")
    number = _seller_doc(app_db, "NV-1")
    app_db.redis.cache().delete(number)
    first = client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()
    again = client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()
    assert first["source"] == "model" and again["source"] == "cache"
    assert first["prediction"]["probability"] == again["prediction"]["probability"]


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/auth/token", "/api/opportunities", "/api/opportunities/{number}",
            "/api/opportunities/{number}/prediction", "/api/me", "/api/codes"} <= set(spec["paths"])
    body = spec["paths"]["/api/opportunities"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False and "cliente" in body["required"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert not any(p.startswith("/opportunities") or p == "/login" for p in spec["paths"])  # pages stay out
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # Swagger UI is served by the app itself, so /docs works on a machine with no internet.
    scripts = re.findall(r'<script src="([^"]+)"', docs.text)
    assert scripts and all(src.startswith("/swagger/") for src in scripts)
    assert all(client.get(src).status_code == 200 for src in scripts)


def test_openapi_declares_the_catalogs_bounds_and_one_error_shape(client, app_db):
    from salespred_assets.core.schema import CODE_SETS

    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/opportunities"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {name: body["properties"][name]["enum"] for name in CODE_SETS} == CODE_SETS  # the validators' lists
    close = body["properties"]["fecha_cierre_oportunidad"]
    assert close["format"] == "date" and close["x-earliest"] == "today" and "today" in close["description"]
    assert body["properties"]["acv"]["maximum"] == 1e12 and body["properties"]["margen_ganancia"]["maximum"] == 1
    key = next(p for p in post["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and "24 hours" in key["description"] and key["schema"]["type"] == "string"
    # One error body everywhere, FastAPI's own 422 shape nowhere.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] in "45" and path != "/healthz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (path, method, status)
    headers = login_token(client, app_db, "luis")
    invalid = client.post("/api/opportunities", json={"acv": "12"}, headers=headers)
    assert invalid.status_code == 422 and isinstance(invalid.json()["detail"], str)
    assert isinstance(invalid.json()["errors"], dict)
    # OPTIONS and 405 name every method of the path, not only the first route's.
    for path, methods in (("/api/opportunities", "GET, OPTIONS, POST"), ("/api/auth/token", "DELETE, OPTIONS, POST"),
                          ("/api/opportunities/OP-00001", "GET, OPTIONS, PATCH")):
        options = client.options(path)
        assert options.status_code == 204 and options.headers["allow"] == methods
        refused = client.put(path, json={})
        assert refused.status_code == 405 and refused.headers["allow"] == methods
        assert isinstance(refused.json()["detail"], str)


# ---- faults --------------------------------------------------------------------------------------------
def test_redis_down_predictions_come_from_the_model_and_page_login_works(app_db):
    from salespred_assets.app.main import create_app
    from salespred_assets.redis_cache.resource import RedisResource
    from salespred_tests.app_fixtures import SECRET

    dead = RedisResource(url="redis://127.0.0.1:1/0", namespace=app_db.redis.namespace, timeout_s=0.3)
    with new_client(create_app(app_db.mongo, dead, SECRET)) as client:
        # Tokens live in Redis: the API says so; the pages' signed-cookie login still works.
        api = client.post("/api/auth/token", json={"username": "luis", "password": app_db.passwords["luis"]})
        assert api.status_code == 503 and "Redis" in api.json()["detail"]
        page = client.post("/login", data={"username": "luis", "password": app_db.passwords["luis"]},
                           follow_redirects=False)
        assert page.status_code == 303 and "salespred_session" in page.cookies
        form = client.get("/opportunities/new").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        submission = re.search(r'name="submission" value="([^"]+)"', form).group(1)
        saved = client.post("/opportunities/new", data={**valid_payload(), "csrf": csrf, "submission": submission},
                            follow_redirects=False)
        assert saved.status_code == 303
        number = saved.headers["location"].split("/")[-1].split("?")[0]
        detail = client.get(f"/opportunities/{number}")
        assert detail.status_code == 200 and 'data-testid="probability"' in detail.text
        assert "Predicción calculada ahora con el modelo actual" in detail.text  # from the model, not the cache


def test_mongo_down_capture_gives_503_and_writes_nothing(tmp_path, redis_url):
    import uuid

    from salespred_assets.app.main import create_app
    from salespred_assets.mongo.resource import MongoResource
    from salespred_assets.redis_cache.resource import RedisResource
    from salespred_tests.app_fixtures import SECRET, add_sellers
    from salespred_tests.conftest import MongoServer

    server = MongoServer(storage=str(tmp_path / "mongo"))
    server.start()
    try:
        mongo = MongoResource(uri=server.uri, database="app_fault", timeout_ms=800)
        redis = RedisResource(url=redis_url, namespace=f"tapp{uuid.uuid4().hex[:10]}")
        passwords = add_sellers(mongo)
        with new_client(create_app(mongo, redis, SECRET)) as client:
            login = client.post("/api/auth/token", json={"username": "luis", "password": passwords["luis"]})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            server.stop()
            down = client.post("/api/opportunities", json=valid_payload(), headers=headers)
            assert down.status_code == 503 and "MongoDB" in down.json()["detail"] and down.headers["Retry-After"]
            assert client.get("/api/opportunities", headers=headers).status_code == 503
            server.start()
            assert mongo.db[OPPORTUNITIES].count_documents({}) == 0  # nothing half-written
            up = client.post("/api/opportunities", json=valid_payload(), headers=headers)
            assert up.status_code == 201 and mongo.db[OPPORTUNITIES].count_documents({}) == 1
            # No model has been trained in this database: the capture stands and says why there is no prediction.
            assert up.json()["prediction"] is None and up.json()["prediction_error"] == "no model has been trained yet"
            assert up.json()["prediction_message"] == "Las predicciones todavía no están disponibles."  # for a person
            later = client.get(f"/api/opportunities/{up.json()['numero_opportunidad']}/prediction", headers=headers)
            assert later.status_code == 503 and "no model" in later.json()["detail"]
    finally:
        server.stop()


# ---- the fast lane ---------------------------------------------------------------------------------------
def _comparable(response) -> tuple[int, dict, dict]:
    """Status, JSON and headers; the length follows the JSON's formatting, so it is checked, not compared."""
    assert int(response.headers["content-length"]) == len(response.content)
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server", "content-length")}
    return response.status_code, response.json(), headers


def test_the_fast_lane_answers_cached_lookups_exactly_as_the_full_app(app, client, app_db):
    headers = login_token(client, app_db, "luis")
    number = _seller_doc(app_db, "NV-1")
    client.get(f"/api/opportunities/{number}/prediction", headers=headers)  # cached now, if it was not
    before = app.lane.answered
    by_lane = client.get(f"/api/opportunities/{number}/prediction", headers=headers)
    live_by_lane = client.get("/livez")
    assert app.lane.answered == before + 2, "the lane did not answer a cached lookup of the caller's own"
    lane, app.lane = app.lane, None
    try:
        full = client.get(f"/api/opportunities/{number}/prediction", headers=headers)
        live_full = client.get("/livez")
    finally:
        app.lane = lane
    assert _comparable(by_lane) == _comparable(full)
    assert by_lane.json()["source"] == "cache" and by_lane.json()["prediction"]["seller"] == "NV-1"
    assert _comparable(live_by_lane) == _comparable(live_full)


def test_what_the_fast_lane_cannot_answer_goes_to_the_full_app(app, client, app_db):
    luis, marta = login_token(client, app_db, "luis"), login_token(client, app_db, "marta")
    of_jorge = _seller_doc(app_db, "NV-3")
    assert client.get(f"/api/opportunities/{of_jorge}/prediction", headers=marta).json()["source"] in ("cache", "model")
    before = app.lane.answered
    # Cached, but someone else's: the full app's 404, the same as for a number that does not exist.
    assert client.get(f"/api/opportunities/{of_jorge}/prediction", headers=luis).status_code == 404
    # No token, a malformed scheme, an unknown token: the full app's 401.
    path = f"/api/opportunities/{of_jorge}/prediction"
    for bad in ({}, {"Authorization": "Basic bHVpczp4"}, {"Authorization": "Bearer not-a-token"}):
        assert client.get(path, headers=bad).status_code == 401
    # A cached entry after its token is revoked: 401 at once, never the cached answer.
    assert client.get(path, headers=marta).status_code == 200
    assert client.delete("/api/auth/token", headers=marta).status_code == 204
    assert client.get(path, headers=marta).status_code == 401
    # Not GET: the full app answers (HEAD is not a route here).
    assert client.post(path, headers=luis).status_code == 405
    assert app.lane.answered == before + 1  # only marta's lookup before the revocation


def test_healthz_tells_an_anonymous_caller_only_the_status(client, app_db: AppDB, monkeypatch):
    monkeypatch.setenv("SALESPRED_HEALTH_TOKEN", "operator-token-123")
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    wrong = client.get("/healthz", headers={"X-Health-Token": "guess"})
    assert wrong.json() == {"status": "ok"}
    operator = client.get("/healthz", headers={"X-Health-Token": "operator-token-123"}).json()
    assert operator["status"] == "ok" and operator["version"]
    mongo, redis = operator["services"]["mongo"], operator["services"]["redis"]
    assert mongo["status"] == redis["status"] == "ok" and mongo["version"] and redis["version"]
    assert mongo["latency_ms"] >= 0 and redis["latency_ms"] >= 0
    assert mongo["server"].startswith("127.0.0.1:") and redis["server"].startswith("127.0.0.1:")
    monkeypatch.delenv("SALESPRED_HEALTH_TOKEN")  # no token configured: nobody gets the details
    assert client.get("/healthz", headers={"X-Health-Token": "operator-token-123"}).json() == {"status": "ok"}


def test_healthz_names_no_credentials_when_mongodb_is_down(app_db: AppDB, monkeypatch):
    from salespred_assets.app.main import create_app
    from salespred_assets.mongo.resource import MongoResource
    from salespred_tests.app_fixtures import LIMITS, SECRET

    dead = MongoResource(uri="mongodb://seller:s3cr3t-pw@127.0.0.1:9/?directConnection=true", timeout_ms=200)
    app = create_app(dead, app_db.redis, SECRET, login_limits=LIMITS)
    client = new_client(app)  # no lifespan: the app never reaches MongoDB at start
    monkeypatch.setenv("SALESPRED_HEALTH_TOKEN", "operator-token-123")
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "unavailable"}
    operator = client.get("/healthz", headers={"X-Health-Token": "operator-token-123"})
    assert operator.status_code == 503
    mongo = operator.json()["services"]["mongo"]
    assert mongo["status"] == "unavailable" and mongo["server"] == "127.0.0.1:9" and "MongoDB" in mongo["error"]
    assert "s3cr3t" not in operator.text and "seller" not in operator.text
