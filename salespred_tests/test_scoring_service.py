"""Scoring a few opportunities outside a full refresh: cache first, the model otherwise."""

from __future__ import annotations

import pandas as pd
import pytest

from salespred_assets.core.documents import records_frame, validate
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.scoring import online
from salespred_tests.helpers import AS_OF, train_current_model

pytestmark = pytest.mark.integration


@pytest.fixture
def trained(mongo):
    loading.seed_synthetic(mongo, 1500, seed=3, as_of=AS_OF)
    model = train_current_model(mongo)
    return model, mongo.read_opportunities(mongo.schema()).frame


def test_batch_and_single_scoring_agree(mongo, redis_resource, trained):
    model, frame = trained
    number = frame.loc[frame["etapas"] == "S3", "numero_opportunidad"].iloc[0]
    first, source = online.prediction_for(mongo, redis_resource, number)
    assert source == "model"
    again, source = online.prediction_for(mongo, redis_resource, number)
    assert source == "cache" and again == first
    # The same opportunity scored in the batch path (client facts over the whole collection).
    from salespred_assets.core.scoring import score

    batch = score(model, frame, mongo.schema()).set_index("opportunity_id")
    assert first["probability"] == pytest.approx(batch.loc[number, "probability"], abs=1e-6)
    assert first["grade"] == batch.loc[number, "grade"]


def test_callers_see_only_their_sellers_predictions(mongo, redis_resource, trained):
    _, frame = trained
    row = frame.iloc[42]
    number, owner = row["numero_opportunidad"], row["numero_vendedor"]
    other = "NV-9" if owner != "NV-9" else "NV-8"
    assert online.prediction_for(mongo, redis_resource, number, sellers={other}) == (None, "missing")
    mine, source = online.prediction_for(mongo, redis_resource, number, sellers={owner})
    assert source == "model" and mine["seller"] == owner
    # Cached now: a hit for its seller, and still nothing for anyone else, without asking MongoDB.
    assert online.prediction_for(mongo, redis_resource, number, sellers={owner})[1] == "cache"
    assert online.prediction_for(mongo, redis_resource, number, sellers={other}) == (None, "missing")


def test_redis_down_falls_back_to_the_model(mongo, trained):
    _, frame = trained
    number = frame.loc[frame["etapas"].str.startswith("S"), "numero_opportunidad"].iloc[0]  # an open one
    dead = RedisResource(url="redis://127.0.0.1:1/0", timeout_s=0.2)
    prediction, source = online.prediction_for(mongo, dead, number)
    assert source == "model" and 0.0 <= prediction["probability"] <= 1.0


def test_unknown_and_invalid_documents(mongo, redis_resource, trained):
    assert online.prediction_for(mongo, redis_resource, "OP-99999999") == (None, "missing")
    mongo.db[OPPORTUNITIES].insert_one({"numero_opportunidad": "OP-BAD", "etapas": "S1"})
    with pytest.raises(ValueError, match="cannot be scored"):
        online.prediction_for(mongo, redis_resource, "OP-BAD")
    docs = [{"numero_opportunidad": "OP-X"}]
    preds, quarantine = online.score_documents(mongo, docs)
    assert preds.empty and "missing" in quarantine["reason"].iloc[0]
    assert validate(records_frame(docs, mongo.schema()), mongo.schema()).frame.empty


def test_a_batch_reports_only_its_own_bad_documents(mongo, trained):
    _, frame = trained
    client = frame["cliente"].iloc[5]
    # A malformed document of the same client is already stored: it is history, not this batch's problem.
    mongo.db[OPPORTUNITIES].insert_one({"numero_opportunidad": "OP-OLD-BAD", "cliente": client, "etapas": "S1"})
    good = {f: frame[f].iloc[5] for f in ("cliente", "unidad_negocio", "etapas", "tipos", "acv", "tcv",
                                          "margen_ganancia", "regiones", "territorios", "industrias",
                                          "edad_oferta", "lead_source", "numero_vendedor")}
    good.update(numero_opportunidad="OP-NEW-1", etapas="S2", fecha_creacion_oportunidad="2026-10-01",
                fecha_cierre_oportunidad="2026-12-01")
    bad = dict(good, numero_opportunidad="OP-NEW-2", acv="lots")
    odd = dict(good, numero_opportunidad=["OP-NEW-3"])  # not even hashable: set aside, never a crash
    mongo.db[OPPORTUNITIES].insert_one(dict(odd, numero_opportunidad={"n": 3}))
    preds, quarantine = online.score_documents(mongo, [good, bad, odd])
    assert preds["opportunity_id"].tolist() == ["OP-NEW-1"]
    assert quarantine["id"].tolist() == ["OP-NEW-2", "['OP-NEW-3']"]
    assert quarantine["reason"].tolist() == ["acv: not a finite number", "numero_opportunidad: not a non-empty text"]
    # Client facts count the client's valid stored history: the same as scoring against it directly.
    from salespred_assets.core.scoring import score

    new = validate(records_frame([good], mongo.schema()), mongo.schema()).frame
    context = pd.concat([frame[frame["cliente"] == client], new], ignore_index=True)
    direct = score(model_store.load_current(mongo.db), new, mongo.schema(), context=context)
    assert preds["probability"].iloc[0] == pytest.approx(direct["probability"].iloc[0], abs=1e-12)
    assert preds["factors_for"].iloc[0] == direct["factors_for"].iloc[0]
