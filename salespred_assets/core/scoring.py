"""Scoring: the one function that turns opportunities into predictions, for a batch or for one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core.documents import STR
from salespred_assets.core.features import closed_target, feature_columns
from salespred_assets.core.model import WinModel
from salespred_assets.core.schema import DatasetSchema

ID = "opportunity_id"


def outcome(frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    stage = frame[schema.stage]
    return pd.Series(np.where(stage.isin(schema.won), "won", np.where(stage.isin(schema.lost), "lost", "open")),
                     index=frame.index)


def score(model: WinModel, frame: pd.DataFrame, schema: DatasetSchema, *, context: pd.DataFrame | None = None,
          scored_at: dt.datetime | None = None, explain: bool = True,
          features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Inputs plus prediction columns for every row of ``frame`` (client facts counted over ``context``).

    ``features`` may be passed when already built for ``frame`` (the batch asset does so).
    """
    scored_at = scored_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    series = columns_of(frame)  # taken out once: indexing a frame again for each use costs more than one row's forest
    if features is None:
        columns = feature_columns(series, schema, context=context)
    else:
        columns = {c: features[c].to_numpy() for c in model.feature_names}
    # One frame built from typed arrays, with no type inference and no copies (pandas copies on write):
    # for a single row, each pandas step would cost more than the forest.
    data: dict[str, Any] = {ID: _text(series[schema.id])}
    for field in schema.fields:
        if field in series:
            data[field] = series[field].array
    won, lost = set(schema.won), set(schema.lost)
    data["outcome"] = _text(["won" if s in won else "lost" if s in lost else "open" for s in series[schema.stage].tolist()])
    for name, values in model.predict_columns(columns, explain=explain).items():
        data[name] = _text(values) if name in TEXT_OUTPUTS else values
    at = np.datetime64(scored_at.astimezone(dt.timezone.utc).replace(tzinfo=None), "us")
    data["scored_at"] = pd.array(np.full(len(frame), at), dtype=SCORED_AT)
    return pd.DataFrame(data, copy=False)


TEXT_OUTPUTS = frozenset({"grade", "factors_for", "factors_against", "model_version"})
SCORED_AT = pd.DatetimeTZDtype("us", "UTC")


def columns_of(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """A frame's columns, each taken out once."""
    return {name: frame[name] for name in frame.columns}


def _text(values: pd.Series | np.ndarray | list[str]) -> pd.api.extensions.ExtensionArray:
    """Text as pandas' ``str`` dtype, converted once."""
    if isinstance(values, pd.Series):
        return values.array if values.dtype == STR else pd.array(values.astype(str), dtype=STR)
    return pd.array(values if isinstance(values, list) else np.asarray(values, dtype=object).astype(str), dtype=STR)


def closed_share(frame: pd.DataFrame, schema: DatasetSchema) -> float:
    closed, _ = closed_target(frame, schema)
    return float(closed.mean()) if len(frame) else 0.0
