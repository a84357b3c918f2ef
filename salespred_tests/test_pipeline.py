"""The whole asset graph, end to end, on real MongoDB, SQL and Redis."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_assets.operations import loading
from salespred_assets.registry import model_store
from salespred_assets.sql import tables, writer
from salespred_tests.helpers import AS_OF, build_test_resources, materialize_all

pytestmark = pytest.mark.integration


def _agreement(mongo, sql_url, redis_resource) -> dict:
    engine = sa.create_engine(sql_url)
    fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
    engine.dispose()
    cache = redis_resource.cache()
    ids = fact[DEFAULT_SCHEMA.id].tolist()
    cached = {i: cache.get(i) for i in ids}
    return {"mongo": mongo.db[OPPORTUNITIES].count_documents({}), "sql": len(fact),
            "sql_distinct": fact[DEFAULT_SCHEMA.id].nunique(),
            "cache_hits": sum(v is not None for v in cached.values()),
            "fact": fact, "cached": cached}


def test_whole_graph_on_synthetic_data(mongo, redis_resource, sqlite_url, tmp_path):
    loading.seed_synthetic(mongo, 3000, seed=7, as_of=AS_OF)
    loading.ensure_demo_sellers(mongo)
    resources = build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage"))
    result = materialize_all(resources)
    assert result.success
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == []

    got = _agreement(mongo, sqlite_url, redis_resource)
    assert got["mongo"] == got["sql"] == got["sql_distinct"] == got["cache_hits"] == 3000
    # The cache holds what SQL holds, for the same model version.
    fact = got["fact"].set_index(DEFAULT_SCHEMA.id)
    version = model_store.current_version(mongo.db)
    for number, value in list(got["cached"].items())[:200]:
        assert value["model_version"] == version == fact.loc[number, "model_version"]
        assert value["prediction_basis"] == fact.loc[number, "prediction_basis"]
        if value["prediction_basis"] == "model":
            assert value["probability"] == pytest.approx(fact.loc[number, "probability"], abs=1e-6)
            assert value["grade"] == fact.loc[number, "grade"]
        else:  # closed: its outcome, not a prediction
            assert value["probability"] is None and pd.isna(fact.loc[number, "probability"])
            assert value["predicted_won"] == (fact.loc[number, "outcome"] == "won")
        assert isinstance(value["factors_for"], list)

    # Sellers reach SQL without any password or hash.
    engine = sa.create_engine(sqlite_url)
    sellers = writer.read_table(engine, tables.DIM_SELLER)
    engine.dispose()
    assert len(sellers) == 5
    assert not any("pass" in c or "hash" in c for c in sellers.columns)
    assert not sellers.astype(str).apply(lambda c: c.str.contains("argon2")).any().any()

    # Re-materialising replaces; it never duplicates, and the cache swaps generation.
    gen_before = redis_resource.cache().current_generation()
    again = materialize_all(resources)
    assert again.success
    after = _agreement(mongo, sqlite_url, redis_resource)
    assert after["sql"] == after["sql_distinct"] == 3000
    assert redis_resource.cache().current_generation() == gen_before + 1
    assert after["cache_hits"] == 3000


def test_whole_graph_on_the_reference_data(mongo, redis_resource, sqlite_url, tmp_path, seed_csv, sellers_csv):
    """The acceptance test of the foundation: the original data, through every database."""
    result = loading.seed_csv(mongo, seed_csv)
    loading.load_sellers_csv(mongo, sellers_csv)
    assert result == {"inserted": 13791, "rejected": 0}
    resources = build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage"))
    run = materialize_all(resources)  # the fast search; test_model.py holds the full search to its figures
    assert run.success
    assert [e.check_name for e in run.get_asset_check_evaluations() if not e.passed] == []

    got = _agreement(mongo, sqlite_url, redis_resource)
    assert got["mongo"] == got["sql"] == got["sql_distinct"] == 13791
    open_ids = got["fact"].loc[got["fact"]["outcome"] == "open", DEFAULT_SCHEMA.id]
    assert len(open_ids) == 1107
    assert all(got["cached"][i] is not None for i in open_ids)

    entry = model_store.registry_entry(mongo.db, model_store.current_version(mongo.db))
    # The headline is the backtest's: the new opportunities after the as-of date, scored as at capture.
    backtest = entry["info"]["backtest"]
    assert backtest["as_of"] == "2022-04-07" and backtest["metrics"]["new"]["n"] == 2540
    assert entry["info"]["metrics"]["roc_auc"] == backtest["metrics"]["new"]["roc_auc"] > 0.72
    metadata = run.asset_materializations_for_node("win_model")[0].metadata
    assert metadata["roc_auc"].value == entry["info"]["metrics"]["roc_auc"]
    for plot in ("roc_curve", "calibration_curve", "feature_importance"):
        assert metadata[plot].value.startswith("![") and "data:image/png;base64," in metadata[plot].value
    assert "HistGradientBoosting" in metadata["backtest"].value and "3 months" in metadata["forecast"].value
    card = model_store.card(mongo.db, entry["_id"])
    assert card.startswith(f"# Model card: win model {entry['_id']}") and "Backtest as of 2022-04-07" in card
    assert "edad_oferta" not in entry["info"]["features"]
    json.dumps(entry["info"]["params"])  # hyperparameters are plain data
    assert isinstance(got["fact"], pd.DataFrame)
