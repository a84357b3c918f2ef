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
    # Positions in the validated input of the frame's rows and of the quarantine's (None after combine()).
    rows: np.ndarray | None = None
    quarantined_rows: np.ndarray | None = None

    @property
    def reason_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        kinds = self.quarantine["reason"].str.split(";").explode().str.strip().str.split(":").str[-1].str.strip()
        return {str(k): int(v) for k, v in kinds.value_counts().items()}


def records_frame(records: Iterable[Mapping[str, Any]], schema: DatasetSchema) -> pd.DataFrame:
    """An untyped frame of the schema's fields (absent keys become nulls), keeping ``_id`` as text."""
    columns = [SOURCE_ID, *schema.fields]
    rows = records if isinstance(records, list) else list(records)
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    # Column by column, as objects: no type is guessed here (validate decides), and a list or a document
    # in a field stays one value.
    ids = (row.get(SOURCE_ID) for row in rows)
    # `v != v` is true only for a NaN, of whichever numeric type the driver returned.
    data = {SOURCE_ID: np.fromiter((None if v is None or v != v else str(v) for v in ids),  # noqa: PLR0124
                                   dtype=object, count=len(rows))}
    for c in schema.fields:
        data[c] = np.fromiter((row.get(c) for row in rows), dtype=object, count=len(rows))
    return pd.DataFrame(data, dtype=object, copy=False)


_NUMBER_TYPES = (int, float, np.integer, np.floating)
_NUMERIC_KINDS = {"floating", "integer", "mixed-integer-float", "empty"}


def _is_missing(value: Any) -> bool:
    return value is None or (type(value) is float and math.isnan(value)) or value is pd.NaT


def _finite_number(value: Any) -> bool:
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _numbers(arr: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of present values that are not finite numbers)."""
    if arr.dtype.kind in "fiu":
        nums = arr.astype("float64")
        return nums, ~missing & ~np.isfinite(nums)
    if pd.api.types.infer_dtype(arr, skipna=True) in _NUMERIC_KINDS:  # no text, no booleans
        nums = np.where(missing, np.nan, arr).astype("float64") if missing.any() else arr.astype("float64")
        return nums, ~missing & ~np.isfinite(nums)
    ok = np.fromiter((_finite_number(v) for v in arr), dtype=bool, count=len(arr))
    return np.where(ok, arr, np.nan).astype("float64"), ~ok & ~missing


def _texts(arr: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(object values, mask of present values that are not non-empty text)."""
    arr = arr.astype(object, copy=False)
    if pd.api.types.infer_dtype(arr, skipna=True) in ("string", "empty"):
        blank = np.zeros(len(arr), dtype=bool)
        present = np.flatnonzero(~missing)
        if present.size:  # "" or whitespace only; map() over a builtin runs at C speed
            values = arr[present]
            blank[present] = np.fromiter(map(len, values), dtype=np.int64, count=present.size) == 0
            blank[present] |= np.fromiter(map(str.isspace, values), dtype=bool, count=present.size)
        return arr, blank
    ok = np.fromiter((type(v) is str and v.strip() != "" for v in arr), dtype=bool, count=len(arr))
    return arr, ~ok & ~missing


