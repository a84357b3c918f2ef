"""A prediction's reasons as a seller and an integration read them: sentences on the page and in the API."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Iterator

import pytest

from salespred_assets import i18n
from salespred_assets.core import names
from salespred_assets.mongo import catalogs
from salespred_assets.scoring import online
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import AppDB, login_token, valid_payload
from salespred_tests.test_app_pages import csrf_of, page_login

pytestmark = pytest.mark.integration
CODE = re.compile(r"\b[A-Z]{2}-\d+")                 # BU-04, TY-00, NV-1...
FEATURE = re.compile(r"\b[a-z]+_[a-z_]+\b")           # client_won_before, age_days...
UNGROUPED = re.compile(r"\d{4,}")                     # 9830 (a day number), 48000: never without grouping


@pytest.fixture
def named(app_db: AppDB) -> Iterator[None]:
    """The app's MongoDB with the demo catalog (names for every synthetic code), as `salespred demo` loads it."""
    catalogs.write(app_db.mongo, names.demo_entries(), replace=True)
    catalogs.forget()
    try:
        yield
    finally:
        app_db.mongo.db[catalogs.CATALOGS].drop()
        catalogs.forget()


def readable(sentence: str) -> None:
    assert not CODE.search(sentence), sentence
    assert not FEATURE.search(sentence), sentence
    assert not UNGROUPED.search(sentence), sentence
    assert sentence.endswith("."), sentence


def test_the_api_gives_machine_fields_and_sentences_in_the_asked_language(client, app_db: AppDB, named):
    headers = login_token(client, app_db, "luis")
    captured = client.post("/api/opportunities?lang=en", json=valid_payload(cliente="CL-77"), headers=headers)
    assert captured.status_code == 201 and captured.headers["content-language"] == "en"
    prediction = captured.json()["prediction"]
    reasons = prediction["reasons_for"] + prediction["reasons_against"]
    assert reasons and all(r["text"].endswith(("points).", "point).")) for r in reasons)
    for r in reasons:
        readable(r["sentence"])
        assert r["effect"] == pytest.approx(sum(f["effect"] for f in r["features"]), abs=1e-9)
        assert {"feature", "value", "effect"} == set(r["features"][0])
    assert [r["effect"] for r in prediction["reasons_for"]] == sorted((r["effect"] for r in prediction["reasons_for"]),
                                                                      reverse=True)
    assert all(r["effect"] > 0 for r in prediction["reasons_for"]) and all(
        r["effect"] < 0 for r in prediction["reasons_against"])
    assert "reasons" not in prediction and prediction["factors_for"] + prediction["factors_against"]

    number = captured.json()["numero_opportunidad"]
    path = f"/api/opportunities/{number}/prediction"
    spanish = client.get(path, headers={**headers, "Accept-Language": "es-CO,es;q=0.9,en;q=0.5"})
    english = client.get(path + "?lang=en", headers={**headers, "Accept-Language": "es"})
    assert spanish.json()["source"] == english.json()["source"] == "cache"
    assert spanish.headers["content-language"] == "es" and english.headers["content-language"] == "en"
    es_reasons = spanish.json()["prediction"]["reasons_for"] + spanish.json()["prediction"]["reasons_against"]
    en_reasons = english.json()["prediction"]["reasons_for"] + english.json()["prediction"]["reasons_against"]
    assert [r["text"] for r in en_reasons] == [r["text"] for r in reasons]
    assert all(r["text"].endswith(("puntos).", "punto).")) for r in es_reasons)
    # The machine fields are the same in every language.
    assert [(r["concept"], r["effect"], r["features"]) for r in es_reasons] == \
        [(r["concept"], r["effect"], r["features"]) for r in en_reasons]


