"""The figure we quote: a backtest as of a past date, scored the way sellers would have been answered.

:func:`backtest` rebuilds the data as it stood on the as-of date:

- **history**: only opportunities closed before it are history (outcomes decided later are hidden, and
  so are opportunities created later); the model is trained on that history only;
- **pipeline**: opportunities open on that date are scored at their age then, with the client history
  known then;
- **new**: opportunities created later are scored as at capture (age 0), with the client history the
  app would have read at their capture.

It reports, per group, ROC AUC, accuracy, Brier score and a calibration table by decile, and the
forecast: the expected number of wins and the expected won amount over the following months, against
what was actually won. Both the app's "will this one be won?" and the dashboard's "what is the open
pipeline worth?" are judged here, on data the model never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from salespred_assets.core.features import (
    AGE,
    build_features,
    closed_target,
    feature_spec,
    rewind,
    snapshots,
)
from salespred_assets.core.model import Rows, SearchConfig, Trained, cap_rows, train
from salespred_assets.core.schema import DatasetSchema
from salespred_assets.errors import SalespredError

HORIZONS = {"3 months": 91, "6 months": 182}   # forecast windows, in days after the as-of date
GROUPS = ("pipeline", "new")
DECILES = 10


@dataclass
class TrainingRows:
    """Snapshot rows of closed opportunities with their features, labels and grouping."""

    X: pd.DataFrame
    y: np.ndarray
    rows: Rows


def training_rows(frame: pd.DataFrame, schema: DatasetSchema, before: np.datetime64 | None = None,
                  changes: pd.DataFrame | None = None, limit: int | None = None) -> TrainingRows:
    """Every closed opportunity of ``frame`` (a random ``limit`` of them, when given) at capture and at its
    ages while open (as of days before ``before``), with the values it had then where ``changes`` (its
    recorded history) tells them."""
    snaps = snapshots(frame, schema, before=before, limit=limit)
    part = rewind(frame.iloc[snaps.rows], snaps.at, changes, schema)
    X = build_features(part, schema, at=snaps.at, context=frame).reset_index(drop=True)
    if schema.close:
        decided = part[schema.close].to_numpy(dtype="datetime64[D]")
    elif schema.created:
        decided = part[schema.created].to_numpy(dtype="datetime64[D]")
    else:  # no dates at all: the export's own order stands in for time
        decided = np.datetime64("2000-01-01", "D") + np.arange(len(part)).astype("timedelta64[D]")
    return TrainingRows(X, snaps.y, Rows(part[schema.id].to_numpy(dtype=object), decided))


def as_it_stood(frame: pd.DataFrame, schema: DatasetSchema, as_of: np.datetime64) -> pd.DataFrame:
    """The opportunities created before ``as_of`` as they stood then: outcomes decided later are hidden
    (the stage becomes open, the close date unknown)."""
    created = frame[schema.created].to_numpy(dtype="datetime64[D]")
    then = frame[created < as_of].copy()
    closed, _ = closed_target(then, schema)
    close = then[schema.close].to_numpy(dtype="datetime64[D]") if schema.close else None
    later = closed.to_numpy() & (close >= as_of if close is not None else False)
    then.loc[later, schema.stage] = schema.open[0] if schema.open else "open"
    if schema.close:
        then.loc[later, schema.close] = pd.NaT
    return then


def default_as_of(frame: pd.DataFrame, schema: DatasetSchema, share: float = 0.2) -> np.datetime64:
    """The creation day from which the newest ``share`` of closed opportunities were created."""
    if not schema.created:
        raise SalespredError("a backtest needs the schema's creation date (dates.created)")
    closed, _ = closed_target(frame, schema)
    days = np.sort(frame.loc[closed, schema.created].to_numpy(dtype="datetime64[D]"))
    if not len(days):
        raise SalespredError("no closed opportunities: nothing to backtest against")
    return days[min(int(np.floor(len(days) * (1 - share))), len(days) - 1)]


def group_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC AUC, accuracy, Brier score and log loss of probabilities ``p`` for outcomes ``y``."""
    y = np.asarray(y, dtype=int)
    out: dict[str, Any] = {"n": len(y), "win_rate": float(y.mean()) if len(y) else None,
                           "mean_probability": float(p.mean()) if len(p) else None}
    if len(y) and 0 < y.sum() < len(y):
        out.update({
            "roc_auc": float(roc_auc_score(y, p)),
            "accuracy": float(accuracy_score(y, p >= threshold)),
            "brier": float(brier_score_loss(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
        })
    return out


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = DECILES) -> pd.DataFrame:
    """Deciles of the predicted probability: how many, mean prediction, observed win rate."""
    if not len(y):
        return pd.DataFrame(columns=["decile", "n", "mean_probability", "win_rate", "low", "high"])
    order = np.argsort(p, kind="stable")
    parts = np.array_split(order, min(bins, len(p)))
    return pd.DataFrame([{"decile": i + 1, "n": len(ix), "mean_probability": float(p[ix].mean()),
                          "win_rate": float(np.mean(y[ix])), "low": float(p[ix].min()), "high": float(p[ix].max())}
                         for i, ix in enumerate(parts)])


def close_within(won_durations: np.ndarray, age: np.ndarray, window: np.ndarray) -> np.ndarray:
    """P(a won opportunity of age ``age`` closes within ``window`` more days), from past won durations."""
    d = np.sort(np.asarray(won_durations, dtype=float))
    if not len(d):
        return np.ones(len(age))
    still = len(d) - np.searchsorted(d, age, "left")              # durations >= age
    closed_by = np.searchsorted(d, age + window, "left") - np.searchsorted(d, age, "left")  # age <= D < age + window
    # Older than every past win: no past win says it will close soon (0 rather than a guess).
    return np.where(still > 0, closed_by / np.maximum(still, 1), 0.0)


@dataclass
class Backtest:
    as_of: np.datetime64
    trained: Trained
    metrics: dict[str, dict[str, Any]]            # group -> figures
    calibration: dict[str, pd.DataFrame]          # group -> decile table
    forecast: pd.DataFrame                        # one row per horizon
    predictions: pd.DataFrame                     # one row per scored opportunity
    yardstick: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def headline(self) -> dict[str, Any]:
        """The figures quoted everywhere: the new opportunities, scored as at capture."""
        return self.metrics["new"]

    def summary(self) -> dict[str, Any]:
        return {"as_of": str(self.as_of), "metrics": self.metrics, "yardstick": self.yardstick,
                "forecast": self.forecast.to_dict("records"),
                "calibration": {g: t.to_dict("records") for g, t in self.calibration.items()},
                "training": {k: self.trained.model.info[k] for k in ("rows", "opportunities", "holdout_from")},
                "params": self.trained.model.info["params"], "seconds": self.seconds}


def backtest(frame: pd.DataFrame, schema: DatasetSchema, as_of: np.datetime64 | str | None = None,
             config: SearchConfig | None = None, params: dict | None = None, yardstick: bool = True,
             changes: pd.DataFrame | None = None) -> Backtest:
    """Train on the history before ``as_of`` and score the pipeline then and what came after (module doc)."""
    config = config or SearchConfig()
    if not schema.created or not schema.close:
        raise SalespredError("a backtest needs the schema's creation and close dates (dates.created, dates.close): "
                             "without them nothing says what was known when, nor when an outcome was decided, and "
                             "salespred quotes only backtested figures; add them to the export and its schema file")
    # numpy accepts a datetime64 with a unit; its stubs have no overload for that pair.
    as_of = default_as_of(frame, schema) if as_of is None else np.datetime64(as_of, "D")  # type: ignore[call-overload]
    created = frame[schema.created].to_numpy(dtype="datetime64[D]")
    if not (created < as_of).any() or not (created >= as_of).any():
        raise SalespredError(f"as-of date {as_of} leaves nothing before or nothing after it "
                             f"(opportunities were created from {created.min()} to {created.max()})")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    then = as_it_stood(frame, schema, as_of)
    # Every recorded change, later ones included: rewinding a row to a past day undoes what came after it.
    rows = training_rows(then, schema, changes=changes, limit=config.max_rows)
    seconds["features_s"] = time.perf_counter() - started
    started = time.perf_counter()
    trained = train(rows.X, rows.y, feature_spec(schema), rows.rows, config, params=params)
    seconds["train_s"] = time.perf_counter() - started

    started = time.perf_counter()
    scored, X_scored = _score_groups(frame, then, schema, as_of, trained, changes)
    seconds["score_s"] = time.perf_counter() - started
    known = scored["outcome"] != "open"
    metrics, calibration = {}, {}
    for group in GROUPS:
        part = scored[known & (scored["group"] == group)]
        y, p = (part["outcome"] == "won").to_numpy(int), part["probability"].to_numpy()
        metrics[group] = group_metrics(y, p, trained.model.threshold)
        calibration[group] = calibration_table(y, p)
    won_durations = _won_durations(then, schema)
    forecast = _forecast(scored, schema, as_of, won_durations)
    hgb: dict[str, dict[str, Any]] = {}
    if yardstick:
        started = time.perf_counter()
        hgb = _yardstick(rows, scored, X_scored, trained, config)
        seconds["yardstick_s"] = time.perf_counter() - started
    return Backtest(as_of, trained, metrics, calibration, forecast, scored, hgb, seconds)


def _score_groups(frame: pd.DataFrame, then: pd.DataFrame, schema: DatasetSchema, as_of: np.datetime64,
                  trained: Trained, changes: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pipeline open on ``as_of`` (scored as of then) and the opportunities created later (at capture)."""
    model = trained.model
    closed, _ = closed_target(then, schema)
    pipeline = then[~closed.to_numpy()]
    created = frame[schema.created].to_numpy(dtype="datetime64[D]")
    new = frame[created >= as_of]
    parts, features = [], []
    for group, rows, at, context in (("pipeline", pipeline, np.full(len(pipeline), as_of), then),
                                     ("new", new, None, frame)):
        if not len(rows):
            continue
        when = at if at is not None else rows[schema.created].to_numpy(dtype="datetime64[D]")
        X = build_features(rewind(rows, when, changes, schema), schema, at=at, context=context)
        truth = frame.set_index(schema.id).loc[rows[schema.id]]
        won = truth[schema.stage].isin(schema.won).to_numpy()
        lost = truth[schema.stage].isin(schema.lost).to_numpy()
        parts.append(pd.DataFrame({
            "id": rows[schema.id].to_numpy(dtype=object),
            "group": group,
            "scored_as_of": (np.full(len(rows), as_of) if at is not None
                             else rows[schema.created].to_numpy(dtype="datetime64[D]")),
            "age_at_scoring": X[AGE].to_numpy() if AGE in X else np.zeros(len(rows)),
            "probability": model.probability(X),
            "outcome": np.where(won, "won", np.where(lost, "lost", "open")),
            "closed_on": (truth[schema.close].to_numpy(dtype="datetime64[D]") if schema.close
                          else np.full(len(rows), np.datetime64("NaT"), dtype="datetime64[D]")),
            "amount": truth[schema.amount].to_numpy(dtype=float) if schema.amount else np.ones(len(rows)),
        }))
        features.append(X)
    return pd.concat(parts, ignore_index=True), pd.concat(features, ignore_index=True)


def _won_durations(then: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    if not schema.close:
        return np.zeros(0)
    won = then[then[schema.stage].isin(schema.won)]
    return (won[schema.close].to_numpy(dtype="datetime64[D]")
            - won[schema.created].to_numpy(dtype="datetime64[D]")).astype("int64").astype(float)


def _forecast(scored: pd.DataFrame, schema: DatasetSchema, as_of: np.datetime64,
              won_durations: np.ndarray) -> pd.DataFrame:
    """Expected wins and won amount within each horizon against what was actually won in it.

    The cohort is the pipeline open on the as-of date and the opportunities created within the window,
    each scored when it was first seen. An opportunity counts as expected won within the window with
    probability p x P(a won deal of its age closes within the rest of the window), the second factor
    from the history's won durations."""
    out = []
    for name, days in HORIZONS.items():
        end = as_of + np.timedelta64(days, "D")
        seen = scored["scored_as_of"].to_numpy(dtype="datetime64[D]")
        cohort = scored[(scored["group"] == "pipeline") | (seen < end)]
        window = (end - cohort["scored_as_of"].to_numpy(dtype="datetime64[D]")).astype("int64").astype(float)
        q = close_within(won_durations, cohort["age_at_scoring"].to_numpy(), window)
        p = cohort["probability"].to_numpy() * q
        closed_on = cohort["closed_on"].to_numpy(dtype="datetime64[D]")
        won_in = (cohort["outcome"].to_numpy() == "won") & ~np.isnat(closed_on) & (closed_on < end)
        amount = cohort["amount"].to_numpy(dtype=float)
        expected_amount, actual_amount = float((p * amount).sum()), float(amount[won_in].sum())
        out.append({
            "horizon": name, "until": str(end), "opportunities": len(cohort),
            "expected_wins": float(p.sum()), "actual_wins": int(won_in.sum()),
            "expected_won_amount": expected_amount, "actual_won_amount": actual_amount,
            "amount_error": (expected_amount - actual_amount) / actual_amount if actual_amount else None,
        })
    return pd.DataFrame(out)


def _yardstick(rows: TrainingRows, scored: pd.DataFrame, X_scored: pd.DataFrame, trained: Trained,
               config: SearchConfig) -> dict[str, dict[str, Any]]:
    """A HistGradientBoosting model on the same inputs, rows and weights, scored on the same groups."""
    model = trained.model
    keep = cap_rows(len(rows.y), config)
    X = model.transform(rows.X.iloc[keep])
    hgb = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                         random_state=config.random_state)
    # One OpenMP thread: on a small machine its thread pool costs more than it gives (5x slower on 2 cores).
    with threadpool_limits(1, "openmp"):
        hgb.fit(X, rows.y[keep], sample_weight=Rows(rows.rows.groups[keep], rows.rows.decided[keep]).weights())
    p = hgb.predict_proba(model.transform(X_scored))[:, 1]
    known = (scored["outcome"] != "open").to_numpy()
    out = {}
    for group in GROUPS:
        mask = known & (scored["group"] == group).to_numpy()
        out[group] = group_metrics((scored["outcome"][mask] == "won").to_numpy(int), p[mask], 0.5)
    return out
