"""The promotion gate's rule: whether a candidate may replace the current model, judged on one backtest.

Both models are scored on the same backtest (see ``win_model``): the candidate must reach ``RELATIVE_AUC`` of the
current model's ROC AUC and the absolute floor, and its Brier score may be worse than the current model's by at most
``BRIER_SLACK``. The registry (``registry.model_store.register_candidate``) records the verdict when it stores a
candidate; the ``promotion_gate`` check reports it.
"""

from __future__ import annotations

from typing import Any

# Promotion gate, on the same backtest for both: a candidate must reach 98% of the current model's ROC
# AUC, this floor, and a Brier score no worse than the current model's by more than BRIER_SLACK.
RELATIVE_AUC = 0.98
AUC_FLOOR = 0.70  # the default; SALESPRED_GATE_AUC_FLOOR sets another (settings.gate_auc_floor)
BRIER_SLACK = 0.005


def _number(value: float | None) -> float | str:
    return "n/a (one outcome only among the new opportunities)" if value is None else float(value)


def verdict(info: dict[str, Any], floor: float) -> tuple[bool, str, dict[str, Any]]:
    """(passed, reason, figures) for a candidate's info: both models on the same backtest (see win_model)."""
    candidate = info["metrics"]
    gate = info.get("gate") or {}
    current = gate.get("current") or {}
    auc, brier = candidate.get("roc_auc"), candidate.get("brier")
    current_auc, current_brier = current.get("roc_auc"), current.get("brier")
    required = max(floor, RELATIVE_AUC * float(current_auc)) if current_auc is not None else floor
    brier_limit = float(current_brier) + BRIER_SLACK if current_brier is not None else None
    figures = {"backtest_as_of": gate.get("as_of") or info.get("backtest", {}).get("as_of", "none"),
               "candidate_roc_auc": _number(auc), "candidate_brier": _number(brier),
               "current_version": gate.get("current_version") or "none",
               "current_roc_auc": _number(current_auc) if current else "none",
               "current_brier": _number(current_brier) if current else "none",
               "required_roc_auc": required, "brier_limit": brier_limit if brier_limit is not None else "none",
               "relative_rule": RELATIVE_AUC, "absolute_floor": floor}
    if gate.get("current_version") and not current:
        figures["note"] = "the current model could not be backtested (see the win_model log): floor only"
    if auc is None or brier is None:
        return (False, "the backtest's new opportunities hold one outcome only: nothing to judge the candidate on",
                figures)
    if auc < required:
        return False, f"backtest ROC AUC {auc:.4f} below the required {required:.4f}", figures
    if brier_limit is not None and brier > brier_limit:
        return False, (f"backtest Brier score {brier:.4f} above the current model's "
                       f"{brier_limit - BRIER_SLACK:.4f} + {BRIER_SLACK}"), figures
    return True, "passed", figures
