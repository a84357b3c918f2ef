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


def backtest_table(summary: dict[str, Any], yardstick: bool = True) -> str:
    """Markdown: per group (pipeline, new), the forest's figures and the yardstick's."""
    lines = ["| group | model | n | win rate | mean probability | ROC AUC | accuracy | Brier |",
             "|---|---|---|---|---|---|---|---|"]
    sources = [("forest", summary["metrics"])] + ([("HistGradientBoosting", summary["yardstick"])]
                                                  if yardstick and summary.get("yardstick") else [])
    for group in ("new", "pipeline"):
        for name, figures in sources:
            m = figures.get(group) or {}
            cells = [m.get(k) for k in ("win_rate", "mean_probability", "roc_auc", "accuracy", "brier")]
            lines.append(f"| {group} | {name} | {m.get('n', 0)} | "
                         + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines)


def forecast_table(summary: dict[str, Any]) -> str:
    lines = [("| horizon | opportunities | expected wins | actual wins | expected won amount | actual won amount "
              "| error |"),
             "|---|---|---|---|---|---|---|"]
    for row in summary["forecast"]:
        err = row.get("amount_error")
        lines.append(f"| {row['horizon']} (to {row['until']}) | {row['opportunities']} | {row['expected_wins']:.1f} | "
                     f"{row['actual_wins']} | {row['expected_won_amount']:,.0f} | {row['actual_won_amount']:,.0f} | "
                     f"{'-' if err is None else f'{err:+.1%}'} |")
    return "\n".join(lines)


def calibration_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| decile | n | mean probability | observed win rate |", "|---|---|---|---|"]
    lines += [f"| {r['decile']} | {r['n']} | {r['mean_probability']:.3f} | {r['win_rate']:.3f} |" for r in rows]
    return "\n".join(lines)


def model_card(info: dict[str, Any], bt: Any, importances: pd.Series) -> str:
    summary = bt.summary()
    bands = ", ".join(f"{g} from {low:.2f}" for g, low in GRADE_BANDS)
    top = "\n".join(f"| {name} | {value:.4f} |" for name, value in importances.head(10).items())
    return f"""# Model card: win model {info['version']}

**What it predicts**: the probability that an open B2B sales opportunity is won, given what is known at
the moment it is scored: the fields known at capture, its age so far, and its client's history up to then.
Fields that are only final once an opportunity closes (its close date, its final duration) never feed it.
**Trained at**: {info['trained_at']} on {info['rows']} snapshots of {info['opportunities']} closed opportunities
(each at capture and at several ages while it was open; at each age, each opportunity open then counts once).
**Algorithm**: scikit-learn random forest ({info['n_estimators']} trees); hyperparameters by successive halving
scored on the opportunities decided last (held out by close date, {info.get('holdout_from')} on); Platt calibration
(on the forest's probability and the age) and the decision threshold ({info['threshold']:.3f}) fitted on them.

## Backtest as of {summary['as_of']}

Trained only on the history closed before that date; *pipeline*: opportunities open on it, scored at
their age then; *new*: opportunities created later, scored as at capture. These are the figures we quote.

{backtest_table(summary)}

### Forecast against what was won

{forecast_table(summary)}

### Calibration (new opportunities, by decile)

{calibration_md(summary['calibration']['new'])}

The original system reported accuracy 0.7958 on a random split of closed rows, with inputs only known at
close (`salespred evaluate` reproduces that protocol, for comparison only).

## Hyperparameters

{params_table(info['params'])}

## Most important features

| feature | importance |
|---|---|
{top}

## Outputs

For an open opportunity: probability (calibrated), predicted label (probability >= threshold), score
1-99 (the probability in percent), grade ({bands}), and the top 3 factors for and against: exact per-tree
path contributions, which sum with the forest's base rate to its raw probability. A closed opportunity
carries its outcome instead (`prediction_basis` = outcome).

## Limits

Trained on the history in the database at training time. Without a recorded change history, a closed
opportunity's amounts are taken as known at capture. Drift against the training data is monitored
(`opportunity_drift`).
"""
