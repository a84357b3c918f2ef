"""The dashboard's figures, read from the reporting views (never from the fact tables directly).

``figures(engine)`` returns one JSON-ready dict: the five Power BI tiles and the model-quality trend.
A view the export's schema does not support (say, no region field) gives ``None`` for its tile.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from salespred_assets.sql import tables, views


def _num(value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return 0.0
    return float(value)


def _int(value: Any) -> int:
    return round(_num(value))


def _iso(value: Any) -> str | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat()


def _stage_key(stage: str) -> tuple:
    # S1 < S2 < ... < S10, whatever the labels: numbers inside a label sort as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(stage)))


def closed(frame: pd.DataFrame) -> dict[str, Any]:
    out = {result: {"opportunities": 0, "tcv": 0.0} for result in ("won", "lost")}
    for r in frame.itertuples(index=False):
        out[str(r.result)] = {"opportunities": _int(r.opportunities), "tcv": _num(r.tcv)}
    return out


def pipeline(frame: pd.DataFrame) -> dict[str, Any]:
    frame = frame.sort_values("horizon_order")
    horizons = [{"order": _int(r.horizon_order), "horizon": str(r.horizon), "opportunities": _int(r.opportunities),
                 "tcv": _num(r.tcv), "expected_tcv": _num(r.expected_tcv)} for r in frame.itertuples(index=False)]
    rule = str(frame["period_rule"].iloc[0]) if len(frame) else views.PERIOD_RULE
    return {
        "opportunities": sum(h["opportunities"] for h in horizons),
        "tcv": sum(h["tcv"] for h in horizons),
        "expected_tcv": sum(h["expected_tcv"] for h in horizons),
        "expected_next_3_months": sum(h["expected_tcv"] for h in horizons if h["order"] == 2),
        "as_of": _iso(frame["as_of"].max()) if len(frame) else None,
        "period_rule": rule,
        "horizons": horizons,
    }


def by_month(frame: pd.DataFrame) -> list[dict[str, Any]]:
    frame = frame.sort_values("close_month_key")
    return [{"month": f"{_int(r.close_year):04d}-{_int(r.close_month):02d}", "key": _int(r.close_month_key),
             "opportunities": _int(r.opportunities), "tcv": _num(r.tcv), "expected_tcv": _num(r.expected_tcv)}
            for r in frame.itertuples(index=False)]


def by_region(frame: pd.DataFrame) -> list[dict[str, Any]]:
    frame = frame.sort_values(["expected_tcv", "region"], ascending=[False, True])
    return [{"region": str(r.region), "opportunities": _int(r.opportunities), "tcv": _num(r.tcv),
             "expected_tcv": _num(r.expected_tcv)} for r in frame.itertuples(index=False)]


def matrix(frame: pd.DataFrame) -> dict[str, Any]:
    stages = sorted({str(s) for s in frame["stage"]}, key=_stage_key)
    rows: dict[str, dict[str, Any]] = {}
    for r in frame.itertuples(index=False):
        # "name": what a person reads (first and last name from dim_seller; the number when it has none).
        name = str(r.seller_name) if r.seller_name is not None and str(r.seller_name).strip() else str(r.seller)
        row = rows.setdefault(str(r.seller), {"seller": str(r.seller), "seller_name": name, "name": name,
                                              "cells": {}, "opportunities": 0, "tcv": 0.0, "expected_tcv": 0.0})
        cell = {"opportunities": _int(r.opportunities), "tcv": _num(r.tcv), "expected_tcv": _num(r.expected_tcv)}
        row["cells"][str(r.stage)] = cell
        for k in ("opportunities", "tcv", "expected_tcv"):
            row[k] += cell[k]
    ordered = sorted(rows.values(), key=lambda row: (row["seller_name"], row["seller"]))
    totals = {s: {k: sum(row["cells"].get(s, {}).get(k, 0) for row in ordered)
                  for k in ("opportunities", "tcv", "expected_tcv")} for s in stages}
    return {"stages": stages, "rows": ordered, "totals": totals,
            "opportunities": sum(row["opportunities"] for row in ordered), "tcv": sum(row["tcv"] for row in ordered)}


def model_quality(frame: pd.DataFrame) -> list[dict[str, Any]]:
    frame = frame.assign(_t=pd.to_datetime(frame["trained_at"], utc=True)).sort_values(["_t", "model_version"])
    out = []
    for r in frame.itertuples(index=False):
        out.append({"model_version": str(r.model_version), "trained_at": _iso(r.trained_at), "status": str(r.status),
                    "is_current": bool(r.is_current), "roc_auc": None if pd.isna(r.roc_auc) else float(r.roc_auc),
                    "accuracy": None if pd.isna(r.accuracy) else float(r.accuracy),
                    "brier": None if pd.isna(r.brier) else float(r.brier),
                    "predictions_recorded": _int(r.predictions_recorded)})
    return out


TILES = {
    "closed": (views.CLOSED_BY_RESULT, closed),
    "pipeline": (views.OPEN_PIPELINE, pipeline),
    "by_month": (views.EXPECTED_BY_CLOSE_MONTH, by_month),
    "by_region": (views.EXPECTED_BY_REGION, by_region),
    "matrix": (views.SELLER_STAGE_MATRIX, matrix),
    "model_quality": (views.MODEL_QUALITY, model_quality),
}


def snapshot(engine: Engine) -> pd.DataFrame:
    """Every view's rows as JSON, read in one connection: what the ``dashboard_figures`` asset stores."""
    computed_at = pd.Timestamp.now(tz="UTC")
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_view_names())
        if not present & set(views.NAMES):
            raise views.ViewError("no reporting view exists yet: materialise the reporting_views asset "
                                   "(or run `salespred demo --once`)")
        rows = [{"view_name": name, "computed_at": computed_at,
                 "rows_json": views.read(conn, name).to_json(orient="split", index=False, date_format="iso")}
                for name in views.NAMES if name in present]
    return pd.DataFrame(rows, columns=["view_name", "rows_json", "computed_at"])


