"""Ingestion: MongoDB collections the capture app writes, read into typed frames."""

import dagster as dg
import pandas as pd

from salespred_assets.defs.common import IO_RETRY, counts_md, md
from salespred_assets.mongo.resource import MongoResource

GROUP = "ingestion"

opportunities_collection = dg.AssetSpec(
    key=["mongo", "opportunities"],
    group_name=GROUP,
    kinds={"mongodb"},
    description="MongoDB collection `opportunities`, written by the sellers' capture app (source of truth).",
)
sellers_collection = dg.AssetSpec(
    key=["mongo", "sellers"],
    group_name=GROUP,
    kinds={"mongodb"},
    description="MongoDB collection `sellers`: logins, titles and argon2 password hashes.",
)

catalogs_collection = dg.AssetSpec(
    key=["mongo", "catalogs"],
    group_name=GROUP,
    kinds={"mongodb"},
    description="MongoDB collection `catalogs`: display names of the codes in Spanish and English "
                "(`salespred catalog load`).",
)


@dg.asset(group_name=GROUP, kinds={"mongodb", "pandas"}, deps=[opportunities_collection], retry_policy=IO_RETRY)
def raw_opportunities(context: dg.AssetExecutionContext, mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Every opportunity document as a typed row; malformed ones are quarantined with their reason."""
    mongo.ping()
    schema = mongo.schema()
    validated = mongo.read_opportunities(schema)
    quarantined = mongo.write_quarantine(validated.quarantine, context.run.run_id, replace_all=True)
    frame = validated.frame
    if quarantined:
        context.log.warning(f"{quarantined} opportunity documents quarantined: {validated.reason_counts}")
    reasons = pd.DataFrame(sorted(validated.reason_counts.items()), columns=["reason", "documents"])
    return dg.Output(frame, metadata={
        "dagster/row_count": len(frame),
        # What fact_opportunity_reconciles compares SQL with: the documents this read found (counting them
        # again later would scan the collection, and would count captures made since).
        "documents_read": len(frame) + len(validated.quarantine),
        "quarantined": quarantined,
        "quarantine_reasons": md(reasons) if len(reasons) else dg.MetadataValue.md("none"),
        "stages": counts_md(frame[schema.stage], "stage") if len(frame) else dg.MetadataValue.md("no rows"),
        "schema_id_field": schema.id,
        # The new-opportunity sensor's first watermark: documents above it were not read here.
        "max_object_id": _max_object_id(frame),
        "preview": md(frame.drop(columns=["_id"], errors="ignore"), max_rows=5),
    })


def _max_object_id(frame: pd.DataFrame) -> str:
    ids = frame["_id"].astype("str") if "_id" in frame.columns else pd.Series([], dtype="str")
    ids = ids[ids.str.fullmatch(r"[0-9a-f]{24}")]
    return str(ids.max()) if len(ids) else ""


@dg.asset(group_name=GROUP, kinds={"mongodb", "pandas"}, deps=[sellers_collection], retry_policy=IO_RETRY)
def sellers(mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Sellers without any password or hash: nothing downstream ever sees one."""
    mongo.ping()
    frame = mongo.read_sellers()
    titles = counts_md(frame["title"], "title") if len(frame) else dg.MetadataValue.md("none")
    return dg.Output(frame, metadata={"dagster/row_count": len(frame), "titles": titles})
