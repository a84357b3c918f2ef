"""Checks on what was read from MongoDB."""

import dagster as dg
import pandas as pd

from salespred_assets.core.documents import required
from salespred_assets.defs.ingestion.assets import raw_opportunities, sellers
from salespred_assets.mongo.resource import FROM_OPPORTUNITIES, QUARANTINE, MongoResource


@dg.asset_check(asset=raw_opportunities, description="Share of documents quarantined (warns above 0, fails above 5%).")
def raw_opportunities_quarantine(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    quarantined = mongo.db[QUARANTINE].count_documents(FROM_OPPORTUNITIES)
    total = quarantined + len(raw_opportunities)
    share = quarantined / total if total else 0.0
    return dg.AssetCheckResult(
        passed=quarantined == 0,
        severity=dg.AssetCheckSeverity.ERROR if share > 0.05 else dg.AssetCheckSeverity.WARN,
        metadata={"quarantined": quarantined, "valid": len(raw_opportunities), "share_quarantined": share,
                  # reported by `salespred seed --csv` when loaded; never in opportunities
                  "export_rows_set_aside": mongo.db[QUARANTINE].count_documents({"source.file": {"$exists": True}})},
    )


def _dtype_ok(series: pd.Series, kind: str) -> bool:
    if kind == "number":
        return pd.api.types.is_float_dtype(series)
    if kind == "date":
        return pd.api.types.is_datetime64_any_dtype(series)
    return pd.api.types.is_string_dtype(series)


@dg.asset_check(asset=raw_opportunities, blocking=True,
                description="The data contract holds for every row: each schema field present with its type "
                            "(number, date, text), no nulls in the required fields (id, stage, dates; a missing "
                            "category or number is kept for the model), one row per opportunity number.")
def raw_opportunities_schema(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    schema = mongo.schema()
    frame = raw_opportunities
    kinds = {f: "number" if f in schema.number_fields else "date" if f in schema.dates else "text"
             for f in schema.fields}
    absent = [f for f in schema.fields if f not in frame.columns]
    wrong_type = [f"{f} ({frame[f].dtype}, expected {kinds[f]})" for f in schema.fields
                  if f in frame.columns and not _dtype_ok(frame[f], kinds[f])]
    nulls = {f: int(frame[f].isna().sum()) for f in schema.fields if f in frame.columns}
    duplicated = int(frame[schema.id].duplicated().sum()) if schema.id in frame.columns else 0
    required_nulls = sum(n for f, n in nulls.items() if f in required(schema))
    return dg.AssetCheckResult(
        passed=not absent and not wrong_type and required_nulls == 0 and duplicated == 0,
        metadata={"rows": len(frame), "fields": len(schema.fields), "missing_fields": ", ".join(absent) or "none",
                  "wrong_types": ", ".join(wrong_type) or "none", "null_values": sum(nulls.values()),
                  "null_required_values": required_nulls,
                  "nulls_by_field": ", ".join(f"{f} ({n})" for f, n in nulls.items() if n) or "none",
                  "duplicate_numbers_in_frame": duplicated},
    )


@dg.asset_check(asset=raw_opportunities, blocking=False,
                description="Opportunity numbers held by more than one document in MongoDB (the first valid one is "
                            "kept, the others are quarantined).")
def raw_opportunities_duplicate_numbers(mongo: MongoResource) -> dg.AssetCheckResult:
    quarantine = mongo.db[QUARANTINE]
    query = {"reason": {"$regex": ": duplicate"}, **FROM_OPPORTUNITIES}
    duplicates = quarantine.count_documents(query)
    examples = [d.get("id") for d in quarantine.find(query, {"id": 1}).limit(5)]
    return dg.AssetCheckResult(
        passed=duplicates == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"duplicate_documents": duplicates, "examples": ", ".join(map(str, examples)) or "none"},
    )


# Dates outside this window are typos (a year 1024 or 2204), not opportunities.
EARLIEST_DATE = pd.Timestamp("1990-01-01")
LATEST_YEARS_AHEAD = 25


@dg.asset_check(asset=raw_opportunities, blocking=False,
                description="Value ranges: amounts >= 0, fractions in [0, 1], dates between 1990 and 25 years ahead, "
                            "close date not before creation. TCV below ACV is counted, not failed (19 such rows in "
                            "the reference data).")
def raw_opportunities_value_ranges(raw_opportunities: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    schema = mongo.schema()
    frame = raw_opportunities
    latest = pd.Timestamp.now().normalize() + pd.DateOffset(years=LATEST_YEARS_AHEAD)
    failures: dict[str, int] = {}
    for col in schema.non_negative:
        failures[f"{col} < 0"] = int((frame[col] < 0).sum())
    for col in schema.fractions:
        failures[f"{col} outside [0, 1]"] = int((frame[col].notna() & ~frame[col].between(0, 1)).sum())  # NaN: kept
    for col in schema.dates:
        outside = ~frame[col].between(EARLIEST_DATE, latest)
        failures[f"{col} outside {EARLIEST_DATE.year}-{latest.year}"] = int(outside.sum())
    if schema.created and schema.close:
        failures["close before creation"] = int((frame[schema.close] < frame[schema.created]).sum())
    metadata: dict = {"rows": len(frame), "violations": sum(failures.values()),
                      **{f"rows_{k}": v for k, v in failures.items()}}
    if {"acv", "tcv"} <= set(frame.columns):
        metadata["rows_tcv_below_acv (counted, allowed)"] = int((frame["tcv"] < frame["acv"]).sum())
    for col in schema.number_fields:
        if len(frame):
            metadata[f"range_{col}"] = f"{frame[col].min():.6g} .. {frame[col].max():.6g}"
    return dg.AssetCheckResult(passed=sum(failures.values()) == 0, severity=dg.AssetCheckSeverity.WARN,
                               metadata=metadata)


@dg.asset_check(asset=sellers, blocking=True,
                description="One seller per number and per username, and no column that could hold a password.")
def sellers_unique(sellers: pd.DataFrame) -> dg.AssetCheckResult:
    leaky = [c for c in sellers.columns if "pass" in c.lower() or "hash" in c.lower()]
    dup_numbers = int(sellers["numero_vendedor"].duplicated().sum())
    dup_users = int(sellers["username"].duplicated().sum())
    nulls = int(sellers[["numero_vendedor", "username"]].isna().to_numpy().sum())
    return dg.AssetCheckResult(
        passed=not leaky and dup_numbers == 0 and dup_users == 0 and nulls == 0,
        metadata={"sellers": len(sellers), "duplicate_numbers": dup_numbers, "duplicate_usernames": dup_users,
                  "missing_number_or_username": nulls, "password_like_columns": ", ".join(leaky) or "none"},
    )


@dg.asset_check(asset=sellers, blocking=False, additional_ins={"raw_opportunities": dg.AssetIn("raw_opportunities")},
                description="Every opportunity's seller is a known seller (otherwise nobody can log in to see it).")
def sellers_cover_opportunities(sellers: pd.DataFrame, raw_opportunities: pd.DataFrame,
                                mongo: MongoResource) -> dg.AssetCheckResult:
    field = mongo.schema().seller
    if not field:
        return dg.AssetCheckResult(passed=True, metadata={"seller_field": "none (the export has no seller role)"})
    owners = raw_opportunities[field].dropna().astype("str")
    without = len(raw_opportunities) - len(owners)  # a missing seller is kept (only managers see the row)
    unknown = owners[~owners.isin(set(sellers["numero_vendedor"].astype("str")))]
    return dg.AssetCheckResult(
        passed=unknown.empty and not without, severity=dg.AssetCheckSeverity.WARN,
        metadata={"opportunities": len(raw_opportunities), "sellers": len(sellers),
                  "opportunities_without_seller": without,
                  "opportunities_of_unknown_sellers": len(unknown), "unknown_sellers": int(unknown.nunique()),
                  "examples": ", ".join(sorted(unknown.unique())[:5]) or "none"},
    )
