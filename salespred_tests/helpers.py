"""Helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from salespred_assets.mongo.io_manager import MongoModelIOManager
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.io_manager import RedisCacheIOManager
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.sql.io_manager import SqlIOManager
from salespred_assets.sql.resource import SqlResource

AS_OF = dt.date(2026, 11, 1)


def build_test_resources(mongo: MongoResource, redis: RedisResource, sql_url: str, storage_dir: str | None = None) -> dict[str, Any]:
    sql = SqlResource(url=sql_url)
    resources: dict[str, Any] = {
        "mongo": mongo,
        "sql": sql,
        "redis": redis,
        "model_io_manager": MongoModelIOManager(mongo=mongo),
        "sql_io_manager": SqlIOManager(sql=sql),
        "redis_io_manager": RedisCacheIOManager(redis=redis),
    }
    if storage_dir:
        resources["io_manager"] = dg.FilesystemIOManager(base_dir=storage_dir)
    return resources


def all_assets_and_checks() -> tuple[list, list]:
    from salespred_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = [a for a in defs.assets or []]
    checks = [c for c in defs.asset_checks or []]
    del graph
    return assets, checks


def materialize_all(resources: dict[str, Any], run_config: dict | None = None, selection: Any = None,
                    instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    assets, checks = all_assets_and_checks()
    return dg.materialize([*assets, *checks], resources=resources, run_config=run_config or {},
                          selection=selection, instance=instance, raise_on_error=False)
