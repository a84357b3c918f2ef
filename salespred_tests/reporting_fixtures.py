"""Shared by the reporting tests: a scored frame without MongoDB, and the same tile figures computed with pandas."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import sqlalchemy as sa

from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.model import SearchConfig, WinModel
from salespred_assets.core.schema import DEFAULT_SCHEMA as S
from salespred_assets.core.scoring import score
from salespred_assets.core.training import fit
from salespred_assets.sql import tables, views
from salespred_tests.helpers import AS_OF

# A fixed scoring time a few weeks after the synthetic data's as-of date: some open opportunities are
# then overdue, the others spread over the horizons; nothing depends on the wall clock.
SCORED_AT = dt.datetime(2026, 12, 15, 9, 30, tzinfo=dt.UTC)
HISTORY_COLUMNS = ["opportunity_id", "model_version", "scored_at", "probability", "score", "grade", "outcome"]


def source_frame(n: int = 800, seed: int = 11) -> pd.DataFrame:
    docs = [d for chunk in synthetic.generate(n, seed=seed, as_of=AS_OF) for d in chunk]
    return validate(records_frame(docs, S), S).frame


def tiny_model(frame: pd.DataFrame, trees: int = 30) -> WinModel:
    return fit(frame, S, SearchConfig.preset("fast"),
               params={"rf__n_estimators": trees, "rf__min_samples_leaf": 3}).model


def scored(frame: pd.DataFrame, model: WinModel, scored_at: dt.datetime = SCORED_AT) -> pd.DataFrame:
    return score(model, frame, S, scored_at=scored_at)


def sellers_frame() -> pd.DataFrame:
    rows = [{"numero_vendedor": n, "username": u, "first_name": f, "last_name": last, "title": t,
             "full_name": f"{f} {last}"} for n, u, f, last, t in synthetic.DEMO_SELLERS]
    return pd.DataFrame(rows)


def reporting_database(engine: sa.Engine) -> pd.DataFrame:
    """A reporting database as a full refresh leaves it (fact, sellers, one promoted model version, history,
    views) for the pages that read it; returns the scored rows."""
    from salespred_assets.sql import writer

    frame = source_frame()
    preds = scored(frame, tiny_model(frame))
    version = str(preds["model_version"].iloc[0])
    t = tables.all_tables(sa.MetaData(), S)
    writer.write(engine, t[tables.FACT_OPPORTUNITY], preds)
    writer.write(engine, t[tables.DIM_SELLER], sellers_frame())
    writer.write(engine, t[tables.DIM_MODEL_VERSION], pd.DataFrame([{
        "model_version": version, "trained_at": SCORED_AT, "status": "promoted", "is_current": True,
        "ever_promoted": True, "times_promoted": 1, "promoted_at": SCORED_AT, "retired_at": pd.NaT,
        "roc_auc": 0.8125, "accuracy": 0.7625, "brier": 0.17, "f1": 0.8, "threshold": 0.5, "training_rows": 700,
        "hyperparameters": "{}", "metrics": "{}"}]))
    writer.write(engine, t[tables.FACT_PREDICTION_HISTORY], preds[HISTORY_COLUMNS], mode="append")
    views.refresh(engine, S)
    return preds


def reset(engine: sa.Engine) -> None:
    """Drop the reporting views and tables (server databases are shared by every test of a session)."""
    with engine.begin() as conn:
        views.drop(conn, views.NAMES)
        for table in reversed(list(tables.all_tables(sa.MetaData()).values())):
            table.drop(conn, checkfirst=True)
        tables.dashboard_figures(sa.MetaData()).drop(conn, checkfirst=True)


# ---- the tiles, from the source frame, with pandas only ------------------------------------------------------

def _open(preds: pd.DataFrame) -> pd.DataFrame:
    rows = preds[preds["outcome"] == "open"].copy()
    rows["expected_tcv"] = rows["tcv"] * rows["probability"]
    return rows


def _sums(grouped) -> pd.DataFrame:
    return grouped.agg(opportunities=("tcv", "size"), tcv=("tcv", "sum"), expected_tcv=("expected_tcv", "sum"))


def expected_closed(preds: pd.DataFrame) -> pd.DataFrame:
    closed = preds[preds["outcome"].isin(["won", "lost"])]
    return closed.groupby("outcome").agg(opportunities=("tcv", "size"), tcv=("tcv", "sum"))


def expected_pipeline(preds: pd.DataFrame) -> pd.DataFrame:
    rows = _open(preds)
    as_of = pd.Timestamp(preds["scored_at"].max())
    close = rows[S.close]
    ahead = (close.dt.year * 12 + close.dt.month) - (as_of.year * 12 + as_of.month)
    rows["horizon_order"] = np.select([ahead < 0, ahead < 3, ahead < 6, ahead < 12], [1, 2, 3, 4], 5)
    return _sums(rows.groupby("horizon_order"))


def expected_by_month(preds: pd.DataFrame) -> pd.DataFrame:
    rows = _open(preds)
    rows["close_month_key"] = rows[S.close].dt.year * 100 + rows[S.close].dt.month
    return _sums(rows.groupby("close_month_key"))


def expected_by_region(preds: pd.DataFrame) -> pd.DataFrame:
    return _sums(_open(preds).groupby("regiones"))


def expected_matrix(preds: pd.DataFrame, sellers: pd.DataFrame) -> pd.DataFrame:
    rows = _open(preds).merge(sellers[["numero_vendedor", "full_name"]], on="numero_vendedor", how="left")
    rows["seller_name"] = rows["full_name"].fillna(rows["numero_vendedor"])
    return _sums(rows.groupby(["numero_vendedor", "seller_name", "etapas"]))


def assert_frames_close(got: pd.DataFrame, want: pd.DataFrame, what: str) -> None:
    """Same index, counts equal, amounts equal to 1e-9 relative (summation order differs by dialect)."""
    got = got.sort_index()
    want = want.sort_index()
    assert [tuple(map(str, i)) if isinstance(i, tuple) else str(i) for i in got.index] == \
        [tuple(map(str, i)) if isinstance(i, tuple) else str(i) for i in want.index], what
    assert got["opportunities"].astype(int).tolist() == want["opportunities"].astype(int).tolist(), what
    for col in [c for c in ("tcv", "expected_tcv") if c in want.columns]:
        np.testing.assert_allclose(got[col].astype(float).to_numpy(), want[col].to_numpy(), rtol=1e-9, err_msg=what)
