"""Malformed documents already in MongoDB are set aside with their reason; the good ones all go on."""

from __future__ import annotations

import dagster as dg
import pytest

from salespred_assets.defs.ingestion.assets import raw_opportunities
from salespred_assets.defs.ingestion.checks import raw_opportunities_quarantine
from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE
from salespred_assets.operations import loading
from salespred_tests.helpers import AS_OF

pytestmark = pytest.mark.integration


def _plant(mongo) -> dict[str, str]:
    coll = mongo.db[OPPORTUNITIES]
    template = coll.find_one({}, {"_id": 0})
    bad = {
        "OP-M1": ({"$unset": "fecha_creacion_oportunidad"}, "fecha_creacion_oportunidad: missing"),
        "OP-M2": ({"acv": "45000"}, "acv: not a finite number"),
        "OP-M3": ({"etapas": "Ganada"}, "etapas: unknown stage"),
        "OP-M4": ({"fecha_creacion_oportunidad": 20240101}, "fecha_creacion_oportunidad: not a YYYY-MM-DD date"),
        "OP-M5": ({"margen_ganancia": -0.2}, "margen_ganancia: outside [0, 1]"),
    }
    for number, (change, _) in bad.items():
        doc = {**template, "numero_opportunidad": number}
        if "$unset" in change:
            doc.pop(change["$unset"])
        else:
            doc.update(change)
        coll.insert_one(doc)
    dup = coll.find_one({"numero_opportunidad": {"$regex": "^OP-0"}}, {"_id": 0})
    coll.insert_one(dict(dup))  # the same number twice: the first document is kept
    return {**{k: v[1] for k, v in bad.items()}, dup["numero_opportunidad"]: "numero_opportunidad: duplicate"}


def test_bad_documents_are_quarantined_and_the_run_goes_on(mongo, tmp_path):
    loading.seed_synthetic(mongo, 500, seed=8, as_of=AS_OF)
    expected = _plant(mongo)
    resources = {"mongo": mongo, "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path))}
    result = dg.materialize([raw_opportunities, raw_opportunities_quarantine], resources=resources,
                            raise_on_error=False)
    assert result.success  # a warning check does not fail the run
    frame = result.output_for_node("raw_opportunities")
    assert len(frame) == 500 and frame["numero_opportunidad"].is_unique
    metadata = result.asset_materializations_for_node("raw_opportunities")[0].metadata
    assert metadata["quarantined"].value == 6
    stored = {d["id"]: d["reason"] for d in mongo.db[QUARANTINE].find()}
    assert stored == expected
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["quarantined"].value == 6

    # Fixing a document releases it from quarantine on the next run; nothing else changes.
    mongo.db[OPPORTUNITIES].update_one({"numero_opportunidad": "OP-M2"}, {"$set": {"acv": 45000.0}})
    again = dg.materialize([raw_opportunities], resources=resources)
    assert len(again.output_for_node("raw_opportunities")) == 501
    assert "OP-M2" not in {d["id"] for d in mongo.db[QUARANTINE].find()}
    assert mongo.db[QUARANTINE].count_documents({}) == 5
