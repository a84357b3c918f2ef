"""The model registry (MongoDB) as the ``dim_model_version`` and ``fact_model_switch`` reporting tables.

``frame`` turns ``model_store.versions(db)`` into rows, ``switches_frame`` the pointer's history of
switches. The ``dim_model_version`` and ``fact_model_switch`` assets return them, and the SQL IO manager
writes them (a promotion or rollback runs the ``rescore`` job, which materialises both).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

METRIC_COLUMNS = ("roc_auc", "accuracy", "brier", "f1")
COLUMNS = ["model_version", "trained_at", "status", "is_current", "ever_promoted", "times_promoted", "promoted_at",
           "retired_at", *METRIC_COLUMNS, "threshold", "training_rows", "hyperparameters", "metrics"]


def _utc(value: Any) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    stamp = pd.Timestamp(value)
    # pymongo returns naive datetimes that are UTC; the registry's ISO strings carry their offset.
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _last(events: Iterable[Mapping[str, Any]], kind: str) -> pd.Timestamp | None:
    times = [t for e in events if e.get("event") == kind and (t := _utc(e.get("at"))) is not None]
    return max(times) if times else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One registry document (as ``model_store.versions`` returns it) as a ``dim_model_version`` row."""
    info = doc.get("info") or {}
    metrics = info.get("metrics") or {}
    history = doc.get("history") or []
    promotions = [e for e in history if e.get("event") == "promoted"]
    return {
        "model_version": str(doc.get("version") or doc["_id"]),
        "trained_at": _utc(doc.get("trained_at") or info.get("trained_at")),
        "status": str(doc.get("status") or "candidate"),
        "is_current": bool(doc.get("current", False)),
        "ever_promoted": bool(promotions) or doc.get("status") in ("promoted", "retired"),
        "times_promoted": len(promotions),
        "promoted_at": _last(history, "promoted") or _utc(doc.get("promoted_at")),
        "retired_at": _last(history, "retired"),
        **{name: _float(metrics.get(name)) for name in METRIC_COLUMNS},
        "threshold": _float(info.get("threshold")),
        "training_rows": int(info["rows"]) if info.get("rows") is not None else None,
        "hyperparameters": json.dumps(info.get("params") or {}, sort_keys=True, default=str),
        "metrics": json.dumps(metrics, sort_keys=True, default=str),
    }


def frame(versions: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Every registry document as a row; times in UTC, JSON for the nested hyperparameters and metrics."""
    out = pd.DataFrame([row(doc) for doc in versions], columns=COLUMNS)
    for col in ("trained_at", "promoted_at", "retired_at"):
        out[col] = pd.to_datetime(out[col], utc=True)
    out["training_rows"] = out["training_rows"].astype("Int64")
    out["times_promoted"] = out["times_promoted"].astype("int64")
    for col in ("is_current", "ever_promoted"):
        out[col] = out[col].astype(bool)
    return out


SWITCH_COLUMNS = ["switch_number", "switched_at", "model_version", "previous_version", "action", "reason"]


def switches_frame(history: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """MongoDB's pointer history (``model_store.pointer_history``) as ``fact_model_switch`` rows, in order.

    Entries written before switches carried an action are told apart by their reason: the gate's
    promotions say so, anything else is counted as a manual promotion.
    """
    rows, previous = [], None
    for number, entry in enumerate(history, start=1):
        reason = str(entry.get("reason") or "")
        action = entry.get("action") or ("gate" if "gate" in reason else "promote")
        rows.append({"switch_number": number, "switched_at": _utc(entry.get("at")),
                     "model_version": str(entry["version"]), "previous_version": previous, "action": action,
                     "reason": reason[:400]})
        previous = str(entry["version"])
    out = pd.DataFrame(rows, columns=SWITCH_COLUMNS)
    out["switched_at"] = pd.to_datetime(out["switched_at"], utc=True)
    out["switch_number"] = out["switch_number"].astype("int64")
    return out
