"""Training for production: a backtest as of a past date, then the same procedure on every closed row.

The backtest's figures describe the procedure (snapshots, search, fit, calibration, threshold) on data it
never saw, the way sellers would have been answered; the production model repeats that procedure, with
the hyperparameters the backtest's search chose, on the whole history, so that it learns from all of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core import card, drift, plots, reasons
from salespred_assets.core.backtest import Backtest, backtest, training_rows
from salespred_assets.core.features import feature_spec
from salespred_assets.core.model import SearchConfig, Trained, WinModel, train
from salespred_assets.core.schema import DatasetSchema

HEADLINE = ("roc_auc", "accuracy", "brier", "log_loss", "n", "win_rate", "mean_probability")


@dataclass
class TrainingReport:
    model: WinModel
    backtest: Backtest
    seconds: dict[str, float]
    plots: dict[str, bytes]


def train_production(frame: pd.DataFrame, schema: DatasetSchema, config: SearchConfig | None = None,
                     yardstick: bool = True, as_of: np.datetime64 | str | None = None,
                     changes: pd.DataFrame | None = None) -> TrainingReport:
    """Backtest as of ``as_of`` (default: where the newest fifth of closed opportunities begins), then train
    the production model on every closed opportunity with the hyperparameters the backtest chose.

    ``changes`` is the opportunities' change history (see :func:`salespred_assets.core.features.rewind`):
    where it exists, snapshots use the values an opportunity had at the time, not its final ones.
    """
    config = config or SearchConfig()
    started = time.perf_counter()
    bt = backtest(frame, schema, as_of, config, yardstick=yardstick, changes=changes)
    params = dict(bt.trained.model.info["params"])
    fit_started = time.perf_counter()
    rows = training_rows(frame, schema, changes=changes, limit=config.max_rows)
    final = train(rows.X, rows.y, feature_spec(schema), rows.rows, config, params=params).model
    seconds = {**{f"backtest_{k}": v for k, v in bt.seconds.items()},
               "production_fit_s": time.perf_counter() - fit_started, "total_s": time.perf_counter() - started}
    new = bt.predictions[(bt.predictions["group"] == "new") & (bt.predictions["outcome"] != "open")]
    y_new, p_new = (new["outcome"] == "won").to_numpy(int), new["probability"].to_numpy()
    figures = {
        "roc": plots.roc_png(y_new, p_new, bt.headline.get("roc_auc", float("nan"))),
        "calibration": plots.calibration_png(y_new, p_new, None),
        "importance": plots.importance_png(final.importances()),
    }
    final.info.update({
        # The figures quoted everywhere: the backtest's new opportunities, scored as at capture.
        "metrics": {k: bt.headline.get(k) for k in HEADLINE} | {"threshold": final.threshold},
        "backtest": bt.summary(),
        "search_seconds": bt.trained.model.info["timings"].get("search_s"),
        "backtest_version": bt.trained.model.version,
        "schema": schema.to_dict(),
        "won_days": reasons.won_days(frame, schema),  # how long won deals usually take, for the reasons
        # What the drift monitor compares recent opportunities with: the training snapshots at capture.
        "reference": drift.reference_profile(rows.X[rows.X["age_days"] == 0] if "age_days" in rows.X else rows.X,
                                             feature_spec(schema)),
    })
    final.info["card"] = card.model_card(final.info, bt, final.importances())
    return TrainingReport(final, bt, seconds, figures)


def fit(frame: pd.DataFrame, schema: DatasetSchema, config: SearchConfig | None = None, params: dict | None = None,
        changes: pd.DataFrame | None = None) -> Trained:
    """The training procedure on every closed opportunity of ``frame``, without a backtest (tests, quick fits)."""
    config = config or SearchConfig()
    rows = training_rows(frame, schema, changes=changes, limit=config.max_rows)
    trained = train(rows.X, rows.y, feature_spec(schema), rows.rows, config, params=params)
    trained.model.info["won_days"] = reasons.won_days(frame, schema)
    return trained


def gate_backtest(frame: pd.DataFrame, schema: DatasetSchema, as_of: str, params: dict[str, Any],
                  config: SearchConfig | None = None, changes: pd.DataFrame | None = None) -> dict[str, Any]:
    """Another model's hyperparameters through the same backtest (the promotion gate's comparison)."""
    bt = backtest(frame, schema, as_of, config, params=params, yardstick=False, changes=changes)
    return {k: bt.headline.get(k) for k in HEADLINE}
