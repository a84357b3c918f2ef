"""The fast paths compute exactly what the straightforward ones do."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import build_features
from salespred_assets.core.model import SearchConfig, calibration_inputs
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.core.scoring import as_of_day, score
from salespred_assets.core.training import fit
from salespred_tests.helpers import AS_OF

SCORED_AT = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def data():
    docs = [d for chunk in synthetic.generate(6000, seed=17, as_of=AS_OF) for d in chunk]
    frame = validate(records_frame(docs, S), S).frame
    at = np.full(len(frame), as_of_day(SCORED_AT))
    features = build_features(frame, S, at=at)
    model = fit(frame, S, SearchConfig.preset("fast"),
                params={"n_estimators": 60, "min_samples_leaf": 2, "max_features": 0.4}).model
    return frame, features, model


def _reference_client_facts(frame: pd.DataFrame, rows: list[int], at: np.datetime64) -> pd.DataFrame:
    """The same client facts for ``rows``, written the plain way: one row at a time, filtering by dates."""
    out = []
    created_all = frame[S.created].to_numpy(dtype="datetime64[D]")
    closed_all = frame[S.close].to_numpy(dtype="datetime64[D]")
    for i in rows:
        row = frame.iloc[i]
        created = np.datetime64(row[S.created], "D")
        mine = (frame[S.client] == row[S.client]).to_numpy()
        before = mine & (created_all < created)
        decided = mine & frame[S.stage].isin(["Won", "Lost"]).to_numpy() & (closed_all < at)
        won = decided & (frame[S.stage] == "Won").to_numpy()
        usual = np.log1p(frame.loc[before, "tcv"]).mean() if before.any() else np.nan
        out.append({
            "client_prior_opportunities": before.sum(),
            "client_tenure_days": (created - created_all[mine].min()).astype(int),
            "client_prior_units": frame.loc[before, "unidad_negocio"].nunique(),
            "amount_vs_client": np.exp(np.log1p(row["tcv"]) - usual),
            "client_closed_before": decided.sum(), "client_won_before": won.sum(),
            "client_win_rate": won.sum() / decided.sum() if decided.any() else np.nan,
        })
    return pd.DataFrame(out).astype(float)


def test_client_facts_match_a_plain_computation(data):
    frame, features, _ = data
    rows = list(range(0, 6000, 97))
    expected = _reference_client_facts(frame, rows, as_of_day(SCORED_AT))
    for column in expected.columns:
        np.testing.assert_allclose(features[column].to_numpy()[rows], expected[column].to_numpy(), rtol=1e-9,
                                   err_msg=column)


def test_one_row_against_its_client_context_equals_the_batch_row(data):
    frame, features, _ = data
    for i in (0, 17, 2500, 5999):
        client = frame["cliente"].iloc[i]
        one = build_features(frame.iloc[[i]], S, at=np.array([as_of_day(SCORED_AT)]),
                             context=frame[frame["cliente"] == client])
        pd.testing.assert_frame_equal(one, features.iloc[[i]], check_dtype=False)


def test_lookup_encoding_equals_the_fitted_pipeline(data):
    _frame, features, model = data
    sample = features.iloc[::7].copy()
    sample.iloc[0, sample.columns.get_loc("industrias")] = "IN-99"  # a code the encoder never saw
    expected = model.pipeline.named_steps["pre"].transform(sample[model.spec.columns])
    np.testing.assert_array_equal(model.transform(sample), np.asarray(expected, dtype=float))


def test_small_and_large_inputs_find_the_same_leaves_and_probabilities(data):
    _, features, model = data
    X = model.transform(features.iloc[:200])
    explainer = model.explainer
    compiled = np.column_stack([t.apply(X.astype(np.float32)) for t in explainer.trees]) + explainer.node_offset
    np.testing.assert_array_equal(explainer.leaves(X[:20]), compiled[:20])  # the NumPy walk
    np.testing.assert_array_equal(explainer.leaves(X), compiled)            # the compiled apply
    p_small = np.concatenate([explainer.explain(X[i:i + 1])[0] for i in range(50)])
    np.testing.assert_allclose(p_small, model.forest.predict_proba(X[:50])[:, 1], atol=1e-12)
    age = features["age_days"].to_numpy()[:50]
    assert model.calibrate(p_small, age) == pytest.approx(
        model.calibrator.predict_proba(calibration_inputs(p_small, age))[:, 1])


def test_one_scored_row_equals_its_row_of_the_batch(data):
    frame, _, model = data
    batch = score(model, frame, S, scored_at=SCORED_AT)
    open_rows = np.flatnonzero(batch["outcome"].to_numpy() == "open")
    for i in (3, 4321, int(open_rows[0]), int(open_rows[-1])):
        context = frame[frame["cliente"] == frame["cliente"].iloc[i]]
        one = score(model, frame.iloc[[i]], S, context=context, scored_at=SCORED_AT)
        pd.testing.assert_frame_equal(one, batch.iloc[[i]].reset_index(drop=True))
    assert str(batch["scored_at"].dtype) == "datetime64[us, UTC]" and batch["grade"].dtype == "str"


def test_closed_opportunities_carry_their_outcome_not_a_prediction(data):
    frame, _, model = data
    batch = score(model, frame, S, scored_at=SCORED_AT)
    closed = batch[batch["outcome"] != "open"]
    opened = batch[batch["outcome"] == "open"]
    assert len(closed) and len(opened)
    assert (closed["prediction_basis"] == "outcome").all() and (opened["prediction_basis"] == "model").all()
    assert closed["probability"].isna().all() and closed["score"].isna().all() and closed["grade"].isna().all()
    assert (closed["predicted_won"] == (closed["outcome"] == "won")).all()
    assert (closed["factors_for"] == "[]").all()
    assert opened["probability"].between(0, 1).all() and opened["score"].notna().all()
