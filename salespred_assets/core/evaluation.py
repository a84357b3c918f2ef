"""The original protocol, kept for the comparison with the original system, and the figures it reports.

**It uses fields that are only known at close** (on a closed row, the final duration ``edad_oferta``),
and a random split of closed rows: it measures something a seller can never get at capture. The figure
salespred quotes is the backtest's (:mod:`salespred_assets.core.backtest`).

Closed rows only, in file order; an 80/20 split with ``random_state=42``; the inputs are the export's
own fields, as the original model used them (its categorical and numeric fields, the amount and the
seller, final-at-close ones included); every figure is measured on the 20% that training never saw. A
HistGradientBoosting model trained on the same split is the yardstick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from salespred_assets.core.features import FeatureSpec, closed_target
from salespred_assets.core.model import (
    Rows,
    SearchConfig,
    Trained,
    cap_rows,
    check_enough,
    train,
)
from salespred_assets.core.schema import DatasetSchema

ORIGINAL_ACCURACY = 0.7958
CAVEAT = "original protocol: random split of closed rows, with inputs only known at close (not what a seller gets)"


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
        "n": len(y),
    }


def original_spec(schema: DatasetSchema) -> FeatureSpec:
    """The export's own fields, as the original model used them (final-at-close ones included)."""
    seller = [schema.seller] if schema.seller and schema.seller not in schema.categorical else []
    categorical = [*schema.categorical, *seller]
    numeric = [*schema.numeric, *([schema.amount] if schema.amount and schema.amount not in schema.numeric else [])]
    return FeatureSpec(tuple(categorical), tuple(numeric))


@dataclass
class Evaluation:
    trained: Trained                 # the model fitted on the training split
    metrics: dict[str, Any]          # calibrated forest on the test split
    raw_metrics: dict[str, Any]      # the same forest before calibration
    yardstick: dict[str, Any]        # HistGradientBoosting on the same split
    test: pd.DataFrame               # id, true label, probability (and raw probability)
    seconds: dict[str, float]


def evaluate(frame: pd.DataFrame, schema: DatasetSchema, config: SearchConfig | None = None,
             test_size: float = 0.2, random_state: int = 42, yardstick: bool = True) -> Evaluation:
    config = config or SearchConfig()
    spec = original_spec(schema)
    closed, y = closed_target(frame, schema)
    check_enough(y)
    X = frame.loc[closed, spec.columns].reset_index(drop=True)
    ids = frame.loc[closed, schema.id].reset_index(drop=True)
    X_tr, X_te, y_tr, y_te, id_tr, id_te = train_test_split(X, y.reset_index(drop=True), ids, test_size=test_size,
                                                            random_state=random_state)
    started = time.perf_counter()
    # One snapshot per row; file order stands in for time (this protocol ignores time).
    order = np.datetime64("2000-01-01", "D") + np.arange(len(X_tr)).astype("timedelta64[D]")
    trained = train(X_tr, y_tr, spec, Rows(id_tr.to_numpy(dtype=object), order), config)
    seconds = {"train_s": time.perf_counter() - started, **trained.model.info["timings"]}
    model = trained.model
    raw = model.raw_proba(X_te)
    prob = model.calibrate(raw)
    result = metrics(y_te.to_numpy(), prob, model.threshold)
    raw_result = metrics(y_te.to_numpy(), raw, 0.5)
    hgb: dict[str, Any] = {}
    if yardstick:
        started = time.perf_counter()
        keep = cap_rows(len(y_tr), config)  # the same rows the forest learns from
        with threadpool_limits(1, "openmp"):  # OpenMP's pool costs more than it gives on 2 cores
            fitted = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                                    random_state=random_state).fit(
                model.transform(X_tr.iloc[keep]), y_tr.to_numpy()[keep])
        hgb = metrics(y_te.to_numpy(), fitted.predict_proba(model.transform(X_te))[:, 1], 0.5)
        seconds["yardstick_s"] = time.perf_counter() - started
    test = pd.DataFrame({"id": id_te.to_numpy(), "y_true": y_te.to_numpy(), "probability": prob,
                         "raw_probability": raw})
    return Evaluation(trained, result, raw_result, hgb, test, seconds)
