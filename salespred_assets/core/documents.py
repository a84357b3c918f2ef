"""Opportunity documents to a typed frame, with every malformed document set aside with its reason.

Nothing here touches a database: the Mongo extract, the CSV loader and the seller app all pass their
records through :func:`validate`, so the rules live in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from salespred_assets.core.schema import DatasetSchema

SOURCE_ID = "_id"
DATE_FORMAT = "%Y-%m-%d"


@dataclass
class Validated:
    frame: pd.DataFrame          # typed, one row per valid opportunity
    quarantine: pd.DataFrame     # columns: _id, id value, reason, document (as received)

    @property
    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        kinds = self.quarantine["reason"].str.split(";").explode().str.strip().str.split(":").str[-1].str.strip()
        return {str(k): int(v) for k, v in kinds.value_counts().items()}


def records_frame(records: Iterable[Mapping[str, Any]], schema: DatasetSchema) -> pd.DataFrame:
    """Build an untyped (object) frame of the schema's fields from records, keeping ``_id``."""
    columns = [SOURCE_ID, *schema.fields]
    rows = list(records)
    data = {c: [r.get(c, _MISSING) for r in rows] for c in columns}
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()}, columns=columns)
    frame[SOURCE_ID] = frame[SOURCE_ID].map(lambda v: None if v is _MISSING else str(v))
    return frame


class _Missing:
    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<missing>"


_MISSING = _Missing()


def _is_missing(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, float) and math.isnan(value))


def validate(raw: pd.DataFrame, schema: DatasetSchema, *, dedupe: bool = True) -> Validated:
    """Type ``raw`` (object columns straight from documents) and quarantine what does not fit.

    Rules: every schema field present and non-null; text fields are strings; numbers are real,
    finite numbers (a number stored as a string is refused, not guessed); dates are ``YYYY-MM-DD``
    strings or datetimes; the stage is one the schema knows; amounts are >= 0 and fractions lie in
    [0, 1]; an id seen twice keeps its first valid document.
    """
    n = len(raw)
    reasons = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, text: str) -> None:
        idx = np.flatnonzero(mask)
        for i in idx:
            reasons[i] = f"{reasons[i]}; {text}" if reasons[i] else text

    typed: dict[str, pd.Series] = {}
    for col in schema.fields:
        values = raw[col] if col in raw.columns else pd.Series([_MISSING] * n, dtype=object, index=raw.index)
        arr = values.to_numpy(dtype=object)
        missing = np.fromiter((_is_missing(v) for v in arr), dtype=bool, count=n)
        flag(missing, f"{col}: missing")
        if col in schema.number_fields:
            ok = np.fromiter(
                (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                 and math.isfinite(float(v)) for v in arr), dtype=bool, count=n)
            flag(~ok & ~missing, f"{col}: not a finite number")
            nums = np.where(ok, arr, np.nan).astype("float64")
            if col in schema.non_negative:
                flag(ok & (nums < 0), f"{col}: negative")
            if col in schema.fractions:
                flag(ok & ((nums < 0) | (nums > 1)), f"{col}: outside [0, 1]")
            typed[col] = pd.Series(nums, index=raw.index)
        elif col in schema.dates:
            is_text = np.fromiter((isinstance(v, str) for v in arr), dtype=bool, count=n)
            is_dt = np.fromiter((isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat")
                                 and not isinstance(v, str) for v in arr), dtype=bool, count=n) & ~missing
            as_text = pd.Series(np.where(is_text, arr, None), index=raw.index, dtype=object)
            parsed = pd.to_datetime(as_text, format=DATE_FORMAT, errors="coerce")
            if is_dt.any():
                parsed[is_dt] = pd.to_datetime(pd.Series(arr[is_dt], index=raw.index[is_dt]), errors="coerce")
            bad = ~missing & parsed.isna().to_numpy()
            flag(bad, f"{col}: not a YYYY-MM-DD date")
            typed[col] = parsed.dt.normalize().astype("datetime64[ns]")
        else:
            ok = np.fromiter((isinstance(v, str) and v.strip() != "" for v in arr), dtype=bool, count=n)
            flag(~ok & ~missing, f"{col}: not a non-empty text")
            if col == schema.stage:
                known = set(schema.stages)
                unknown = ok & ~np.fromiter((v in known for v in arr), dtype=bool, count=n)
                flag(unknown, f"{col}: unknown stage")
            typed[col] = pd.Series(np.where(ok, arr, None), index=raw.index, dtype=object)

    valid = reasons == ""
    if dedupe and schema.id in typed:
        ids = typed[schema.id]
        dup = ids.where(valid).duplicated(keep="first").to_numpy() & valid
        flag(dup, f"{schema.id}: duplicate")
        valid = reasons == ""

    frame = pd.DataFrame({c: s[valid] for c, s in typed.items()})
    for col in schema.text_fields:
        frame[col] = frame[col].astype("str")
    if SOURCE_ID in raw.columns:
        frame.insert(0, SOURCE_ID, raw.loc[valid, SOURCE_ID].astype("str"))
    frame = frame.reset_index(drop=True)

    bad = ~valid
    quarantine = pd.DataFrame({
        SOURCE_ID: raw.loc[bad, SOURCE_ID].to_numpy() if SOURCE_ID in raw.columns else [None] * int(bad.sum()),
        "id": [None if _is_missing(v) else str(v)[:200] for v in
               (raw.loc[bad, schema.id] if schema.id in raw.columns else [None] * int(bad.sum()))],
        "reason": reasons[bad],
    })
    quarantine["document"] = [
        {k: (None if _is_missing(v) else v) for k, v in row.items() if k != SOURCE_ID}
        for row in raw.loc[bad].to_dict("records")
    ]
    return Validated(frame=frame, quarantine=quarantine.reset_index(drop=True))


def to_documents(frame: pd.DataFrame, schema: DatasetSchema) -> list[dict[str, Any]]:
    """Typed frame back to documents in the capture app's shape (dates as YYYY-MM-DD strings)."""
    out = frame[[c for c in schema.fields if c in frame.columns]].copy()
    for col in schema.dates:
        if col in out.columns:
            out[col] = out[col].dt.strftime(DATE_FORMAT)
    records = out.to_dict("records")
    for rec in records:
        for key, value in rec.items():
            if isinstance(value, np.generic):
                rec[key] = value.item()
    return records
