"""The Redis IO manager: the one way an asset's predictions reach the cache, keyed by opportunity number.

``metadata={"write": "publish"}`` (the default) writes a new generation and swaps it in (the full
refresh's ``prediction_cache``); ``"upsert"`` writes only the frame's keys into the live generation (a
batch of new opportunities, ``new_opportunity_cache``: a partition's write replaces its keys, nothing else).
"""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd

from salespred_assets.redis_cache.cache import serialize
from salespred_assets.redis_cache.resource import RedisResource


class RedisCacheIOManager(dg.ConfigurableIOManager):
    redis: RedisResource

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        meta = context.definition_metadata or {}
        id_column = str(meta.get("id_column", "opportunity_id"))
        cache = self.redis.cache()
        ids, values = (serialize(obj, id_column, seller_column="seller" if "seller" in obj.columns else None)
                       if len(obj) else ([], []))
        version = str(obj["model_version"].iloc[0]) if len(obj) else ""
        if meta.get("write", "publish") == "upsert":
            result = cache.upsert(ids, values, version)
        else:
            result = cache.publish(ids, values, version)
        context.add_output_metadata({"keys_written": len(ids), "generation": result["generation"],
                                     "model_version": version, "namespace": self.redis.namespace})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        cache = self.redis.cache()
        ids = list(cache.live_ids())
        rows = [{"opportunity_id": number, **json.loads(raw)}
                for number, raw in zip(ids, cache.get_many(ids), strict=True) if raw is not None]
        return pd.DataFrame(rows)