def from_snapshot(stored: pd.DataFrame, sellers: Collection[str] | None = None) -> dict[str, Any]:
    """Every tile's figures from a snapshot (``None`` for a view it lacks), and when it was computed.

    ``sellers`` narrows the seller x stage matrix to those sellers (a manager's team in the app); the
    other tiles are company-wide figures, as in the original Power BI report.
    """
    frames = {str(r.view_name): _frame(str(r.rows_json)) for r in stored.itertuples(index=False)}
    out: dict[str, Any] = {}
    for tile, (name, shape) in TILES.items():
        frame = frames.get(name)
        if frame is None:
            out[tile] = None
            continue
        if tile == "matrix" and sellers is not None:
            frame = frame[frame["seller"].astype(str).isin([str(s) for s in sellers])]
        out[tile] = shape(frame)
    out["computed_at"] = _iso(stored["computed_at"].max()) if len(stored) else None
    return out


def _frame(rows_json: str) -> pd.DataFrame:
    split = json.loads(rows_json)  # "split" keeps the columns of a view with no rows
    return pd.DataFrame(split["data"], columns=split["columns"])


def figures(engine: Engine, sellers: Collection[str] | None = None) -> dict[str, Any]:
    """Every tile's figures: from the stored snapshot (``rpt_dashboard_figures``) when there is one, else
    read from the views now (a database the reporting assets have not refreshed since it existed)."""
    with engine.connect() as conn:
        stored = (pd.read_sql(sa.select(sa.text("*")).select_from(sa.table(tables.DASHBOARD_FIGURES)), conn)
                  if sa.inspect(conn).has_table(tables.DASHBOARD_FIGURES) else None)
    if stored is None or not len(stored):
        stored = snapshot(engine)
    return from_snapshot(stored, sellers)


def summary(figs: dict[str, Any]) -> dict[str, float | int | str]:
    """The headline numbers, flat: what the Dagster asset puts in its metadata and tests compare."""
    out: dict[str, float | int | str] = {}
    if figs.get("closed"):
        for result, f in figs["closed"].items():
            out[f"{result}_opportunities"] = f["opportunities"]
            out[f"{result}_tcv"] = f["tcv"]
    if figs.get("pipeline"):
        p = figs["pipeline"]
        out.update({"open_opportunities": p["opportunities"], "open_tcv": p["tcv"],
                    "expected_open_tcv": p["expected_tcv"], "expected_next_3_months": p["expected_next_3_months"],
                    "as_of": p["as_of"] or "none", "period_rule": p["period_rule"]})
    if figs.get("by_month") is not None:
        out["close_months"] = len(figs["by_month"])
    if figs.get("by_region") is not None:
        out["regions"] = len(figs["by_region"])
    if figs.get("matrix"):
        out["matrix_sellers"] = len(figs["matrix"]["rows"])
        out["matrix_opportunities"] = figs["matrix"]["opportunities"]
    if figs.get("model_quality") is not None:
        out["model_versions"] = len(figs["model_quality"])
        current = [m for m in figs["model_quality"] if m["is_current"]]
        if current:
            out["current_model"] = current[0]["model_version"]
            if current[0]["roc_auc"] is not None:
                out["current_roc_auc"] = current[0]["roc_auc"]
    return out
