"""The original protocol, and the figures we report on it.

Closed rows only, in file order; an 80/20 split with ``random_state=42``; every figure is measured on
the 20% that training never saw. A HistGradientBoosting model trained on the same split is the
yardstick: it shows whether the forest leaves accuracy on the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, confusion_matrix,
                             f1_score, log_loss, roc_auc_score)
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from salespred_assets.core.features import build_features, closed_target, feature_spec
from salespred_assets.core.model import SearchConfig, Trained, cap_rows, check_enough, train
from salespred_assets.core.schema import DatasetSchema

ORIGINAL_ACCURACY = 0.7958


def metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    y = np.asarray(y, dtype=int)
    pred = (p >= threshold).astype(int)
    pc = np.clip(p, 1e-6, 1 - 1e-6)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "f1": float(f1_score(y, pred)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, pc, labels=[0, 1])),
        "threshold": float(threshold),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "n": int(len(y)),
    }


@dataclass
class Evaluation:
    trained: Trained                 # the model fitted on the training split
    metrics: dict[str, Any]          # calibrated forest on the test split
    raw_metrics: dict[str, Any]      # the same forest before calibration
    yardstick: dict[str, Any]        # HistGradientBoosting on the same split
    test: pd.DataFrame               # id, true label, probability (and raw probability)
    seconds: dict[str, float]


def split_closed(frame: pd.DataFrame, schema: DatasetSchema, test_size: float = 0.2, random_state: int = 42,
                 features: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series, pd.Series]:
    """Features of the closed rows (context: every row) split as the original did, in file order."""
    closed, y = closed_target(frame, schema)
    check_enough(y)
    features = (build_features(frame, schema) if features is None else features)[closed.to_numpy()]
    ids = frame.loc[closed, schema.id]
    X_tr, X_te, y_tr, y_te, _, id_te = train_test_split(features, y, ids, test_size=test_size,
                                                        random_state=random_state)
    return X_tr, X_te, y_tr, y_te, id_te


def evaluate(frame: pd.DataFrame, schema: DatasetSchema, config: SearchConfig | None = None,
             test_size: float = 0.2, random_state: int = 42, yardstick: bool = True,
             params: dict | None = None, features: pd.DataFrame | None = None) -> Evaluation:
    config = config or SearchConfig()
    X_tr, X_te, y_tr, y_te, id_te = split_closed(frame, schema, test_size, random_state, features)
    started = time.perf_counter()
    trained = train(X_tr, y_tr, feature_spec(schema), config, params=params)
    seconds = {"train_s": time.perf_counter() - started, **trained.model.info["timings"]}
    model = trained.model
    raw = model.raw_proba(X_te)
    prob = model.calibrate(raw)
    result = metrics(y_te.to_numpy(), prob, model.threshold)
    raw_result = metrics(y_te.to_numpy(), raw, 0.5)
    hgb: dict[str, Any] = {}
    if yardstick:
        started = time.perf_counter()
        # Same encoded inputs as the forest, re-fitted on the training split only.
        pipe = Pipeline([("pre", clone(model.pipeline.named_steps["pre"])), ("hgb", HistGradientBoostingClassifier(
            max_iter=400, learning_rate=0.05, early_stopping=True, random_state=random_state))])
        pipe.fit(*cap_rows(X_tr, y_tr, config))  # the same rows the forest learns from
        hp = pipe.predict_proba(X_te)[:, 1]
        hgb = metrics(y_te.to_numpy(), hp, 0.5)
        seconds["yardstick_s"] = time.perf_counter() - started
    test = pd.DataFrame({"id": id_te.to_numpy(), "y_true": y_te.to_numpy(), "probability": prob, "raw_probability": raw})
    return Evaluation(trained, result, raw_result, hgb, test, seconds)
