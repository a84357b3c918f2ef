"""Malformed documents already in MongoDB, through the whole asset graph (test_quarantine.py covers the
ingestion asset alone): the run completes, each bad document is set aside with its reason (in the
``opportunities_quarantine`` collection and in the ``raw_opportunities_quarantine`` check), and SQL and
Redis hold exactly the good ones.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE
from salespred_assets.operations import loading
from salespred_assets.sql import tables, writer
from salespred_tests.helpers import AS_OF, build_test_resources, materialize_all

pytestmark = pytest.mark.integration

UNSET = object()
# number -> (field, stored value or UNSET to remove it, the reason the pipeline must give)
BAD: dict[str, tuple[str, Any, str]] = {
    # Required fields (id, stage, dates); a missing category or number is kept for the model instead.
    "OP-B01": ("fecha_creacion_oportunidad", UNSET, "fecha_creacion_oportunidad: missing"),
    "OP-B02": ("fecha_cierre_oportunidad", UNSET, "fecha_cierre_oportunidad: missing"),
    "OP-B03": ("acv", "45000", "acv: not a finite number"),                 # a number stored as text
    "OP-B04": ("margen_ganancia", "0.25", "margen_ganancia: not a finite number"),
    "OP-B05": ("cliente", 42, "cliente: not a non-empty text"),             # wrong types
    "OP-B06": ("tipos", ["TY-01"], "tipos: not a non-empty text"),
    "OP-B07": ("acv", {"value": 1}, "acv: not a finite number"),
    "OP-B08": ("acv", True, "acv: not a finite number"),
    "OP-B09": ("fecha_creacion_oportunidad", 20240101, "fecha_creacion_oportunidad: not a YYYY-MM-DD date"),
    "OP-B10": ("fecha_cierre_oportunidad", "2024-13-45", "fecha_cierre_oportunidad: not a YYYY-MM-DD date"),
    "OP-B11": ("etapas", "Ganada", "etapas: unknown stage"),                # unknown stages
    "OP-B12": ("etapas", "S9", "etapas: unknown stage"),
    "OP-B13": ("etapas", None, "etapas: missing"),
    "OP-B14": ("tcv", -5.0, "tcv: negative"),
    "OP-B15": ("margen_ganancia", 1.7, "margen_ganancia: outside [0, 1]"),
    "OP-B16": ("acv", float("inf"), "acv: not a finite number"),
}
NO_NUMBER_REASON = "numero_opportunidad: missing"
DUPLICATE_REASON = "numero_opportunidad: duplicate"


def plant(mongo) -> tuple[dict[str, str], str, float, set[str]]:
    """Bad documents beside the good ones: {key: reason}, the duplicated number, its first ACV, good numbers."""
    coll = mongo.db[OPPORTUNITIES]
    template = coll.find_one({}, {"_id": 0})
    expected = {}
    for number, (name, value, reason) in BAD.items():
        doc = {**template, "numero_opportunidad": number}
        if value is UNSET:
            doc.pop(name)
        else:
            doc[name] = value
        coll.insert_one(doc)
        expected[number] = reason
    nameless = {k: v for k, v in template.items() if k != "numero_opportunidad"}
    expected[str(coll.insert_one(nameless).inserted_id)] = NO_NUMBER_REASON
    first = coll.find_one({"numero_opportunidad": {"$regex": "^OP-0"}}, {"_id": 0})
    coll.insert_one({**first, "acv": first["acv"] + 1.0})  # the same number again: the first document is kept
    expected[f"dup:{first['numero_opportunidad']}"] = DUPLICATE_REASON
    coll.insert_one({**template, "numero_opportunidad": "OP-G01", "comentario": "unknown fields are ignored"})
    good = {d["numero_opportunidad"] for d in coll.find({}, {"numero_opportunidad": 1})
            if d.get("numero_opportunidad") and d["numero_opportunidad"] not in BAD}
    return expected, first["numero_opportunidad"], float(first["acv"]), good


def test_malformed_documents_are_quarantined_and_the_rest_scored_everywhere(mongo, redis_resource, sqlite_url,
                                                                           tmp_path, reliability):
    loading.seed_synthetic(mongo, 600, seed=11, as_of=AS_OF)
    loading.ensure_demo_sellers(mongo)
    expected, duplicated, first_acv, good = plant(mongo)
    resources = build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage"))

    started = time.perf_counter()
    result = materialize_all(resources)
    seconds = time.perf_counter() - started
    failed_steps = [e.step_key for e in result.all_events if e.is_step_failure]
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    quarantine_check = evaluations["raw_opportunities_quarantine"]

    stored = {}
    for doc in mongo.db[QUARANTINE].find():
        key = doc["id"] if doc["id"] and doc["reason"] != DUPLICATE_REASON else str(doc["_id"])
        stored[f"dup:{doc['id']}" if doc["reason"] == DUPLICATE_REASON else key] = doc["reason"]

    engine = sa.create_engine(sqlite_url)
    fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
    history = writer.read_table(engine, tables.FACT_PREDICTION_HISTORY)
    engine.dispose()
    sql_ids = fact["numero_opportunidad"].astype(str)
    cache = redis_resource.cache()
    cached = set(cache.live_ids())
    reliability.record(
        "Malformed data in MongoDB", "whole graph on 600 good + 18 bad documents", **{
            "bad documents planted": len(expected), "quarantined with their reason": len(stored),
            "reasons": len(set(expected.values())), "good documents": len(good),
            "check raw_opportunities_quarantine": f"{'passed' if quarantine_check.passed else 'warned'}, "
                                                  f"{quarantine_check.metadata['quarantined'].value} quarantined",
            "run": "succeeded" if result.success else "FAILED", "failed steps": len(failed_steps),
            "SQL rows": len(fact), "SQL rows that are bad": int(sql_ids.isin(set(BAD)).sum()),
            "Redis keys": len(cached), "Redis keys that are bad": len(cached & set(BAD)),
            "seconds": round(seconds, 1)})

    assert result.success and failed_steps == []
    assert stored == expected
    assert not quarantine_check.passed and quarantine_check.severity == dg.AssetCheckSeverity.WARN
    assert quarantine_check.metadata["quarantined"].value == len(expected)
    assert evaluations["raw_opportunities_duplicate_numbers"].metadata["duplicate_documents"].value == 1
    assert evaluations["raw_opportunities_schema"].passed  # what goes on fits the contract

    assert set(sql_ids) == good and sql_ids.is_unique
    assert fact.loc[sql_ids == duplicated, "acv"].item() == pytest.approx(first_acv)  # the first one won
    assert set(history["opportunity_id"].astype(str)) <= good
    assert cached == good
    assert all(v is not None for v in cache.get_many(sorted(good)))