def test_the_cached_path_and_the_model_path_give_the_same_reasons(client, app_db: AppDB, app, named):
    headers = login_token(client, app_db, "luis")
    number = client.post("/api/opportunities", json=valid_payload(cliente="CL-78"), headers=headers).json()[
        "numero_opportunidad"]
    cached, source = online.prediction_for(app_db.mongo, app_db.redis, number)
    modelled, model_source = online.prediction_for(app_db.mongo, None, number)   # no cache: scored now
    assert (source, model_source) == ("cache", "model")
    assert cached["reasons"] and cached["reasons"] == modelled["reasons"]
    # ... and the lane (cache) answers what the full app answers, in English too.
    path = f"/api/opportunities/{number}/prediction?lang=en"
    before = app.lane.answered
    by_lane = client.get(path, headers=headers)
    assert app.lane.answered == before + 1
    lane, app.lane = app.lane, None
    try:
        full = client.get(path, headers=headers)
    finally:
        app.lane = lane
    assert by_lane.json() == full.json() and by_lane.json()["prediction"]["reasons_for"] is not None
    said = by_lane.json()["prediction"]
    for r in said["reasons_for"] + said["reasons_against"]:
        readable(r["sentence"])  # codes by name on the lane as in the full app
    assert by_lane.headers["content-language"] == full.headers["content-language"] == "en"
    assert by_lane.headers["vary"] == full.headers["vary"]


def _sentences(page: str) -> list[str]:
    return [html.unescape(s) for s in re.findall(r'<span class="sentence">([^<]*)</span>', page)]


def test_the_detail_page_reads_each_reason_as_a_sentence_with_its_points(client, app_db: AppDB, named):
    page_login(client, app_db, "luis")
    headers = login_token(client, app_db, "luis")
    number = client.post("/api/opportunities", json=valid_payload(cliente="CL-79"), headers=headers).json()[
        "numero_opportunidad"]
    spanish = client.get(f"/opportunities/{number}").text
    sentences = _sentences(spanish)
    assert sentences, spanish
    for sentence in sentences:
        readable(sentence)
    assert re.search(r'<span class="points">[+\u2212]\d+ puntos?</span>', spanish)
    client.get("/lang/en")
    try:
        english = client.get(f"/opportunities/{number}").text
    finally:
        client.get("/lang/es")
    assert len(_sentences(english)) == len(sentences) and re.search(r'<span class="points">[+\u2212]\d+ points?</span>',
                                                                     english)
    assert not set(_sentences(english)) & set(sentences)


def test_a_closed_opportunity_shows_its_outcome_and_close_date_not_a_verdict(client, app_db: AppDB):
    page_login(client, app_db, "luis")
    headers = login_token(client, app_db, "luis")
    number = client.post("/api/opportunities", json=valid_payload(cliente="CL-80"), headers=headers).json()[
        "numero_opportunidad"]
    csrf = csrf_of(client.get(f"/opportunities/{number}").text)
    moved = client.post(f"/opportunities/{number}/stage", data={"csrf": csrf, "etapas": "Won"}, follow_redirects=False)
    assert moved.status_code == 303
    page = client.get(f"/opportunities/{number}").text
    today = dt.date.today()
    assert f"Ganada el {i18n.date('es', today)}" in page
    assert 'data-testid="probability"' not in page and "Probablemente" not in page and "puntos" not in page
    client.get("/lang/en")
    try:
        english = client.get(f"/opportunities/{number}").text
    finally:
        client.get("/lang/es")
    assert f"Won on {i18n.date('en', today)}" in english and "Likely" not in english
    api = client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()["prediction"]
    assert api["prediction_basis"] == "outcome" and api["reasons_for"] == api["reasons_against"] == []


def test_an_entry_cached_before_reasons_existed_is_scored_again_with_them(client, app_db: AppDB, app):
    headers = login_token(client, app_db, "luis")
    number = client.post("/api/opportunities", json=valid_payload(cliente="CL-81"), headers=headers).json()[
        "numero_opportunidad"]
    cache = app_db.redis.cache()
    entry = cache.get(number)
    old = {k: v for k, v in entry.items() if k != "reasons"}
    cache.upsert([number], [json.dumps(old)], entry["model_version"])
    assert "reasons" not in cache.get(number)
    before = app.lane.answered
    answer = client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()
    assert app.lane.answered == before  # the lane leaves it to the full app, which scores it again
    assert answer["source"] == "model" and answer["prediction"]["reasons_for"] + answer["prediction"]["reasons_against"]
    assert cache.get(number)["reasons"] == entry["reasons"]
    assert client.get(f"/api/opportunities/{number}/prediction", headers=headers).json()["source"] == "cache"
