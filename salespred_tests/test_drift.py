"""Drift: PSI on known distributions, the training profile stored with the model, the asset and its check on
real MongoDB, and the sensor that turns a drift warning into a retrain."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from salespred_assets.core import drift
from salespred_assets.core.features import FeatureSpec
from salespred_assets.core.model import SearchConfig
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.core.training import train_production
from salespred_assets.defs.automation import retrain_on_drift
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_assets.operations import loading, runner
from salespred_assets.registry import model_store
from salespred_tests.helpers import AS_OF, build_test_resources

SPEC = FeatureSpec(categorical=("region",), numeric=("amount", "age_days", "client_prior_opportunities"))


def test_psi_of_known_share_vectors():
    assert drift.psi([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == 0.0
    # By hand: (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    # An empty bin is floored, not infinite; the result stays symmetric in the two roles.
    assert math.isfinite(drift.psi([0.5, 0.5], [1.0, 0.0]))
    assert drift.psi([0.2, 0.8], [0.6, 0.4]) == pytest.approx(drift.psi([0.6, 0.4], [0.2, 0.8]))
    with pytest.raises(ValueError, match="same length"):
        drift.psi([0.5, 0.5], [1.0])
    assert [drift.band(x) for x in (0.05, 0.1, 0.2, 0.25, 1.0)] == ["stable", "watch", "watch", "act", "act"]


def test_psi_of_normal_samples_follows_the_mean_shift():
    """For two normals with unit variance, PSI (the symmetric KL divergence) is the squared mean shift."""
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, 50_000)
    edges = drift.numeric_edges(train)
    assert len(edges) == 9 and drift.numeric_shares(train, edges) == pytest.approx([0.1] * 10, abs=1e-3)
    same = drift.psi(drift.numeric_shares(train, edges), drift.numeric_shares(rng.normal(0, 1, 20_000), edges))
    assert same < 0.01
    for shift in (0.3, 0.5, 1.0):
        value = drift.psi(drift.numeric_shares(train, edges), drift.numeric_shares(rng.normal(shift, 1, 20_000), edges))
        assert value == pytest.approx(shift ** 2, rel=0.25), shift  # deciles lose a little of the divergence
    # Values beyond the training range land in the open outer bins.
    assert drift.numeric_shares(np.array([-100.0, 100.0, np.nan]), edges) == [0.5] + [0.0] * 8 + [0.5]


def test_profile_and_compare_on_frames():
    rng = np.random.default_rng(1)
    n = 4000
    train = pd.DataFrame({"region": rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]),
                          "amount": rng.lognormal(10, 1, n), "age_days": rng.integers(0, 400, n).astype(float),
                          "client_prior_opportunities": rng.integers(0, 30, n).astype(float)})
    profile = drift.reference_profile(train, SPEC)
    assert set(profile["features"]) == {"region", "amount"}
    # Inputs that move with the calendar (the age, running counts) are not drift.
    assert profile["left_out"] == ["age_days", "client_prior_opportunities"]
    stable = drift.compare(profile, train.sample(1000, random_state=2))
    assert set(stable["band"]) == {"stable"}
    # Region shares 0.5/0.3/0.2 become 0.2/0.25/0.2 plus 0.35 of a region never seen in training.
    recent = pd.DataFrame({"region": ["A"] * 200 + ["B"] * 250 + ["C"] * 200 + ["NEW"] * 350,
                           "amount": rng.lognormal(10, 1, 1000), "age_days": 1.0, "client_prior_opportunities": 1.0})
    table = drift.compare(profile, recent).set_index("feature")
    expected = drift.psi(profile["features"]["region"]["shares"], [0.2, 0.25, 0.2, 0.35])
    assert table.loc["region", "psi"] == pytest.approx(expected)
    assert table.loc["region", "band"] == "act" and table.loc["amount", "band"] == "stable"
    assert "unseen" in table.loc["region", "largest_shift"]


def test_recent_means_the_latest_creation_window():
    day = pd.Series([0, 10, 100, 195, 199, 200], dtype=float)
    is_open = pd.Series([False, False, False, True, True, True])
    assert drift.recent_rows(day, is_open, days=10, min_rows=2).tolist() == [False] * 3 + [True] * 3
    assert drift.recent_rows(day, is_open, days=10, min_rows=4).tolist() == [False] * 2 + [True] * 4
    assert drift.recent_rows(None, is_open, days=10, min_rows=2).tolist() == is_open.tolist()


@pytest.mark.integration
def test_drift_asset_check_and_retrain_sensor(mongo, redis_resource, sqlite_url, tmp_path, monkeypatch):
    loading.seed_synthetic(mongo, 1500, seed=8, as_of=AS_OF)
    schema = mongo.schema()
    frame = mongo.read_opportunities(schema).frame
    report = train_production(frame, schema, SearchConfig.preset("fast"), yardstick=False)
    model = report.model
    # Training stores what the drift monitor compares with.
    assert set(model.info["reference"]["features"]) >= {"regiones", "tcv", "acv"}
    assert "age_days" in model.info["reference"]["left_out"] and "edad_oferta" not in model.info["features"]
    model_store.save(mongo.db, model)
    model_store.set_current(mongo.db, model.version, "test")
    resources = build_test_resources(mongo, redis_resource, sqlite_url, str(tmp_path / "storage"))
    instance = dg.DagsterInstance.ephemeral()

    calm = runner.materialize("monitor_drift", resources=resources, instance=instance)
    assert calm.ok and calm.warned_checks == []
    assert calm.metadata["opportunity_drift"]["action"] == "none"

    # The newest opportunities move to one region and triple in size.
    newest = [d["_id"] for d in mongo.db[OPPORTUNITIES].find({}, {"_id": 1}).sort(S.created, -1).limit(500)]
    mongo.db[OPPORTUNITIES].update_many({"_id": {"$in": newest}}, {"$set": {"regiones": "RE-03"}, "$mul": {"tcv": 3.0}})
    drifted = runner.materialize("monitor_drift", resources=resources, instance=instance)
    assert drifted.success and drifted.warned_checks == ["opportunity_drift:opportunity_drift_psi"]
    meta = drifted.metadata["opportunity_drift"]
    assert meta["action"] == "retrain" and "regiones" in meta["features_to_act"] and meta["max_psi"] >= drift.ACT

    # The sensor reacts to the drift measurement, once per model version, and not while the model is fresh.
    monkeypatch.setenv("SALESPRED_DRIFT_COOLDOWN_HOURS", "0.0001")
    [request] = list(retrain_on_drift(dg.build_sensor_context(instance=instance)))
    assert isinstance(request, dg.RunRequest) and request.run_key == f"drift-{model.version}"
    monkeypatch.setenv("SALESPRED_DRIFT_COOLDOWN_HOURS", "6")
    [skipped] = list(retrain_on_drift(dg.build_sensor_context(instance=instance)))
    assert isinstance(skipped, dg.SkipReason) and "cooldown" in skipped.skip_message
