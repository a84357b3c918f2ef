"""Serving: the Redis cache that answers "will this one be won?" at once."""

import dagster as dg
import pandas as pd

from salespred_assets.defs.common import IO_RETRY
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.cache import cache_frame

GROUP = "serving"


@dg.asset(group_name=GROUP, kinds={"redis"}, io_manager_key="redis_io_manager", retry_policy=IO_RETRY,
          metadata={"id_column": "opportunity_id", "write": "publish"})
def prediction_cache(opportunity_predictions: pd.DataFrame, mongo: MongoResource) -> pd.DataFrame:
    """Every prediction keyed by opportunity number, published as a new generation and swapped in.

    Each entry names its seller, so that the app can tell who may see it without asking MongoDB.
    """
    return cache_frame(opportunity_predictions, mongo.schema().seller)
