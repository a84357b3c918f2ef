"""Scoring: every opportunity scored by the promoted model, with its reasons."""

import dagster as dg
import pandas as pd

from salespred_assets.core.features import feature_spec
from salespred_assets.core.scoring import score
from salespred_assets.defs.common import counts_md, md
from salespred_assets.defs.modeling.assets import production_model
from salespred_assets.mongo import model_store
from salespred_assets.mongo.resource import MongoResource

GROUP = "scoring"


@dg.asset(group_name=GROUP, kinds={"scikit-learn", "pandas"}, deps=[production_model])
def opportunity_predictions(raw_opportunities: pd.DataFrame, opportunity_features: pd.DataFrame,
                            mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Probability, label, score 1-99, grade and top factors for every opportunity, with its inputs."""
    schema = mongo.schema()
    model = model_store.load_current(mongo.db)
    preds = score(model, raw_opportunities, schema, features=opportunity_features[feature_spec(schema).columns])
    preds.attrs["schema"] = schema.to_dict()
    open_rows = preds[preds["outcome"] == "open"]
    metadata = {
        "dagster/row_count": len(preds),
        "model_version": model.version,
        "open_opportunities": len(open_rows),
        "grades_of_open": counts_md(open_rows["grade"], "grade") if len(open_rows) else dg.MetadataValue.md("none"),
        "preview": md(preds[["opportunity_id", "outcome", "probability", "score", "grade"]], max_rows=5),
    }
    if schema.amount and len(open_rows):
        metadata["expected_open_pipeline"] = float((open_rows[schema.amount] * open_rows["probability"]).sum())
    return dg.Output(preds, metadata=metadata)
