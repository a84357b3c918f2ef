"""Resources, chosen in one place by environment.

``local`` (the default): each database comes from its variable when set, else the embedded service.
``production``: every URL must come from the environment (Dagster reports a missing one by name).
"""

from __future__ import annotations

import dagster as dg

from salespred_assets import settings
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.io_manager import RedisCacheIOManager
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry.io_manager import MongoModelIOManager
from salespred_assets.sql.io_manager import SqlIOManager
from salespred_assets.sql.resource import SqlResource


def _env_or_embedded(name: str, production: bool) -> dg.EnvVar | str:
    # EnvVar keeps the value out of Dagster's stored config; "" selects the embedded service.
    return dg.EnvVar(name) if production or settings.get(name) else ""


def build_resources(environment: str | None = None) -> dict[str, object]:
    production = (environment or settings.environment()) == "production"
    mongo = MongoResource(uri=_env_or_embedded(settings.ENV_MONGO, production))
    sql = SqlResource(url=_env_or_embedded(settings.ENV_SQL, production))
    redis = RedisResource(url=_env_or_embedded(settings.ENV_REDIS, production))
    storage = (dg.EnvVar("SALESPRED_STORAGE_DIR") if settings.get("SALESPRED_STORAGE_DIR")
               else str(settings.home() / "storage"))
    return wire(mongo, sql, redis, storage)


def wire(mongo: MongoResource, sql: SqlResource, redis: RedisResource, storage: dg.EnvVar | str) -> dict[str, object]:
    """The resource keys the assets use, around one resource per database."""
    return {
        "mongo": mongo,
        "sql": sql,
        "redis": redis,
        "model_io_manager": MongoModelIOManager(mongo=mongo),
        "sql_io_manager": SqlIOManager(sql=sql),
        "redis_io_manager": RedisCacheIOManager(redis=redis),
        # Intermediate frames; point SALESPRED_STORAGE_DIR at a shared volume when runs get their own containers.
        "io_manager": dg.FilesystemIOManager(base_dir=storage),
    }
