"""Opportunity documents to a typed frame, with every malformed document set aside with its reason.

Nothing here touches a database: the Mongo extract, the CSV loader and the seller app all pass their
records through :func:`validate`, so the rules live in one place.
"""

from __future__ import annotations

import datetime as dt
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
    rows = records if isinstance(records, list) else list(records)
    data = {c: [r.get(c, _MISSING) for r in rows] for c in columns}
    data[SOURCE_ID] = [None if v is _MISSING else str(v) for v in data[SOURCE_ID]]
    return pd.DataFrame(data, columns=columns, dtype=object)


class _Missing:
    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "<missing>"


_MISSING = _Missing()
_NUMBER_TYPES = (int, float, np.integer, np.floating)


def _is_missing(value: Any) -> bool:
    return value is _MISSING or value is None or (type(value) is float and value != value)


def _finite_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _iso_date_text(value: Any) -> bool:
    return type(value) is str and len(value) == 10 and value[4] == "-" and value[7] == "-"


def _parse_dates(arr: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(datetime64[ns] values with NaT where bad, mask of present-but-bad values)."""
    n = len(arr)
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    text = np.fromiter((_iso_date_text(v) for v in arr), dtype=bool, count=n)
    idx = np.flatnonzero(text)
    if idx.size:
        try:
            out[idx] = np.array(arr[idx].tolist(), dtype="datetime64[D]")
        except ValueError:  # an impossible date such as 2024-02-30 somewhere: parse one by one
            for i in idx:
                try:
                    out[i] = np.datetime64(arr[i], "D")
                except ValueError:
                    pass
    # datetime objects (e.g. BSON dates) are accepted as they are.
    other = np.flatnonzero(~text & ~missing)
    for i in other:
        value = arr[i]
        if isinstance(value, (dt.datetime, dt.date, pd.Timestamp, np.datetime64)):
            out[i] = np.datetime64(pd.Timestamp(value).tz_localize(None) if getattr(value, "tzinfo", None)
                                   else pd.Timestamp(value), "D")
    bad = ~missing & np.isnat(out)
    return out, bad


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
        for i in np.flatnonzero(mask):
            reasons[i] = f"{reasons[i]}; {text}" if reasons[i] else text

    typed: dict[str, np.ndarray] = {}
    for col in schema.fields:
        arr = raw[col].to_numpy(dtype=object) if col in raw.columns else np.full(n, _MISSING, dtype=object)
        missing = np.fromiter((_is_missing(v) for v in arr), dtype=bool, count=n)
        flag(missing, f"{col}: missing")
        if col in schema.number_fields:
            ok = np.fromiter((_finite_number(v) for v in arr), dtype=bool, count=n)
            flag(~ok & ~missing, f"{col}: not a finite number")
            nums = np.where(ok, arr, np.nan).astype("float64")
            if col in schema.non_negative:
                flag(ok & (nums < 0), f"{col}: negative")
            if col in schema.fractions:
                flag(ok & ((nums < 0) | (nums > 1)), f"{col}: outside [0, 1]")
            typed[col] = nums
        elif col in schema.dates:
            typed[col], bad = _parse_dates(arr, missing)
            flag(bad, f"{col}: not a YYYY-MM-DD date")
        else:
            ok = np.fromiter((type(v) is str and v.strip() != "" for v in arr), dtype=bool, count=n)
            flag(~ok & ~missing, f"{col}: not a non-empty text")
            if col == schema.stage:
                known = set(schema.stages)
                flag(ok & np.fromiter((v not in known for v in arr), dtype=bool, count=n) if n else ok,
                     f"{col}: unknown stage")
            typed[col] = arr

    valid = reasons == ""
    if dedupe and schema.id in typed and n:
        ids = pd.Series(typed[schema.id])
        dup = ids.where(valid).duplicated(keep="first").to_numpy() & valid
        flag(dup, f"{schema.id}: duplicate")
        valid = reasons == ""

    columns = {}
    if SOURCE_ID in raw.columns:
        columns[SOURCE_ID] = raw[SOURCE_ID].to_numpy(dtype=object)[valid].astype(str)
    for col, values in typed.items():
        columns[col] = values[valid]
    frame = pd.DataFrame(columns)
    for col in schema.text_fields:
        frame[col] = frame[col].astype("str")

    bad = ~valid
    bad_rows = raw[bad]
    ids = bad_rows[schema.id].to_numpy(dtype=object) if schema.id in raw.columns else np.full(int(bad.sum()), None)
    quarantine = pd.DataFrame({
        SOURCE_ID: bad_rows[SOURCE_ID].to_numpy(dtype=object) if SOURCE_ID in raw.columns else [None] * len(bad_rows),
        "id": [None if _is_missing(v) else str(v)[:200] for v in ids],
        "reason": reasons[bad],
    })
    quarantine["document"] = [
        {k: (None if _is_missing(v) else v) for k, v in row.items() if k != SOURCE_ID}
        for row in bad_rows.to_dict("records")
    ] if len(bad_rows) else []
    return Validated(frame=frame, quarantine=quarantine)


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
