"""Scoring: the one function that turns opportunities into predictions, for a batch or for one.

An open opportunity is scored as of the scoring day, at its age then (a capture is therefore scored at
age 0). A closed one is not predicted: its prediction columns hold its final outcome
(``prediction_basis`` = ``"outcome"``: ``predicted_won`` says whether it was won, the probability, score
and grade are empty), so nobody reads a verdict on a deal that is already decided.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core import reasons
from salespred_assets.core.documents import STR
from salespred_assets.core.features import closed_target, feature_columns
from salespred_assets.core.model import WinModel
from salespred_assets.core.schema import DatasetSchema

ID = "opportunity_id"


def outcome(frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    stage = frame[schema.stage]
    return pd.Series(np.where(stage.isin(schema.won), "won", np.where(stage.isin(schema.lost), "lost", "open")),
                     index=frame.index)


def as_of_day(scored_at: dt.datetime) -> np.datetime64:
    """The day (UTC) an opportunity is scored as of."""
    return np.datetime64(scored_at.astimezone(dt.UTC).date(), "D")


def score(model: WinModel, frame: pd.DataFrame, schema: DatasetSchema, *,
          context: pd.DataFrame | Mapping[str, pd.Series] | None = None, scored_at: dt.datetime | None = None,
          explain: bool = True, features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Inputs plus prediction columns for every row of ``frame`` (client history counted over ``context``).

    Open rows are scored as of ``scored_at``'s day; closed rows carry their outcome (module doc).
    ``features`` may be passed when already built for ``frame`` as of that day (the batch asset does so).
    """
    scored_at = scored_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    series = columns_of(frame)  # taken out once: indexing a frame again for each use costs more than one row's forest
    if features is None:
        at = np.full(len(frame), as_of_day(scored_at))
        columns = feature_columns(series, schema, at=at, context=context)
    else:
        columns = {c: features[c].to_numpy() for c in model.feature_names}
    # One frame built from typed arrays, with no type inference and no copies (pandas copies on write):
    # for a single row, each pandas step would cost more than the forest.
    data: dict[str, Any] = {ID: _text(series[schema.id])}
    for field in schema.fields:
        if field in series:
            data[field] = series[field].array
    won_stages, lost_stages = set(schema.won), set(schema.lost)
    outcomes = ["won" if s in won_stages else "lost" if s in lost_stages else "open"
                for s in series[schema.stage].tolist()]
    data["outcome"] = _text(outcomes)
    closed = np.fromiter((o != "open" for o in outcomes), dtype=bool, count=len(outcomes))
    open_rows = np.flatnonzero(~closed)
    if closed.any():  # only open rows are predicted: a closed one carries its outcome
        columns = {name: values[open_rows] for name, values in columns.items()}
    grouping = reasons.grouping(schema, model.feature_names, model.info) if explain else None
    predicted = model.predict_columns(columns, explain=explain, grouping=grouping) if len(open_rows) else {}
    won = np.fromiter((o == "won" for o in outcomes), dtype=bool, count=len(outcomes))
    predicted = expand(model, predicted, open_rows, won, explain)
    for name, values in predicted.items():
        data[name] = _text(values) if name in TEXT_OUTPUTS else values
    data["prediction_basis"] = _text(np.where(closed, "outcome", "model"))
    stamp = np.datetime64(scored_at.astimezone(dt.UTC).replace(tzinfo=None), "us")
    data["scored_at"] = pd.array(np.full(len(frame), stamp), dtype=SCORED_AT)
    return pd.DataFrame(data, copy=False)


TEXT_OUTPUTS = frozenset({"grade", "factors_for", "factors_against", "reasons", "model_version"})


def expand(model: WinModel, predicted: dict[str, Any], open_rows: np.ndarray, won: np.ndarray,
           explain: bool) -> dict[str, Any]:
    """Prediction columns for every row from those of the open rows; closed rows carry their outcome."""
    n = len(won)
    out: dict[str, Any] = {"probability": np.full(n, np.nan), "predicted_won": won.copy(),
                           "score": pd.array(np.full(n, pd.NA), dtype="Int64"), "grade": np.full(n, None, dtype=object)}
    if explain:
        out["factors_for"] = np.full(n, "[]", dtype=object)
        out["factors_against"] = np.full(n, "[]", dtype=object)
        out["reasons"] = np.full(n, "[]", dtype=object)  # grouped by concept (core/reasons.py); not in SQL
    for name, values in predicted.items():
        if name in out:
            out[name][open_rows] = values
    out["model_version"] = np.full(n, model.version, dtype=object)
    return out


SCORED_AT = pd.DatetimeTZDtype("us", "UTC")


def columns_of(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """A frame's columns, each taken out once."""
    return {name: frame[name] for name in frame.columns}


def _text(values: pd.Series | np.ndarray | list[str]) -> pd.api.extensions.ExtensionArray:
    """Text as pandas' ``str`` dtype, converted once."""
    if isinstance(values, pd.Series):
        return values.array if values.dtype == STR else pd.array(values.astype(str), dtype=STR)
    if isinstance(values, list):
        return pd.array(values, dtype=STR)
    arr = np.asarray(values, dtype=object)
    if any(v is None for v in arr):  # a closed row's empty grade stays missing, not the text "None"
        return pd.array(arr, dtype=STR)
    return pd.array(arr.astype(str), dtype=STR)


def closed_share(frame: pd.DataFrame, schema: DatasetSchema) -> float:
    closed, _ = closed_target(frame, schema)
    return float(closed.mean()) if len(frame) else 0.0
