"""Any CRM export, not only ours: a schema file is all a differently shaped export needs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sklearn.metrics import accuracy_score, roc_auc_score

from salespred_assets.cli import cli
from salespred_assets.core.features import feature_spec
from salespred_assets.core.schema import load_schema
from salespred_assets.errors import SalespredError
from salespred_assets.operations import loading
from salespred_assets.registry import model_store
from salespred_assets.sql import tables, writer
from salespred_tests.crm_export import write_export
from salespred_tests.helpers import build_test_resources, materialize_all


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_export(tmp_path_factory.mktemp("crm"))


def _evaluate(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["evaluate", "--search", "fast", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_evaluate_a_differently_shaped_export_with_its_schema(export, tmp_path):
    csv, schema_path, _ = export
    out = tmp_path / "predictions.csv"
    report = _evaluate("--csv", str(csv), "--schema", str(schema_path), "--predictions-out", str(out))
    assert "only known at close" in report["protocol"]
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["OpportunityId", "y_true", "probability"]
    assert len(preds) == report["data"]["test"] == report["metrics"]["n"]
    # Anyone can recompute the figures from the file.
    assert roc_auc_score(preds["y_true"], preds["probability"]) == pytest.approx(report["metrics"]["roc_auc"])
    threshold = report["metrics"]["threshold"]
    assert (accuracy_score(preds["y_true"], preds["probability"] >= threshold)
            == pytest.approx(report["metrics"]["accuracy"]))
    assert report["metrics"]["roc_auc"] > 0.7
    assert preds["OpportunityId"].str.startswith("006A").all()


def test_backtest_a_differently_shaped_export_and_recompute_its_figures(export, tmp_path):
    csv, schema_path, _ = export
    out = tmp_path / "backtest.csv"
    result = CliRunner().invoke(cli, ["backtest", "--search", "fast", "--no-yardstick", "--csv", str(csv), "--schema",
                                      str(schema_path), "--as-of", "2025-06-01", "--predictions-out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["as_of"] == "2025-06-01"
    preds = pd.read_csv(out)
    assert {"OpportunityId", "group", "age_at_scoring", "probability", "outcome"} <= set(preds.columns)
    assert set(preds["group"]) == {"pipeline", "new"}
    assert (preds.loc[preds["group"] == "new", "age_at_scoring"] == 0).all()
    # Anyone can recompute the per-group figures from the file.
    for group in ("new", "pipeline"):
        part = preds[(preds["group"] == group) & (preds["outcome"] != "open")]
        y = (part["outcome"] == "won").astype(int)
        assert roc_auc_score(y, part["probability"]) == pytest.approx(report["metrics"][group]["roc_auc"])
        assert report["metrics"][group]["n"] == len(part)
    assert [row["horizon"] for row in report["forecast"]] == ["3 months", "6 months"]
    assert len(report["calibration"]["new"]) == 10


def test_optional_roles_are_simply_left_out(export):
    csv, _, minimal = export
    schema = load_schema(minimal)
    assert schema.dates == () and schema.seller is None and schema.client is None and schema.open == ()
    spec = feature_spec(schema)
    assert set(spec.columns) == {"Segment", "Product", "Country", "Discount", "Amount"}
    report = _evaluate("--csv", str(csv), "--schema", str(minimal), "--test-size", "0.25", "--random-state", "7")
    assert report["metrics"]["n"] == pytest.approx(report["data"]["rows_used"] * 0.25, abs=1)
    assert 0.5 < report["metrics"]["roc_auc"] <= 1.0


@pytest.mark.integration
def test_the_whole_graph_runs_on_the_export(export, mongo, redis_resource, sqlite_url, tmp_path):
    csv, schema_path, _ = export
    schema = load_schema(schema_path)
    result = loading.seed_csv(mongo, csv, schema)
    assert result == {"inserted": 2500, "rejected": 0}
    assert mongo.schema() == schema  # the pipeline reads the export's contract from MongoDB
    run = materialize_all(build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage")))
    assert run.success
    engine = sa.create_engine(sqlite_url)
    fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
    engine.dispose()
    assert len(fact) == 2500
    assert {"OpportunityId", "StageName", "Amount", "CloseDate", "probability", "grade"} <= set(fact.columns)
    assert "etapas" not in fact.columns and "Notes" not in fact.columns
    some = fact["OpportunityId"].iloc[0]
    cached = redis_resource.cache().get(some)
    assert cached["model_version"] == model_store.current_version(mongo.db)


def test_schema_errors_say_what_is_wrong(tmp_path, export):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nstage: {field: s, won: [W]}\ncategorical: [a]\n")
    with pytest.raises(SalespredError, match="at least one won and one lost"):
        load_schema(bad)
    bad.write_text("id: x\nstage: {field: s, won: [W], lost: [L]}\ncategorical: [a]\nProbability: 1\n")
    with pytest.raises(SalespredError, match="unknown keys"):
        load_schema(bad)
    bad.write_text("id: x\nstage: {field: s, won: [W], lost: [L]}\ncategorical: [a]\nnumeric: [Probability]\n")
    with pytest.raises(SalespredError, match="names salespred uses"):
        load_schema(bad)
    with pytest.raises(SalespredError, match="does not exist"):
        load_schema(tmp_path / "missing.yaml")
    csv, _, _ = export
    result = CliRunner().invoke(cli, ["evaluate", "--csv", str(csv)])  # the seed's schema does not fit
    assert result.exit_code != 0 and "lacks the fields" in str(result.exception)
