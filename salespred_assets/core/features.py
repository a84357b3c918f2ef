"""One feature pipeline for training, batch scoring and single-opportunity scoring.

:func:`build_features` turns typed opportunities into model inputs. Client aggregates are computed
over a *context* frame (all known opportunities: closed and open) and never read an outcome; the
client's win history, which does read outcomes, is learned inside the model with out-of-fold target
encoding (see :mod:`salespred_assets.core.model`), so no row ever sees its own label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from salespred_assets.core.schema import DatasetSchema

EPOCH = pd.Timestamp("2000-01-01")
CLIENT = "client"  # the model's name for the schema's client field (target-encoded in the model)

# Readable names for the derived features, used in explanations, plots and the model card.
LABELS = {
    "created_day": "creation date",
    "close_day": "close date",
    "created_month": "creation month",
    "close_month": "close month",
    "cycle_days": "days from creation to close",
    "client_opportunities": "client's number of opportunities",
    "client_units": "client's number of business units",
    "client_median_amount": "client's median deal size",
    "client_tenure_days": "days since the client's first opportunity",
    "client_rank": "client's n-th opportunity",
    "client_same_day": "client's opportunities created the same day",
    "client_same_close": "client's opportunities closing the same day",
    "amount_vs_client": "deal size against the client's median",
    CLIENT: "client's win history",
}


@dataclass(frozen=True)
class FeatureSpec:
    """Which model inputs a schema gives: names by kind, in a fixed order."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    client: bool

    @property
    def columns(self) -> list[str]:
        return [*self.categorical, *self.numeric, *([CLIENT] if self.client else [])]


def feature_spec(schema: DatasetSchema) -> FeatureSpec:
    categorical = list(schema.categorical)
    if schema.seller and schema.seller not in categorical:
        categorical.append(schema.seller)
    numeric = [c for c in schema.numeric]
    if schema.amount and schema.amount not in numeric:
        numeric.append(schema.amount)
    if schema.created:
        numeric += ["created_day", "created_month"]
    if schema.close:
        numeric += ["close_day", "close_month"]
    if schema.created and schema.close:
        numeric.append("cycle_days")
    if schema.client:
        numeric += ["client_opportunities", "client_rank", "client_same_day" if schema.created else None,
                    "client_same_close" if schema.close else None, "client_tenure_days" if schema.created else None]
        if schema.categorical:
            numeric.append("client_units")
        if schema.amount:
            numeric += ["client_median_amount", "amount_vs_client"]
    return FeatureSpec(tuple(categorical), tuple(n for n in numeric if n), bool(schema.client))


def label(feature: str) -> str:
    return LABELS.get(feature, feature)


def build_features(frame: pd.DataFrame, schema: DatasetSchema, context: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model inputs for every row of ``frame``; client aggregates come from ``context`` (default: frame).

    ``context`` must contain the rows of ``frame`` (matched by the schema's id) when it is given, as
    the app does when it scores one new opportunity against the client's known ones.
    """
    spec = feature_spec(schema)
    out = pd.DataFrame(index=frame.index)
    for col in spec.categorical:
        out[col] = frame[col].astype("str")
    for col in schema.numeric:
        out[col] = frame[col].astype("float64")
    if schema.amount and schema.amount not in schema.numeric:
        out[schema.amount] = frame[schema.amount].astype("float64")
    if schema.created:
        created = frame[schema.created]
        out["created_day"] = (created - EPOCH).dt.days.astype("float64")
        out["created_month"] = created.dt.month.astype("float64")
    if schema.close:
        close = frame[schema.close]
        out["close_day"] = (close - EPOCH).dt.days.astype("float64")
        out["close_month"] = close.dt.month.astype("float64")
    if schema.created and schema.close:
        out["cycle_days"] = (frame[schema.close] - frame[schema.created]).dt.days.astype("float64")
    if schema.client:
        out = out.join(client_aggregates(frame, schema, context))
        out[CLIENT] = frame[schema.client].astype("str")
    return out[spec.columns]


def client_aggregates(frame: pd.DataFrame, schema: DatasetSchema, context: pd.DataFrame | None) -> pd.DataFrame:
    """Label-free facts about each row's client, counted over ``context``."""
    ctx = frame if context is None else context
    cl = schema.client
    assert cl is not None
    groups = ctx.groupby(cl, sort=False)
    agg = pd.DataFrame({"client_opportunities": groups[schema.id].count().astype("float64")})
    if schema.categorical:
        agg["client_units"] = groups[schema.categorical[0]].nunique().astype("float64")
    if schema.amount:
        agg["client_median_amount"] = groups[schema.amount].median().astype("float64")
    if schema.created:
        agg["client_first_day"] = groups[schema.created].min()

    out = pd.DataFrame(index=frame.index)
    joined = frame[[cl]].join(agg, on=cl)
    out["client_opportunities"] = joined["client_opportunities"].fillna(1.0)
    if "client_units" in agg:
        out["client_units"] = joined["client_units"].fillna(1.0)
    if schema.amount:
        med = joined["client_median_amount"].fillna(frame[schema.amount])
        out["client_median_amount"] = med
        out["amount_vs_client"] = frame[schema.amount] / med.where(med > 0, np.nan)
        out["amount_vs_client"] = out["amount_vs_client"].fillna(1.0)
    order_key = schema.created or schema.id
    # Rank within the client's opportunities by creation date, then id: the n-th deal of this client.
    ranked = ctx[[cl, order_key, schema.id]].sort_values([cl, order_key, schema.id], kind="mergesort")
    rank = ranked.groupby(cl, sort=False).cumcount() + 1
    rank_by_id = pd.Series(rank.to_numpy(dtype="float64"), index=ranked[schema.id].to_numpy())
    rank_by_id = rank_by_id[~rank_by_id.index.duplicated()]
    out["client_rank"] = frame[schema.id].map(rank_by_id).fillna(out["client_opportunities"]).to_numpy()
    if schema.created:
        first = joined["client_first_day"].fillna(frame[schema.created])
        out["client_tenure_days"] = (frame[schema.created] - first).dt.days.astype("float64")
        same_day = ctx.groupby([cl, schema.created], sort=False)[schema.id].count().rename("n")
        out["client_same_day"] = frame[[cl, schema.created]].join(same_day, on=[cl, schema.created])["n"].fillna(1.0)
    if schema.close:
        same_close = ctx.groupby([cl, schema.close], sort=False)[schema.id].count().rename("n")
        out["client_same_close"] = frame[[cl, schema.close]].join(same_close, on=[cl, schema.close])["n"].fillna(1.0)
    return out.astype("float64")


def closed_target(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[pd.Series, pd.Series]:
    """(mask of closed rows, 1 for won / 0 for lost on those rows)."""
    stage = frame[schema.stage]
    won = stage.isin(schema.won)
    closed = won | stage.isin(schema.lost)
    return closed, won[closed].astype("int64")


def open_mask(frame: pd.DataFrame, schema: DatasetSchema) -> pd.Series:
    closed, _ = closed_target(frame, schema)
    return ~closed
