"""The opportunity history on real SecantusDB and Redis: captures, the app's own changes, and changes other
writers make directly in MongoDB (found by the new-opportunity sensor's change stream)."""

from __future__ import annotations

import datetime as dt
import html
import re

import pandas as pd
import pytest
from bson import ObjectId

from salespred_assets import i18n
from salespred_assets.app import opportunities
from salespred_assets.app.auth import load_viewer
from salespred_assets.app.context import ChangeRefused
from salespred_assets.mongo import catalogs, history
from salespred_assets.mongo.resource import OPPORTUNITIES, OPPORTUNITY_HISTORY
from salespred_assets.operations import loading
from salespred_assets.scoring import batches
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import login_token, valid_payload
from salespred_tests.helpers import AS_OF

pytestmark = pytest.mark.integration


def _capture(client, headers: dict[str, str], **changes) -> dict:
    response = client.post("/api/opportunities", json=valid_payload(**changes), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _entries(db, number: str) -> list[dict]:
    return list(db[OPPORTUNITY_HISTORY].find({"opportunity": number}).sort("at", 1))


def _follow(db) -> batches.Cursor:
    """A sensor cursor positioned now: past every document, the stream at its current end."""
    token, state = batches.start_token(db)
    assert state == "followed"
    newest = db[OPPORTUNITIES].find_one({}, {"_id": 1}, sort=[("_id", -1)])["_id"]
    return batches.Cursor(last_id=str(newest), token=token, changes=state)


# ---- capture --------------------------------------------------------------------------------------------
def test_a_capture_keeps_the_typed_close_date_starts_at_age_zero_and_records_its_initial_values(client, app_db):
    headers = login_token(client, app_db, "luis")
    close = (dt.date.today() + dt.timedelta(days=200)).isoformat()
    number = _capture(client, headers, fecha_cierre_oportunidad=close)["numero_opportunidad"]
    stored = app_db.mongo.db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
    assert stored["fecha_cierre_planificada"] == stored["fecha_cierre_oportunidad"] == close
    assert stored["edad_oferta"] == 0.0

    [entry] = _entries(app_db.mongo.db, number)
    assert (entry["_id"], entry["source"], entry["seller"]) == (f"capture:{number}", "capture", "NV-1")
    assert entry["changes"] == {f: {"from": None, "to": stored[f]} for f in history.TRACKED}
    frame = history.changes_frame(app_db.mongo.db, ids=[number])
    assert list(frame["field"]) == list(history.TRACKED) and set(frame["source"]) == {"capture"}
    assert frame["before"].isna().all()
    assert frame.loc[frame["field"] == "fecha_cierre_oportunidad", "after"].item() == close


# ---- the app's own changes ------------------------------------------------------------------------------
def test_a_stage_change_through_the_app_is_recorded_once_with_its_author(client, app_db):
    db = app_db.mongo.db
    number = _capture(client, login_token(client, app_db, "luis"))["numero_opportunidad"]
    cursor = _follow(db)
    manager = login_token(client, app_db, "ana")  # luis's manager may change it too
    response = client.patch(f"/api/opportunities/{number}", json={"etapas": "S3"}, headers=manager)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"] == {"etapas": {"from": "S1", "to": "S3"}} and body["opportunity"]["etapas"] == "S3"
    assert body["prediction_source"] == "model" and body["prediction"]["model_version"] == app_db.model.version
    assert history.MARKER not in body["opportunity"]  # the marker is the app's and the stream's business
    stored = db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
    assert stored[history.MARKER] == body["history_id"]
    # Moving between open stages leaves the close date and the age alone.
    assert (stored["fecha_cierre_oportunidad"], stored["edad_oferta"]) == (stored["fecha_cierre_planificada"], 0.0)

    # The sensor's change path sees the app's update too, evaluated twice from the same cursor: still once.
    for _ in range(2):
        batches.plan(app_db.mongo, cursor)
    entries = _entries(db, number)
    assert [e["source"] for e in entries] == ["capture", "app"]
    app_entry = entries[1]
    assert (app_entry["_id"], app_entry["seller"]) == (body["history_id"], "NV-0")
    assert app_entry["changes"] == {"etapas": {"from": "S1", "to": "S3"}}

    # Nothing changed: nothing written, no entry.
    same = client.patch(f"/api/opportunities/{number}", json={"etapas": "S3"}, headers=manager).json()
    assert same["changes"] == {} and same["history_id"] is None and same["prediction_source"] == "unchanged"
    assert len(_entries(db, number)) == 2


def test_closing_sets_the_actual_close_date_and_final_duration_and_a_closed_opportunity_refuses_changes(client,
                                                                                                        app_db):
    db = app_db.mongo.db
    headers = login_token(client, app_db, "luis")
    number = _capture(client, headers)["numero_opportunidad"]
    created = dt.date.today() - dt.timedelta(days=40)  # as if captured 40 days ago
    db[OPPORTUNITIES].update_one({"numero_opportunidad": number},
                                 {"$set": {"fecha_creacion_oportunidad": created.isoformat()}})
    url = f"/api/opportunities/{number}"
    refused = client.patch(url, json={"etapas": "Won", "fecha_cierre_oportunidad": dt.date.today().isoformat()},
                           headers=headers)
    assert refused.status_code == 422 and "fecha_cierre_oportunidad" in refused.json()["errors"]
    assert client.patch(url, json={"etapas": "S9"}, headers=headers).status_code == 422
    assert client.patch(url + "?lang=en", json={"tcv": 1.0}, headers=headers).json()["errors"] == {
        "tcv": "TCV (the whole contract) must be greater than or equal to ACV (one year)."}

    won = client.patch(url, json={"etapas": "Won"}, headers=headers)
    assert won.status_code == 200, won.text
    doc = won.json()["opportunity"]
    today = dt.date.today().isoformat()
    assert (doc["etapas"], doc["fecha_cierre_oportunidad"], doc["edad_oferta"]) == ("Won", today, 40.0)
    assert doc["fecha_cierre_planificada"] == valid_payload()["fecha_cierre_oportunidad"]  # as typed, unchanged
    assert set(won.json()["changes"]) == {"etapas", "fecha_cierre_oportunidad"}
    # Once closed it shows its outcome, not a prediction: in the answer, the cache and the page.
    for prediction in (won.json()["prediction"], client.get(f"{url}/prediction", headers=headers).json()["prediction"]):
        assert prediction["prediction_basis"] == "outcome" and prediction["outcome"] == "won"
        assert prediction["predicted_won"] is True and prediction["probability"] is None
        assert prediction["score"] is None and prediction["grade"] is None and prediction["factors_for"] == []

    for change in ({"etapas": "S2"}, {"acv": 1.0}, {"etapas": "Lost"}):
        closed = client.patch(url, json=change, headers=headers)
        assert closed.status_code == 409 and "closed (Won)" in closed.json()["detail"]
    assert db[OPPORTUNITIES].find_one({"numero_opportunidad": number})["etapas"] == "Won"
    assert [e["source"] for e in _entries(db, number)] == ["capture", "app"]


def test_a_change_is_refused_for_others_and_when_someone_changed_it_meanwhile(client, app_db):
    db = app_db.mongo.db
    number = _capture(client, login_token(client, app_db, "luis"))["numero_opportunidad"]
    for stranger in ("jorge", "marta"):  # another seller, and a manager of another team: 404, nothing written
        response = client.patch(f"/api/opportunities/{number}", json={"etapas": "Lost"},
                                headers=login_token(client, app_db, stranger))
        assert response.status_code == 404
    assert client.patch(f"/api/opportunities/{number}", json={"etapas": "S2"}).status_code == 401
    mine = login_token(client, app_db, "luis")
    for body in ({"numero_vendedor": "NV-3"}, {"etapas": {"$ne": "Won"}}, {"_historial": "x"},
                 {"fecha_cierre_planificada": "2031-01-01"}, {"acv": "12"}, [{"etapas": "S2"}]):
        response = client.patch(f"/api/opportunities/{number}", json=body, headers=mine)
        assert response.status_code == 422, (body, response.text)
    assert [e["source"] for e in _entries(db, number)] == ["capture"]

    # A change read before someone else's is not applied over it: the update is guarded on what it read.
    viewer = load_viewer(app_db.mongo, "NV-1")
    ctx = client.app.state.ctx
    read = db[OPPORTUNITIES].find_one({"numero_opportunidad": number})
    db[OPPORTUNITIES].update_one({"_id": read["_id"]}, {"$set": {"etapas": "S4"}})
    with pytest.raises(ChangeRefused, match="changed by someone else"):
        opportunities._apply(ctx, viewer, read, {"etapas": "S2"}, history.new_id())
    assert db[OPPORTUNITIES].find_one({"_id": read["_id"]})["etapas"] == "S4"


def test_the_detail_page_moves_the_stage_with_a_csrf_protected_form(client, app_db):
    login = client.post("/login", data={"username": "luis", "password": app_db.passwords["luis"]},
                        follow_redirects=False)
    assert login.status_code == 303
    number = _capture(client, login_token(client, app_db, "luis"))["numero_opportunidad"]
    page = client.get(f"/opportunities/{number}")
    assert 'data-testid="stage-form"' in page.text and "Cambiar la etapa" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    url = f"/opportunities/{number}/stage"
    assert client.post(url, data={"etapas": "S2"}, follow_redirects=False).status_code == 403  # no CSRF token
    moved = client.post(url, data={"etapas": "S2", "csrf": csrf}, follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == f"/opportunities/{number}?changed=1"
    # The stage by the name the page shows (the catalog the app holds, else the message catalog's).
    stage = i18n.stage_name("es", "S2", catalogs.names(client.app.state.ctx.mongo))
    assert stage != "S2" and f"Etapa cambiada a {html.escape(stage)}." in client.get(moved.headers["location"]).text
    bad = client.post(url, data={"etapas": "S9", "csrf": csrf})
    assert bad.status_code == 422 and "Etapa desconocida" in bad.text
    extra = client.post(url, data={"etapas": "S3", "acv": "1", "csrf": csrf})
    assert extra.status_code == 422 and "Campo desconocido." in extra.text
    lost = client.post(url, data={"etapas": "Lost", "csrf": csrf}, follow_redirects=False)
    assert lost.status_code == 303
    closed = client.get(f"/opportunities/{number}")
    assert 'data-testid="stage-form"' not in closed.text
    again = client.post(url, data={"etapas": "S3", "csrf": csrf})
    assert again.status_code == 409 and "no se puede cambiar" in again.text
    entries = _entries(app_db.mongo.db, number)
    assert [(e["source"], e["seller"], e["changes"]["etapas"]["to"]) for e in entries] == [
        ("capture", "NV-1", "S1"), ("app", "NV-1", "S2"), ("app", "NV-1", "Lost")]


def test_the_openapi_document_declares_the_change(client):
    operation = client.get("/openapi.json").json()["paths"]["/api/opportunities/{number}"]["patch"]
    assert {"401", "404", "409", "422", "503"} <= set(operation["responses"])
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"etapas", "acv", "tcv", "margen_ganancia", "fecha_cierre_oportunidad"}


# ---- changes by other writers: the change stream ------------------------------------------------------
def test_a_direct_mongodb_change_is_recorded_from_the_change_stream_once(mongo):
    loading.seed_synthetic(mongo, 30, seed=4, as_of=AS_OF)  # ensure_indexes: the server keeps before-images
    db = mongo.db
    target = db[OPPORTUNITIES].find_one({"etapas": {"$in": ["S1", "S2", "S3"]}})
    cursor = _follow(db)
    db[OPPORTUNITIES].update_one({"_id": target["_id"]}, {"$set": {"etapas": "S5", "regiones": "RE-01"}})

    first = batches.plan(mongo, cursor)
    again = batches.plan(mongo, cursor)  # the same tick evaluated again (a daemon retry)
    assert first.history == again.history == 1
    [entry] = _entries(db, target["numero_opportunidad"])
    assert entry["source"] == "stream" and entry["seller"] is None and entry["_id"].startswith("stream:")
    assert entry["changes"] == {"etapas": {"from": target["etapas"], "to": "S5"}}  # untracked fields left out
    assert abs(entry["at"] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert [b.kind for b in first.batches] == ["changed"]  # and it is rescored, as before
    assert batches.plan(mongo, first.cursor).history == 0  # the next tick: nothing new

    # Without before-images (a server that keeps none) the new value is recorded, the old one is unknown.
    db.command("collMod", OPPORTUNITIES, changeStreamPreAndPostImages={"enabled": False})
    db[OPPORTUNITIES].update_one({"_id": target["_id"]}, {"$set": {"acv": 123.0}})
    batches.plan(mongo, first.cursor)
    latest = _entries(db, target["numero_opportunidad"])[-1]
    assert latest["changes"] == {"acv": {"from": None, "to": 123.0}} and latest["source"] == "stream"


def test_stream_events_become_changes():
    before = {"numero_opportunidad": "OP-1", "etapas": "S1", "acv": 5.0, "tcv": 9.0}
    update = {"_id": {"_data": "aa"}, "operationType": "update", "fullDocumentBeforeChange": before,
              "updateDescription": {"updatedFields": {"etapas": "S2", "acv": 5.0}, "removedFields": ["tcv"]}}
    assert history.stream_changes(update, history.TRACKED) == {"etapas": {"from": "S1", "to": "S2"},
                                                              "tcv": {"from": 9.0, "to": None}}
    replace = {"_id": {"_data": "bb"}, "operationType": "replace", "fullDocumentBeforeChange": before,
               "fullDocument": {**before, "acv": 6.0}}
    assert history.stream_changes(replace, history.TRACKED) == {"acv": {"from": 5.0, "to": 6.0}}
    blind = {**replace, "fullDocumentBeforeChange": None}
    assert set(history.stream_changes(blind, history.TRACKED)) == {"etapas", "acv", "tcv"}
    app = {**update, "updateDescription": {"updatedFields": {"etapas": "S2", history.MARKER: "app:x"}}}
    made = history.stream_entry(app, "numero_opportunidad", history.TRACKED)
    assert (made["_id"], made["source"], made["opportunity"]) == ("app:x", "app", "OP-1")
    assert history.stream_entry({**update, "operationType": "insert"}, "numero_opportunidad", history.TRACKED) is None
    # The same event always gets the same _id; another event another.
    assert history.stream_entry(update, "numero_opportunidad", history.TRACKED)["_id"] == \
        history.stream_entry(dict(update), "numero_opportunidad", history.TRACKED)["_id"] != \
        history.stream_entry({**update, "_id": {"_data": "cc"}}, "numero_opportunidad", history.TRACKED)["_id"]


# ---- reading ----------------------------------------------------------------------------------------------
def test_changes_frame_has_one_row_per_changed_field_in_time_order(mongo):
    db = mongo.db
    t0 = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    history.record(db, "OP-2", {"etapas": {"from": "S1", "to": "S2"}, "acv": {"from": 1.0, "to": 2.0}}, "app",
                   at=t0 + dt.timedelta(days=2), seller="NV-1")
    history.record(db, "OP-2", history.initial({"etapas": "S1", "acv": 1.0}), "capture", at=t0)
    history.record(db, "OP-1", {"etapas": {"from": None, "to": "Won"}}, "stream", at=t0 + dt.timedelta(days=1))
    db[OPPORTUNITY_HISTORY].insert_one({"_id": ObjectId(), "opportunity": "OP-3", "at": dt.datetime(2026, 3, 9),
                                        "source": "stream", "changes": {"tcv": {"from": 1, "to": 2}}})  # naive: UTC
    assert history.record(db, "OP-9", {}, "app") is None  # no change, no entry

    frame = history.changes_frame(db)
    assert list(frame.columns) == ["opportunity", "at", "field", "before", "after", "source"]
    assert str(frame["at"].dtype) == "datetime64[ns, UTC]" and frame["before"].dtype == object
    assert pd.api.types.is_string_dtype(frame["opportunity"]) and pd.api.types.is_string_dtype(frame["field"])
    assert list(zip(frame["opportunity"], frame["field"], frame["source"], strict=True)) == [
        ("OP-1", "etapas", "stream"), ("OP-2", "etapas", "capture"), ("OP-2", "acv", "capture"),
        ("OP-2", "etapas", "app"), ("OP-2", "acv", "app"), ("OP-3", "tcv", "stream")]
    assert frame["at"].iloc[-1] == pd.Timestamp("2026-03-09", tz="UTC")
    assert list(history.changes_frame(db, ids=["OP-3", "OP-1"])["opportunity"]) == ["OP-1", "OP-3"]
    empty = history.changes_frame(db, ids=["nobody"])
    assert empty.empty and list(empty.columns) == list(frame.columns)
    assert str(empty["at"].dtype) == str(frame["at"].dtype)
    with pytest.raises(ValueError, match="source"):
        history.record(db, "OP-1", {"etapas": {"from": "S1", "to": "S2"}}, "crm")
    mongo.ensure_indexes()
    assert {"opportunity": 1, "at": 1} in [dict(i["key"]) for i in db[OPPORTUNITY_HISTORY].list_indexes()]
