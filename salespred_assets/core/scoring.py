"""Scoring: the one function that turns opportunities into predictions, for a batch or for one."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from salespred_assets.core.features import build_features, closed_target
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
        features = build_features(frame, schema, context=context)
    preds = model.predict(features, explain=explain)
    out = frame[[c for c in schema.fields if c in frame.columns]].copy()
    out.insert(0, ID, frame[schema.id].astype("str"))
    out["outcome"] = outcome(frame, schema)
    out = out.join(preds)
    out["scored_at"] = pd.Timestamp(scored_at)
    return out.reset_index(drop=True)


def closed_share(frame: pd.DataFrame, schema: DatasetSchema) -> float:
    closed, _ = closed_target(frame, schema)
    return float(closed.mean()) if len(frame) else 0.0
