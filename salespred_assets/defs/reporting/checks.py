"""Checks on the reporting tables: what SQL holds reconciles with MongoDB."""

import dagster as dg
import sqlalchemy as sa

from salespred_assets.defs.reporting.assets import dim_seller, fact_opportunity
from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE, MongoResource
from salespred_assets.sql import tables, writer
from salespred_assets.sql.resource import SqlResource


@dg.asset_check(asset=fact_opportunity, blocking=True,
                description="SQL rows = MongoDB documents - quarantined documents, with no duplicate ids.")
def fact_opportunity_reconciles(sql: SqlResource, mongo: MongoResource) -> dg.AssetCheckResult:
    sql_rows = writer.count_rows(sql.engine, tables.FACT_OPPORTUNITY)
    mongo_docs = mongo.db[OPPORTUNITIES].count_documents({})
    quarantined = mongo.db[QUARANTINE].count_documents({})
    key = mongo.schema().id
    with sql.engine.connect() as conn:
        t = sa.table(tables.FACT_OPPORTUNITY, sa.column(key))
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(t.c[key])))).scalar_one()
    return dg.AssetCheckResult(
        passed=sql_rows == mongo_docs - quarantined and distinct == sql_rows,
        metadata={"sql_rows": sql_rows, "mongo_documents": mongo_docs, "quarantined": quarantined,
                  "distinct_ids": int(distinct)},
    )


@dg.asset_check(asset=dim_seller, blocking=True,
                description="The seller table holds every seller and no column that could hold a password.")
def dim_seller_safe(sql: SqlResource, mongo: MongoResource) -> dg.AssetCheckResult:
    frame = writer.read_table(sql.engine, tables.DIM_SELLER)
    leaky = [c for c in frame.columns if "pass" in c.lower() or "hash" in c.lower()]
    values = frame.astype(str).apply(lambda col: col.str.startswith("$argon2")).to_numpy().sum()
    expected = mongo.db["sellers"].count_documents({})
    return dg.AssetCheckResult(
        passed=not leaky and int(values) == 0 and len(frame) == expected,
        metadata={"rows": len(frame), "sellers_in_mongo": expected, "suspicious_columns": ", ".join(leaky) or "none",
                  "hash_like_values": int(values)},
    )

