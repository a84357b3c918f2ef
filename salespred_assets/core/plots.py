"""Model plots as PNG bytes, and as markdown that embeds them (Dagster renders it in the UI)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display anywhere this runs
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def roc_png(y: np.ndarray, p: np.ndarray, auc: float, yardstick: tuple[np.ndarray, float] | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"random forest (AUC {auc:.3f})")
    if yardstick is not None:
        fpr2, tpr2, _ = roc_curve(y, yardstick[0])
        ax.plot(fpr2, tpr2, "--", label=f"HistGradientBoosting (AUC {yardstick[1]:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve, held-out split")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def calibration_png(y: np.ndarray, calibrated: np.ndarray, raw: np.ndarray | None = None,
                    title: str = "Calibration, backtest (new opportunities)") -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for probs, name in ((raw, "raw forest"), (calibrated, "calibrated")):
        if probs is None or not len(probs):
            continue
        frac, mean = calibration_curve(y, probs, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share won")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def importance_png(importances: pd.Series, top: int = 15) -> bytes:
    data = importances.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(5, 0.28 * len(data) + 1))
    ax.barh(data.index, data.values)
    ax.set_xlabel("mean decrease in impurity")
    ax.set_title("Feature importance")
    return _png(fig)
