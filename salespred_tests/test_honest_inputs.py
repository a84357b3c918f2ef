"""Every model input is known when the prediction is read: nothing final only at close, nothing from the future."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from salespred_assets.core import synthetic
from salespred_assets.core.backtest import training_rows
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.features import SNAPSHOT_AGES, build_features, feature_spec
from salespred_assets.core.model import SearchConfig
from salespred_assets.core.schema import DEFAULT_SCHEMA as S, DatasetSchema
from salespred_assets.core.scoring import score
from salespred_assets.core.training import fit
from salespred_assets.errors import SalespredError
from salespred_tests.helpers import AS_OF


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    docs = [d for chunk in synthetic.generate(5000, seed=23, as_of=AS_OF) for d in chunk]
    return validate(records_frame(docs, S), S).frame


def test_fields_final_only_at_close_never_feed_the_model():
    spec = feature_spec(S)
    assert "edad_oferta" not in spec.columns and S.close not in spec.columns and S.stage not in spec.columns
    assert S.timing("edad_oferta") == "at_close" and S.timing(S.close) == "at_close"
    assert S.timing("acv") == "capture" and S.timing(S.stage) == "while_open"
    # A schema that marks the amount final at close loses it, and every feature derived from it.
    late_amount = DatasetSchema.from_dict({**S.to_dict(), "final_at_close": ["edad_oferta", "tcv"]})
    columns = feature_spec(late_amount).columns
    assert "tcv" not in columns and "amount_vs_client" not in columns and "acv" in columns


def test_schema_files_validate_the_timing_keys():
    base = S.to_dict()
    with pytest.raises(SalespredError, match="not fields of the schema"):
        DatasetSchema.from_dict({**base, "final_at_close": ["no_such_field"]})
    with pytest.raises(SalespredError, match="cannot be final_at_close"):
        DatasetSchema.from_dict({**base, "final_at_close": ["fecha_creacion_oportunidad"]})
    with pytest.raises(SalespredError, match="both as final_at_close and as while_open"):
        DatasetSchema.from_dict({**base, "final_at_close": ["acv"], "while_open": ["acv"]})


def _rows_of(rows, opportunity: str) -> pd.DataFrame:
    mine = rows.rows.groups == opportunity
    return rows.X[mine].reset_index(drop=True)


def test_moving_a_close_date_later_than_the_snapshots_changes_none_of_their_inputs(frame):
    closed = frame[frame[S.stage].isin(["Won", "Lost"])]
    duration = (closed[S.close] - closed[S.created]).dt.days
    # Opportunities whose close date can move 10 days either way without crossing a snapshot age.
    ages = np.array(SNAPSHOT_AGES)
    movable = closed[[not ((ages > d - 10) & (ages <= d + 10)).any() for d in duration]]
    picked = movable[S.id].iloc[:8].tolist()
    before = training_rows(frame, S)
    for opportunity in picked:  # one at a time: another's close date is its client's history, legitimately
        for delta in (-10, 10):
            moved = frame.copy()
            hit = moved[S.id] == opportunity
            moved.loc[hit, S.close] = moved.loc[hit, S.close] + pd.Timedelta(days=delta)
            moved.loc[hit, "edad_oferta"] = moved.loc[hit, "edad_oferta"] + delta  # the final duration moves too
            after = training_rows(moved, S)
            assert len(_rows_of(after, opportunity)) > 0
            pd.testing.assert_frame_equal(_rows_of(before, opportunity), _rows_of(after, opportunity))


def test_no_feature_reads_a_row_created_later_or_an_outcome_decided_later(frame):
    rng = np.random.default_rng(0)
    rows = rng.choice(len(frame), size=40, replace=False)
    at = (frame[S.created].to_numpy(dtype="datetime64[D]")[rows]
          + rng.integers(0, 200, size=len(rows)).astype("timedelta64[D]"))
    target = frame.iloc[rows]
    honest = build_features(target, S, at=at, context=frame)
    for i, (position, day) in enumerate(zip(rows, at, strict=True)):
        created_i = np.datetime64(frame[S.created].iloc[position], "D")
        # Rewrite the future: rows created on or after this one's day change everything but their client,
        # and outcomes decided on or after the scored day flip.
        future = frame.copy()
        later = (future[S.created].to_numpy(dtype="datetime64[D]") >= created_i) & (np.arange(len(frame)) != position)
        future.loc[later, "tcv"] = future.loc[later, "tcv"] * 7 + 1
        future.loc[later, "unidad_negocio"] = "BU-99"
        decided_late = future[S.close].to_numpy(dtype="datetime64[D]") >= day
        closed = future[S.stage].isin(["Won", "Lost"]).to_numpy()
        flip = decided_late & closed & later
        future.loc[flip, S.stage] = np.where(future.loc[flip, S.stage] == "Won", "Lost", "Won")
        still_open = decided_late & closed & ~later
        future.loc[still_open, S.stage] = np.where(future.loc[still_open, S.stage] == "Won", "Lost", "Won")
        again = build_features(frame.iloc[[position]], S, at=np.array([day]), context=future)
        pd.testing.assert_frame_equal(again.reset_index(drop=True), honest.iloc[[i]].reset_index(drop=True))


def test_a_capture_score_does_not_move_with_the_close_date_the_seller_types(frame):
    model = fit(frame, S, SearchConfig.preset("fast"), params={"n_estimators": 40, "min_samples_leaf": 3}).model
    today = pd.Timestamp("2026-11-30")
    template = frame[frame[S.stage] == "S1"].iloc[[0]].copy()
    template[S.created] = today
    template["edad_oferta"] = 0.0
    probabilities = set()
    for days in (7, 30, 180, 365, 900):
        capture = template.copy()
        capture[S.close] = today + pd.Timedelta(days=days)
        capture["edad_oferta"] = float(days)  # even a planned duration written in the old field changes nothing
        context = pd.concat([frame, capture], ignore_index=True)
        scored = score(model, capture, S, context=context, scored_at=today.to_pydatetime().replace(tzinfo=dt.UTC))
        probabilities.add(round(float(scored["probability"].iloc[0]), 12))
    assert len(probabilities) == 1


def test_snapshots_use_the_values_the_history_recorded_at_the_time(frame):
    closed = frame[frame[S.stage].isin(["Won", "Lost"])]
    long = closed[(closed[S.close] - closed[S.created]).dt.days > 100].iloc[0]
    number, created = long[S.id], long[S.created]
    # Its amount was raised 45 days after creation (say, to the value it closed with); the stage moved too.
    changed_at = pd.Timestamp(created) + pd.Timedelta(days=45)
    changes = pd.DataFrame({
        "opportunity": [number, number, number],
        "at": pd.to_datetime([created, changed_at, changed_at], utc=True),
        "field": ["acv", "acv", S.stage],
        "before": [None, 1234.0, "S2"],
        "after": [long["acv"] * 0.5, long["acv"], "S3"],
        "source": ["capture", "app", "app"],
    })
    plain, rewound = training_rows(frame, S), training_rows(frame, S, changes=changes)
    mine = plain.rows.groups == number
    ages = plain.X.loc[mine, "age_days"].to_numpy()
    before_change = ages < 45
    assert before_change.any() and (~before_change).any()
    np.testing.assert_array_equal(rewound.X.loc[mine, "acv"].to_numpy()[before_change], 1234.0)
    np.testing.assert_array_equal(rewound.X.loc[mine, "acv"].to_numpy()[~before_change], long["acv"])
    # Only this opportunity's own snapshots are rewound (others' client aggregates read the stored amounts).
    others = plain.X["client_prior_opportunities"].index[~mine]
    pd.testing.assert_frame_equal(plain.X.loc[others], rewound.X.loc[others])


def test_an_outcome_decided_after_every_other_date_stays_with_its_own_client():
    """Keys are (client, day): a close date past every creation and scoring day must not spill into the next client."""
    day = pd.Timestamp
    frame = pd.DataFrame({
        S.id: ["OP-A1", "OP-B1", "OP-B2"], S.client: ["CL-A", "CL-B", "CL-B"], S.stage: ["Won", "S1", "S1"],
        "unidad_negocio": "BU-01", "tipos": "TY-00", "regiones": "RE-00", "territorios": "TE-00",
        "industrias": "IN-00", "lead_source": "LS-00", S.seller: "NV-0", "acv": 10.0, "tcv": 10.0,
        "margen_ganancia": 0.1, "edad_oferta": 0.0,
        S.created: [day("2020-01-01"), day("2020-01-05"), day("2020-01-06")],
        S.close: [day("2020-02-10"), day("2020-06-01"), day("2020-06-01")],
    })
    features = build_features(frame, S, at=np.array(["2020-02-01"] * 3, dtype="datetime64[D]"))
    assert features["client_closed_before"].tolist() == [0.0, 0.0, 0.0]
    assert features["client_won_before"].tolist() == [0.0, 0.0, 0.0]
