"""Scoring: the one function that turns opportunities into predictions, for a batch or for one."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

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
    if features is None:
        columns = feature_columns(frame, schema, context=context)
    else:
        columns = {c: features[c].to_numpy() for c in model.feature_names}
    # Built as one dict of arrays and one frame: for a single row, each pandas step would cost more than the forest.
    data: dict[str, Any] = {ID: frame[schema.id].to_numpy(dtype=object).astype(str)}
    for field in schema.fields:
        if field in frame.columns:
            data[field] = frame[field].to_numpy()
    stage = data.get(schema.stage, frame[schema.stage].to_numpy())
    data["outcome"] = np.where(np.isin(stage, schema.won), "won", np.where(np.isin(stage, schema.lost), "lost", "open"))
    data.update(model.predict_columns(columns, explain=explain))
    data["scored_at"] = pd.Timestamp(scored_at)
    return pd.DataFrame(data)


def closed_share(frame: pd.DataFrame, schema: DatasetSchema) -> float:
    closed, _ = closed_target(frame, schema)
    return float(closed.mean()) if len(frame) else 0.0
