"""The fast paths compute exactly what the straightforward ones do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import build_features, closed_target, feature_spec
from salespred_assets.core.model import SearchConfig, train
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_tests.helpers import AS_OF


@pytest.fixture(scope="module")
def data():
    docs = [d for chunk in synthetic.generate(6000, seed=17, as_of=AS_OF) for d in chunk]
    frame = validate(records_frame(docs, S), S).frame
    closed, y = closed_target(frame, S)
    features = build_features(frame, S)
    model = train(features[closed.to_numpy()], y, feature_spec(S), SearchConfig.preset("fast"),
                  params={"n_estimators": 60, "min_samples_leaf": 2, "max_features": 0.4}).model
    return frame, features, model


def _reference_client_facts(frame: pd.DataFrame) -> pd.DataFrame:
    """The same client facts, written the plain pandas way."""
    g = frame.groupby("cliente")
    out = pd.DataFrame(index=frame.index)
    out["client_opportunities"] = g["numero_opportunidad"].transform("count")
    out["client_units"] = g["unidad_negocio"].transform("nunique")
    out["client_median_amount"] = g["tcv"].transform("median")
    out["amount_vs_client"] = np.where(out["client_median_amount"] > 0, frame["tcv"] / out["client_median_amount"], 1.0)
    created = frame["fecha_creacion_oportunidad"]
    out["client_tenure_days"] = (created - g["fecha_creacion_oportunidad"].transform("min")).dt.days
    out["client_same_day"] = frame.groupby(["cliente", "fecha_creacion_oportunidad"])["numero_opportunidad"].transform("count")
    out["client_same_close"] = frame.groupby(["cliente", "fecha_cierre_oportunidad"])["numero_opportunidad"].transform("count")
    ranked = frame.sort_values(["cliente", "fecha_creacion_oportunidad", "numero_opportunidad"])
    out["client_rank"] = (ranked.groupby("cliente").cumcount() + 1).reindex(frame.index)
    return out.astype(float)


def test_client_facts_match_a_plain_pandas_computation(data):
    frame, features, _ = data
    expected = _reference_client_facts(frame)
    for column in expected.columns:
        np.testing.assert_allclose(features[column].to_numpy(), expected[column].to_numpy(), rtol=1e-12, err_msg=column)


def test_one_row_against_its_client_context_equals_the_batch_row(data):
    frame, features, _ = data
    for i in (0, 17, 2500, 5999):
        client = frame["cliente"].iloc[i]
        one = build_features(frame.iloc[[i]], S, context=frame[frame["cliente"] == client])
        pd.testing.assert_frame_equal(one, features.iloc[[i]], check_dtype=False)


def test_lookup_encoding_equals_the_fitted_pipeline(data):
    frame, features, model = data
    sample = features.iloc[::7].copy()
    sample.iloc[0, sample.columns.get_loc("industrias")] = "IN-99"  # a code the encoder never saw
    sample.iloc[1, sample.columns.get_loc("client")] = "CL-99999"   # a client it never saw
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
    assert model.calibrate(p_small) == pytest.approx(model.calibrator.predict_proba(
        np.log(np.clip(p_small, 1e-4, 1 - 1e-4) / (1 - np.clip(p_small, 1e-4, 1 - 1e-4)))[:, None])[:, 1])


def test_positions_in_a_context_refuse_repeated_and_absent_ids():
    from salespred_assets.core.features import positions_in

    ids = np.array(["OP-3", "OP-1", "OP-2"], dtype=object)
    assert positions_in(ids, np.array(["OP-2", "OP-3"], dtype=object)).tolist() == [2, 0]
    with pytest.raises(ValueError, match="must contain every row"):
        positions_in(ids, np.array(["OP-9"], dtype=object))
    with pytest.raises(ValueError, match="more than once"):
        positions_in(np.array(["OP-1", "OP-1"], dtype=object), np.array(["OP-1"], dtype=object))


def test_one_scored_row_equals_its_row_of_the_batch(data):
    import datetime as dt

    from salespred_assets.core.scoring import score

    frame, _, model = data
    at = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    batch = score(model, frame, S, scored_at=at)
    for i in (3, 4321):
        context = frame[frame["cliente"] == frame["cliente"].iloc[i]]
        one = score(model, frame.iloc[[i]], S, context=context, scored_at=at)
        pd.testing.assert_frame_equal(one, batch.iloc[[i]].reset_index(drop=True))
    assert str(batch["scored_at"].dtype) == "datetime64[us, UTC]" and batch["grade"].dtype == "str"
