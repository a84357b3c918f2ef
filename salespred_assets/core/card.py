"""The model card: a markdown page stored with every model version."""

from __future__ import annotations

from typing import Any

import pandas as pd

from salespred_assets.core.model import GRADE_BANDS

METRIC_NAMES = ["accuracy", "roc_auc", "pr_auc", "f1", "brier", "log_loss"]


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one column per model (e.g. forest, raw forest, yardstick)."""
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in METRIC_NAMES:
        vals = [rows[n].get(metric) for n in names]
        lines.append(f"| {metric} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


def confusion_table(cm: dict[str, int]) -> str:
    return ("| | predicted lost | predicted won |\n|---|---|---|\n"
            f"| actually lost | {cm['tn']} | {cm['fp']} |\n| actually won | {cm['fn']} | {cm['tp']} |")


def params_table(params: dict[str, Any]) -> str:
    return "| hyperparameter | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))


def model_card(info: dict[str, Any], evaluation: dict[str, Any], importances: pd.Series) -> str:
    m = evaluation["metrics"]
    bands = ", ".join(f"{g} from {low:.2f}" for g, low in GRADE_BANDS)
    top = "\n".join(f"| {name} | {value:.4f} |" for name, value in importances.head(10).items())
    return f"""# Model card: win model {info['version']}

**What it predicts**: the probability that an open B2B sales opportunity is won.
**Trained at**: {info['trained_at']} on {info['rows']} closed opportunities ({info['won']} won, {info['lost']} lost).
**Algorithm**: scikit-learn random forest ({info['n_estimators']} trees); hyperparameters by successive halving
scored on out-of-bag ROC AUC; Platt calibration (logistic regression on the logit) fitted on out-of-bag
probabilities; decision threshold {info['threshold']:.3f} chosen on out-of-bag probabilities (never on the
test split). Out-of-bag ROC AUC of the production forest: {info.get('oob_roc_auc', float('nan')):.4f}.

## Held-out evaluation ({m['n']} closed opportunities, 20% split, random_state=42)

{metrics_table({"forest (calibrated)": m, "forest (raw)": evaluation["raw_metrics"],
                "HistGradientBoosting yardstick": evaluation.get("yardstick") or {}})}

The original system reported accuracy 0.7958.

{confusion_table(m['confusion_matrix'])}

## Hyperparameters

{params_table(info['params'])}

## Most important features

| feature | importance |
|---|---|
{top}

## Outputs

Probability (calibrated), predicted label (probability >= threshold), score 1-99 (the probability in
percent), grade ({bands}), and the top 3 factors for and against: exact per-tree path contributions,
which sum with the forest's base rate to its raw probability.

## Limits

Trained on the history in the database at training time; client-history features need the client's
earlier opportunities. Drift against the training data is monitored (`opportunity_drift`).
"""