def _date(value: Any) -> dt.date | None:
    """A YYYY-MM-DD string, or a datetime (e.g. a BSON date), as a date; anything else None."""
    if type(value) is str:
        if len(value) != 10 or value[4] != "-" or value[7] != "-":
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, (dt.datetime, pd.Timestamp)):
        value = pd.Timestamp(value)
        return (value.tz_convert(None) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return pd.Timestamp(value).date()
    return None


_NAT = np.datetime64("NaT", "D")


def _dates(arr: np.ndarray, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(datetime64[ns] values, mask of present values that are not YYYY-MM-DD dates or datetimes)."""
    if arr.dtype.kind == "M":
        parsed = arr.astype("datetime64[D]")
        return parsed.astype("datetime64[ns]"), ~missing & np.isnat(parsed)
    parsed = np.full(len(arr), _NAT, dtype="datetime64[D]")
    present = np.flatnonzero(~missing)
    values = arr[present]
    if present.size and pd.api.types.infer_dtype(values, skipna=False) == "string":
        # Fast path: NumPy parses ISO dates in C; the round trip back to text keeps it strict (YYYY-MM-DD only).
        texts = values.tolist()
        try:
            fast = np.array(texts, dtype="datetime64[D]")
        except ValueError:
            fast = None
        if fast is not None and (np.datetime_as_string(fast, unit="D") == np.array(texts, dtype=str)).all():
            parsed[present] = fast
            return parsed.astype("datetime64[ns]"), np.zeros(len(arr), dtype=bool)
    parsed[present] = (np.array([_date(v) or _NAT for v in values], dtype="datetime64[D]") if present.size
                       else parsed[present])
    return parsed.astype("datetime64[ns]"), ~missing & np.isnat(parsed)


STR = pd.StringDtype(na_value=np.nan)  # pandas' default ``str`` dtype, resolved once
QUARANTINE_COLUMNS = [SOURCE_ID, "id", "reason", "document"]


def _repeated(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask of valid rows whose id an earlier valid row already has."""
    rows = np.flatnonzero(valid)
    codes = pd.factorize(ids[rows])[0]
    repeated = np.ones(len(rows), dtype=bool)
    repeated[np.unique(codes, return_index=True)[1]] = False
    out = np.zeros(len(ids), dtype=bool)
    out[rows[repeated]] = True
    return out


def required(schema: DatasetSchema) -> tuple[str, ...]:
    """Fields without which a row is rejected: its id, its stage, and the dates every feature is counted from."""
    return (schema.id, schema.stage, *schema.dates)


def validate(raw: pd.DataFrame, schema: DatasetSchema, *, dedupe: bool = True) -> Validated:
    """Type ``raw`` (columns straight from documents) and quarantine what does not fit.

    Rules: the id, the stage and the dates are present (:func:`required`); a missing categorical value
    (client and seller included) is kept as missing, its own category for the model, and a missing
    number stays NaN (the forest splits on it); a present value must fit its type: text fields are
    strings; numbers are real, finite numbers (a number stored as a string is refused, not guessed);
    dates are ``YYYY-MM-DD`` strings or datetimes; the stage is one the schema knows; amounts are >= 0
    and fractions lie in [0, 1]; an id seen twice keeps its first valid document. Columns of one clean
    type are checked with vectorised operations; only a mixed column is inspected value by value.
    """
    n = len(raw)
    needed = required(schema)
    reasons = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, text: str) -> None:
        for i in np.flatnonzero(mask):
            reasons[i] = f"{reasons[i]}; {text}" if reasons[i] else text

    typed: dict[str, np.ndarray] = {}
    for col in schema.fields:
        arr = raw[col].to_numpy() if col in raw.columns else np.full(n, None, dtype=object)
        missing = pd.isna(arr)
        if col in needed:
            flag(missing, f"{col}: missing")
        if col in schema.number_fields:
            nums, bad = _numbers(arr, missing)
            flag(bad, f"{col}: not a finite number")
            ok = ~missing & ~bad
            if col in schema.non_negative:
                flag(ok & (nums < 0), f"{col}: negative")
            if col in schema.fractions:
                flag(ok & ((nums < 0) | (nums > 1)), f"{col}: outside [0, 1]")
            typed[col] = nums
        elif col in schema.dates:
            typed[col], bad = _dates(arr, missing)
            flag(bad, f"{col}: not a YYYY-MM-DD date")
        else:
            arr, bad = _texts(arr, missing)
            flag(bad, f"{col}: not a non-empty text")
            if col == schema.stage:
                flag(~missing & ~bad & ~np.isin(arr, list(schema.stages)), f"{col}: unknown stage")
            typed[col] = arr

    valid = reasons == ""
    if dedupe and schema.id in typed and valid.sum() > 1:
        flag(_repeated(typed[schema.id], valid), f"{schema.id}: duplicate")
        valid = reasons == ""

    columns = {}
    if SOURCE_ID in raw.columns:
        columns[SOURCE_ID] = pd.array(raw[SOURCE_ID].to_numpy(dtype=object)[valid].astype(str), dtype=STR)
    for col, values in typed.items():
        columns[col] = pd.array(values[valid], dtype=STR) if col in schema.text_fields else values[valid]
    frame = pd.DataFrame(columns, copy=False)

    rows = np.flatnonzero(valid)
    if valid.all():
        return Validated(frame, pd.DataFrame(columns=QUARANTINE_COLUMNS), rows, np.zeros(0, dtype=np.int64))
    bad_rows = raw[~valid]
    ids = bad_rows[schema.id].to_numpy(dtype=object) if schema.id in raw.columns else np.full(len(bad_rows), None)
    quarantine = pd.DataFrame({
        SOURCE_ID: bad_rows[SOURCE_ID].to_numpy(dtype=object) if SOURCE_ID in raw.columns else [None] * len(bad_rows),
        # object dtype: a missing number stays None (a str column would store it as NaN)
        "id": pd.Series([None if _is_missing(v) else str(v)[:200] for v in ids], dtype=object),
        "reason": reasons[~valid],
    })
    quarantine["document"] = [
        {k: (None if _is_missing(v) else v) for k, v in row.items() if k != SOURCE_ID}
        for row in bad_rows.to_dict("records")
    ] if len(bad_rows) else []
    return Validated(frame, quarantine, rows, np.flatnonzero(~valid))


def combine(parts: list[Validated], schema: DatasetSchema) -> Validated:
    """Join batches validated without de-duplication; an id seen again keeps its first valid row."""
    if not parts:
        return validate(records_frame([], schema), schema)
    frame = pd.concat([p.frame for p in parts], ignore_index=True) if len(parts) > 1 else parts[0].frame
    quarantine = pd.concat([p.quarantine for p in parts], ignore_index=True) if len(parts) > 1 else parts[0].quarantine
    dup = frame[schema.id].duplicated(keep="first").to_numpy()
    if dup.any():
        repeated = frame[dup]
        quarantine = pd.concat([quarantine, pd.DataFrame({
            SOURCE_ID: repeated[SOURCE_ID].to_numpy(dtype=object) if SOURCE_ID in repeated else [None] * len(repeated),
            "id": repeated[schema.id].astype(str).to_numpy(),
            "reason": f"{schema.id}: duplicate",
            "document": to_documents(repeated, schema),
        })], ignore_index=True)
        frame = frame[~dup].reset_index(drop=True)
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
