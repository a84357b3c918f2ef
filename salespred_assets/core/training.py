"""Training for production: evaluate on the original protocol, then refit on every closed row.

The held-out figures describe the procedure (search, fit, calibration, threshold) on data it never
saw; the production model repeats that procedure, with the chosen hyperparameters, on all closed
opportunities, so that it learns from the whole history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from salespred_assets.core import card, drift, plots
from salespred_assets.core.evaluation import Evaluation, evaluate
from salespred_assets.core.features import build_features, closed_target, feature_spec
from salespred_assets.core.model import SearchConfig, WinModel, train
from salespred_assets.core.schema import DatasetSchema


@dataclass
class TrainingReport:
    model: WinModel
    evaluation: Evaluation
    seconds: dict[str, float]
    plots: dict[str, bytes]

    @property
    def summary(self) -> dict[str, Any]:
        return {"metrics": self.evaluation.metrics, "raw_metrics": self.evaluation.raw_metrics,
                "yardstick": self.evaluation.yardstick}


def train_production(frame: pd.DataFrame, schema: DatasetSchema, config: SearchConfig | None = None,
                     yardstick: bool = True, features: pd.DataFrame | None = None) -> TrainingReport:
    config = config or SearchConfig()
    started = time.perf_counter()
    features = build_features(frame, schema) if features is None else features
    ev = evaluate(frame, schema, config, yardstick=yardstick, features=features)
    params = dict(ev.trained.model.info["params"])
    closed, y = closed_target(frame, schema)
    final = train(features[closed.to_numpy()], y, feature_spec(schema), config, params=params).model
    seconds = {**ev.seconds, "total_s": time.perf_counter() - started}

    y_te, p_te, raw_te = ev.test["y_true"].to_numpy(), ev.test["probability"].to_numpy(), ev.test["raw_probability"].to_numpy()
    figures = {
        "roc": plots.roc_png(y_te, p_te, ev.metrics["roc_auc"]),
        "calibration": plots.calibration_png(y_te, p_te, raw_te),
        "importance": plots.importance_png(final.importances()),
    }
    final.info.update({
        "metrics": ev.metrics,
        "raw_metrics": ev.raw_metrics,
        "yardstick": ev.yardstick,
        "search_seconds": ev.seconds.get("search_s"),
        "evaluation_version": ev.trained.model.version,
        "schema": schema.to_dict(),
        # What the drift monitor compares recent opportunities with: the training rows' distributions.
        "reference": drift.reference_profile(features[closed.to_numpy()], feature_spec(schema)),
    })
    evaluation_info = {"metrics": ev.metrics, "raw_metrics": ev.raw_metrics, "yardstick": ev.yardstick}
    final.info["card"] = card.model_card(final.info, evaluation_info, final.importances())
    return TrainingReport(final, ev, seconds, figures)
