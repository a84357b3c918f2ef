"""Model stages: training (with the backtest's quality figures) and scoring one row at a time."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.bench.harness import StageResult, percentile, repeat, timed
from salespred_assets.bench.stages.common import (
    REFERENCE_CSV,
    Scale,
    Servers,
)
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.schema import DEFAULT_SCHEMA

BACKTEST_AS_OF = "2022-04-07"  # from here on, the newest fifth of the reference data's closed opportunities


def stage_training(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("training", f"Training and the backtest as of {BACKTEST_AS_OF} on the reference data")
    if not REFERENCE_CSV.exists():
        r.skipped = f"the reference data is absent ({REFERENCE_CSV})"
        return r
    from salespred_assets.core.evaluation import evaluate
    from salespred_assets.core.model import SearchConfig
    from salespred_assets.core.training import train_production

    raw = pd.read_csv(REFERENCE_CSV,
                      dtype=dict.fromkeys(DEFAULT_SCHEMA.text_fields + list(DEFAULT_SCHEMA.dates), "str"),
                      keep_default_na=False)
    frame = validate(records_frame(raw.to_dict("records"), DEFAULT_SCHEMA), DEFAULT_SCHEMA).frame
    config = SearchConfig.preset("full" if scale.name == "full" else "fast")
    seconds, reports = [], []
    for _ in range(scale.repeats):
        took, report = timed(lambda: train_production(frame, DEFAULT_SCHEMA, config, as_of=BACKTEST_AS_OF))
        seconds.append(took)
        reports.append(report)
    model = reports[-1].model
    state["reference_model"], state["reference_frame"] = model, frame
    for group, title in (("new", "new opportunities, as at capture"),
                         ("pipeline", "pipeline open on the date, at its age")):
        for key, label in (("roc_auc", "ROC AUC"), ("accuracy", "accuracy"), ("brier", "Brier score"),
                           ("mean_probability", "mean probability"), ("win_rate", "observed win rate")):
            r.figure(f"backtest, {title}: {label}", "", [rep.backtest.metrics[group][key] for rep in reports])
        r.figure(f"yardstick HistGradientBoosting, {title}: ROC AUC", "",
                 [rep.backtest.yardstick[group]["roc_auc"] for rep in reports])
        r.figure(f"yardstick HistGradientBoosting, {title}: Brier score", "",
                 [rep.backtest.yardstick[group]["brier"] for rep in reports])
    forecasts = [rep.backtest.forecast.set_index("horizon") for rep in reports]
    for horizon in ("3 months", "6 months"):
        r.figure(f"forecast {horizon}: expected wins", "", [f.loc[horizon, "expected_wins"] for f in forecasts])
        r.figure(f"forecast {horizon}: actual wins", "", [f.loc[horizon, "actual_wins"] for f in forecasts])
        r.figure(f"forecast {horizon}: expected won TCV", "USD",
                 [f.loc[horizon, "expected_won_amount"] for f in forecasts])
        r.figure(f"forecast {horizon}: actual won TCV", "USD", [f.loc[horizon, "actual_won_amount"] for f in forecasts])
        r.figure(f"forecast {horizon}: won TCV error", "", [f.loc[horizon, "amount_error"] for f in forecasts])
    r.figure("training with snapshots (backtest search + yardstick + production fit): wall", "s", seconds)
    r.figure("snapshot rows learned from (production)", "", [rep.model.info["rows_available"] for rep in reports])
    calibration = reports[-1].backtest.calibration["new"]
    r.notes.append("Calibration of the new opportunities by decile (mean probability → observed win rate): "
                   + ", ".join(f"{row.mean_probability:.2f} → {row.win_rate:.2f}" for row in calibration.itertuples()))
    # The original protocol, for comparison only: a random split of closed rows, with the final duration.
    ev = evaluate(frame, DEFAULT_SCHEMA, config, yardstick=False)
    r.figure("original protocol (random split, inputs known only at close): ROC AUC", "", [ev.metrics["roc_auc"]])
    r.figure("original protocol: accuracy", "", [ev.metrics["accuracy"]])
    if scale.name == "full":
        head = [rep.backtest.metrics["new"] for rep in reports]
        r.goal("training with its snapshots ≤ 60 s on 2 cores", float(np.median(seconds)), 60, "at_most", "s")
        r.goal("backtest ROC AUC (new opportunities) ≥ 0.82", float(np.median([h["roc_auc"] for h in head])), 0.82,
               "at_least")
        r.goal("backtest Brier score (new opportunities) ≤ 0.16", float(np.median([h["brier"] for h in head])), 0.16,
               "at_most")
        r.goal("3-month won-TCV forecast within ±10%",
               float(np.median([abs(f.loc["3 months", "amount_error"]) for f in forecasts])), 0.10, "at_most")
    r.notes.extend(quality_notes(reports[-1].backtest, ev.metrics))
    r.notes.append("The backtest trains only on the history closed before the date, scores the pipeline open on "
                   "it at its age then and every opportunity created later as at capture; no input is final only "
                   "at close. The original protocol's figure reads the final duration (`edad_oferta`), which a "
                   "seller never has: it is reported for comparison, never quoted.")
    return r


def quality_notes(bt: Any, original: dict[str, Any]) -> list[str]:
    """What the backtest's figures say, for each quality goal it misses: by how much, and what bounds it."""
    new, hgb = bt.metrics["new"], bt.yardstick.get("new") or {}
    notes = []
    if new["roc_auc"] < 0.82:
        notes.append(f"ROC AUC of the new opportunities: {new['roc_auc']:.3f}, {0.82 - new['roc_auc']:.3f} short of "
                     "0.82. The HistGradientBoosting yardstick on the same inputs reaches "
                     f"{hgb.get('roc_auc', float('nan')):.3f}, so the bound is the inputs, not the forest: what is "
                     "known at capture (the codes, the amounts, the client's history) separates won from lost this "
                     f"well. The original protocol's {original['roc_auc']:.3f} comes from the final duration, a field "
                     "a seller never has at capture.")
    preds = bt.predictions[bt.predictions["group"] == "new"]
    still_open = int((preds["outcome"] == "open").sum())
    notes.append(f"Of the {len(preds):,} opportunities created after the date, {still_open:,} were still open at the "
                 "export and cannot be judged; the slow ones (mostly lost) are among them, so the observed win rate "
                 f"of the judged ones ({new['win_rate']:.3f}) overstates the eventual one, and the model's mean "
                 f"probability ({new['mean_probability']:.3f}), trained so that every opportunity open at an age "
                 "counts once at that age, is meant for all of them.")
    if new["brier"] > 0.16:
        notes.append(f"Brier score of the new opportunities: {new['brier']:.4f}, {new['brier'] - 0.16:.4f} above 0.16, "
                     "part of it the censoring above.")
    three = bt.forecast.set_index("horizon").loc["3 months"]
    if abs(three["amount_error"]) > 0.10:
        notes.append(f"3-month won-TCV forecast: {three['amount_error']:+.1%} ({three['expected_won_amount']:,.0f} "
                     f"expected, {three['actual_won_amount']:,.0f} won). A handful of deals carry most of the TCV "
                     "(up to 486 M for one), so one large deal won or lost moves the total by more than 10%; "
                     f"the count of wins was {three['expected_wins']:.0f} expected against {three['actual_wins']} won.")
    return notes


