"""Per-client facts (``client_facts``) give exactly the features a full recomputation gives, on real SecantusDB.

A random sequence of captures, changes and closes through the app's API, bulk loads, and changes made
directly in MongoDB (then scored, as the new-opportunity sensor does), for large, small and new clients;
after it, every feature of every opportunity of those clients is computed twice, from the clients' facts
and from their whole documents, as of several days, and compared.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import feature_columns
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.mongo import client_facts
from salespred_assets.mongo.resource import OPPORTUNITIES, SETTINGS
from salespred_assets.scoring import online
from salespred_tests.app_fixtures import *  # noqa: F403 - the fixtures app, app_db, client (its __all__)
from salespred_tests.app_fixtures import login_token, valid_payload

pytestmark = pytest.mark.integration

OPERATIONS = 60


def _frame(mongo, clients: list[str]) -> pd.DataFrame:
    docs = list(mongo.db[OPPORTUNITIES].find({S.client: {"$in": clients}}))
    return validate(records_frame(docs, S), S).frame


def _assert_same_features(mongo, clients: list[str]) -> int:
    """Features from the facts against the full recomputation, for every opportunity of ``clients``."""
    frame = _frame(mongo, clients)
    docs = list(mongo.db[OPPORTUNITIES].find({S.client: {"$in": clients}}))
    recomputed, n = online.recomputed_context(mongo, S, docs)
    assert n == len(frame)
    facts = online.facts_context(mongo, S, frame)
    assert len(facts[S.client]) == len(recomputed.frame)  # the same rows, counted once each
    today = np.datetime64(dt.date.today(), "D")
    for at in (None, np.full(len(frame), today), np.full(len(frame), today + 1),
               np.full(len(frame), today - 400)):
        want = feature_columns(recomputed.frame.iloc[:n], S, at=at, context=recomputed.frame)
        got = feature_columns(frame, S, at=at, context=facts)
        for name, values in want.items():
            if values.dtype.kind == "f" and name == "amount_vs_client":  # a mean: summation order may differ
                np.testing.assert_allclose(got[name], values, rtol=1e-12, err_msg=name)
            elif values.dtype == object:  # categories: a missing one (NaN) equals a missing one
                assert pd.Series(got[name], dtype=object).equals(pd.Series(values, dtype=object)), name
            else:
                np.testing.assert_array_equal(got[name], values, err_msg=name)
    return len(frame)


def test_client_facts_match_a_full_recomputation_after_random_captures_changes_and_closes(client, app_db):
    mongo = app_db.mongo
    db = mongo.db
    rng = random.Random(19)
    sizes = Counter(d[S.client] for d in db[OPPORTUNITIES].find({}, {S.client: 1}))
    ranked = [c for c, _ in sizes.most_common()]
    clients = ranked[:3] + ranked[-3:] + ["CL-99919"]
    headers = login_token(client, app_db, "luis")
    mine: list[str] = []
    done = Counter()
    for _ in range(OPERATIONS):
        kind = rng.choice(["capture", "capture", "change", "close", "direct", "load"]) if mine else "capture"
        who = rng.choice(clients)
        if kind == "capture":
            tcv = float(rng.randint(1, 500) * 1000)
            body = client.post("/api/opportunities", headers=headers, json=valid_payload(
                cliente=who, acv=tcv / 2, tcv=tcv, unidad_negocio=rng.choice(["BU-01", "BU-04", "BU-07"])))
            assert body.status_code == 201, body.text
            mine.append(body.json()["numero_opportunidad"])
        elif kind in ("change", "close"):
            number = rng.choice(mine)
            change = ({"tcv": float(rng.randint(600, 900) * 1000)} if kind == "change"
                      else {"etapas": rng.choice(["Won", "Lost"])})
            answer = client.patch(f"/api/opportunities/{number}", headers=headers, json=change)
            assert answer.status_code in (200, 409), answer.text  # 409: it was closed already
        elif kind == "direct":  # another writer backdates one, closed, or spoils one; the sensor scores it
            number = rng.choice(mine)
            past = dt.date.today() - dt.timedelta(days=rng.randint(30, 300))
            spoil = rng.random() < 0.3  # invalid now: the recomputation leaves it out, so must the facts
            db[OPPORTUNITIES].update_one({S.id: number}, {"$set": {"tcv": "a lot"} if spoil else {
                S.created: past.isoformat(), S.close: (past + dt.timedelta(days=20)).isoformat(),
                S.stage: rng.choice(["Won", "Lost"])}})
            done["spoiled"] += spoil
            online.score_documents(mongo, [db[OPPORTUNITIES].find_one({S.id: number})], model=app_db.model)
        else:  # a bulk load of a few documents for the client (dates in the past)
            start = dt.date.today() - dt.timedelta(days=rng.randint(1, 900))
            docs = [{**valid_payload(cliente=who, acv=1000.0, tcv=2000.0 * (i + 1)),
                     S.id: f"OP-L{rng.randint(0, 10**9)}",
                     S.stage: rng.choice(["Won", "Lost", "S2"]), S.created: start.isoformat(),
                     S.close: (start + dt.timedelta(days=10 * i)).isoformat(), "numero_vendedor": "NV-1",
                     "fecha_cierre_planificada": start.isoformat(), "edad_oferta": float(10 * i)} for i in range(3)]
            mongo.insert_opportunities(docs)
            client_facts.rebuild_all(db, S)  # as `salespred seed` does after its load
        done[kind] += 1
    # One more spoiled by another writer, after the last bulk load (which rebuilds every client's facts).
    spoiled = mine[-1]
    db[OPPORTUNITIES].update_one({S.id: spoiled}, {"$set": {"tcv": "a lot"}})
    _, quarantined = online.score_documents(mongo, [db[OPPORTUNITIES].find_one({S.id: spoiled})], model=app_db.model)
    assert list(quarantined["id"]) == [spoiled]
    checked = _assert_same_features(mongo, clients)
    assert checked > 100 and done["capture"] >= 5 and done["close"] + done["change"] >= 5 and done["spoiled"], done

    # Missing facts (a database from before them): recomputed from the documents, repaired, the same again.
    db[client_facts.CLIENT_FACTS].delete_many({"_id": {"$in": clients[:2]}})
    db[SETTINGS].delete_one({"_id": client_facts.COMPLETE})
    _assert_same_features(mongo, clients)
    assert db[client_facts.CLIENT_FACTS].count_documents({"_id": {"$in": clients[:2]}}) == 2
    # Facts built for other fields (a schema loaded since) are rebuilt, not read.
    db[client_facts.CLIENT_FACTS].update_one({"_id": clients[0]}, {"$set": {"fields": ["cliente"]}})
    _assert_same_features(mongo, clients)


def test_a_capture_does_not_read_the_clients_documents(client, app_db, monkeypatch):
    """The point: a capture for the largest client reads its facts, never its documents."""
    db = app_db.mongo.db
    largest = Counter(d[S.client] for d in db[OPPORTUNITIES].find({}, {S.client: 1})).most_common(1)[0][0]
    headers = login_token(client, app_db, "luis")
    reads: list[list[dict]] = []
    recompute = online.client_history

    def counted(mongo, schema, docs):
        reads.append(list(docs))
        return recompute(mongo, schema, docs)

    monkeypatch.setattr(online, "client_history", counted)
    answer = client.post("/api/opportunities", headers=headers, json=valid_payload(cliente=largest))
    assert answer.status_code == 201 and answer.json()["prediction_source"] == "model", answer.text
    assert reads == []
    # Without its facts (a database from before them), a capture reads the documents once and repairs them.
    db[client_facts.CLIENT_FACTS].delete_one({"_id": largest})
    db[SETTINGS].delete_one({"_id": client_facts.COMPLETE})
    client.post("/api/opportunities", headers=headers, json=valid_payload(cliente=largest))
    client.post("/api/opportunities", headers=headers, json=valid_payload(cliente=largest))
    assert len(reads) == 1


def test_rows_without_a_client_or_a_unit_score_and_match_the_recomputation(app_db):
    """An export may leave the client or the business unit empty (both are kept): scoring a batch that mixes
    them with a client's rows works, no facts document gathers the client-less rows, and a missing unit in
    the facts is the same missing unit the recomputation sees."""
    mongo = app_db.mongo
    db = mongo.db
    start = dt.date.today() - dt.timedelta(days=200)
    docs = [{**valid_payload(cliente="CL-77001", acv=1000.0, tcv=2000.0 * (i + 1)), S.id: f"OP-N{i}",
             S.stage: ["Won", "Lost", "S2", "S3"][i % 4], S.created: (start + dt.timedelta(days=7 * i)).isoformat(),
             S.close: (start + dt.timedelta(days=7 * i + 30)).isoformat(), "numero_vendedor": "NV-1",
             "fecha_cierre_planificada": start.isoformat(), "edad_oferta": 0.0} for i in range(8)]
    for i in (1, 5):
        docs[i].pop("unidad_negocio")  # a missing unit
    for i in (2, 6):
        docs[i].pop(S.client)  # no client: no history
    mongo.insert_opportunities([dict(d) for d in docs])
    client_facts.rebuild_all(db, S)
    assert all(isinstance(d["_id"], str) and d["_id"] for d in db[client_facts.CLIENT_FACTS].find({}, {"_id": 1}))
    stored = list(db[OPPORTUNITIES].find({S.id: {"$in": [d[S.id] for d in docs]}}))
    predictions, quarantined = online.score_documents(mongo, stored, model=app_db.model)
    assert len(predictions) == len(docs) and quarantined.empty
    _assert_same_features(mongo, ["CL-77001"])


def test_packed_members_read_back_as_the_validated_rows():
    """pack then unpack (Arrow's split) gives the validated columns, dtypes included: missing dates, amounts
    and units, a unit that looks like a number, and a value with spaces and accents."""
    docs = []
    for i in range(300):
        doc = dict(valid_payload(), **{S.id: f"OP-{i:05d}"}, cliente=f"CL-{i % 7}", numero_vendedor="NV-1",
                   edad_oferta=3,
                   fecha_creacion_oportunidad=f"20{10 + i % 15}-0{1 + i % 9}-1{i % 10}",
                   unidad_negocio=["BU-01", "010", "Unidad Ñandú 2", None][i % 4],
                   acv=[1234.5, float("nan"), 0.0, 1e20][i % 4], etapas=["Won", "Lost", "S3", "S1"][i % 4],
                   fecha_cierre_oportunidad=f"2026-0{1 + i % 9}-2{i % 8}")
        docs.append(doc)
    frame = validate(records_frame(docs, S), S, dedupe=False).frame
    packed = client_facts.pack(frame, S)
    assert len(packed) == len(frame) > 200
    columns = client_facts.unpack([v for _, _, v in packed], S)
    for field, values in columns.items():
        expected = frame[field].to_numpy()
        if np.issubdtype(values.dtype, np.datetime64):
            assert values.dtype == np.dtype("datetime64[ns]")
            assert np.array_equal(values, expected.astype("datetime64[D]").astype("datetime64[ns]"), equal_nan=True)
        elif values.dtype == np.float64:
            assert np.array_equal(values, expected.astype("float64"), equal_nan=True), field
        else:
            assert values.dtype == object
            assert [None if isinstance(v, float) else v for v in values] == \
                   [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in expected], field
    assert all(len(v) == 0 for v in client_facts.unpack([], S).values())
    with pytest.raises(ValueError, match="client facts"):
        client_facts.unpack(["1\x1f2"], S)