def stage_single_row(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("single_row", "Scoring with the production forest")
    from salespred_assets.core.scoring import score

    model = state.get("reference_model")
    if model is None:
        r.skipped = "needs the model of the training stage (reference data absent)"
        return r
    frame = state["reference_frame"]  # set with the model
    schema = DEFAULT_SCHEMA
    open_rows = frame[~frame["etapas"].isin(["Won", "Lost"])]
    picks = open_rows.sample(min(scale.single_rows, len(open_rows)), random_state=1,
                             replace=len(open_rows) < scale.single_rows)
    by_client = dict(iter(frame.groupby("cliente")))  # iter(): a GroupBy has a `keys` attribute dict() would call
    for i in range(20):  # warm up
        row = picks.iloc[[i % len(picks)]]
        score(model, row, schema, context=by_client[row["cliente"].iloc[0]])
    latencies = []
    for i in range(len(picks)):
        row = picks.iloc[[i]]
        context = by_client[row["cliente"].iloc[0]]
        started = time.perf_counter()
        score(model, row, schema, context=context)
        latencies.append((time.perf_counter() - started) * 1000)
    batch = repeat(lambda: score(model, frame, schema), scale.repeats)
    r.figure("trees in the forest", "", [model.forest.n_estimators])
    r.figure("one opportunity (features, forest, explanation): p50", "ms", [percentile(latencies, 50)])
    r.figure("one opportunity: p99", "ms", [percentile(latencies, 99)])
    r.figure(f"batch of {len(frame):,} with explanations", "rows/s", [len(frame) / s for s in batch])
    r.goal("single-row scoring p99 ≤ 5 ms", percentile(latencies, 99), 5.0, "at_most", "ms")
    r.notes.append("One code path: the same `score()` serves a batch and one row. For a handful of rows the "
                   "forest is walked for all trees at once in NumPy (a leaf is its own child, so each level is "
                   "one gather per array, and the walk stops once every tree has reached a leaf) and the leaf "
                   "contributions come from one precomputed table; the fitted encoders are applied as "
                   "dictionary lookups. What is left of one row's cost is mostly pandas' fixed cost per call: "
                   "the frame's columns are taken out once, client facts are a few dozen vectorised steps over "
                   "the client's rows, and the result is one frame built from typed arrays.")
    return r
