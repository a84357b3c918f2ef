"""Resources from the environment, built in one place: the definitions, the CLI and the seller app all call
:func:`database_resources` (the definitions through :func:`build_resources`).

Each database's URL comes from its variable when set; unset, ``local`` (the default) uses the embedded
service and ``production`` refuses to start, naming the variable. This is the only place that decides
"configured or embedded": a resource whose URL is empty means the embedded service and nothing else.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from salespred_assets import settings
from salespred_assets.embedded import services
from salespred_assets.errors import SalespredError
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.io_manager import RedisCacheIOManager
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry.io_manager import MongoModelIOManager
from salespred_assets.sql.io_manager import SqlIOManager
from salespred_assets.sql.resource import SqlResource
from salespred_assets.storage.io_manager import FrameIOManager
from salespred_assets.storage.location import choose

_SERVICE = {settings.ENV_MONGO: "mongo", settings.ENV_REDIS: "redis", settings.ENV_SQL: "sql"}


def _configured_or_embedded(name: str, production: bool, env_vars: bool, pin: bool = False) -> dg.EnvVar | str:
    """The variable's value (as an EnvVar for Dagster, which keeps it out of its stored config), or "" for the
    embedded service (``pin``: its URL now, started if need be); in production an unset variable is an error
    that names it."""
    if settings.get(name):
        return dg.EnvVar(name) if env_vars else str(settings.get(name))
    if production:
        if env_vars:
            return dg.EnvVar(name)  # Dagster reports the missing variable by name when the code location loads
        raise SalespredError(f"{name} must be set when SALESPRED_ENV=production")
    return services.embedded_url(_SERVICE[name]) if pin else ""


def database_resources(environment: str | None = None, *, env_vars: bool = False, mongo_timeout_ms: int | None = None,
                       redis_timeout_s: float | None = None,
                       pin_embedded: bool = False) -> tuple[MongoResource, SqlResource, RedisResource]:
    """MongoDB, the SQL database and Redis as the environment configures them.

    ``env_vars``: URLs as Dagster ``EnvVar``s (the definitions); otherwise their values (the CLI, the app).
    The timeouts replace the resources' defaults (the seller app answers sooner than a batch job).
    ``pin_embedded``: an embedded service's URL is fixed now (the app), so that a stopped service stays
    stopped for it, answering 503, instead of being started again by whichever request reads the URL next.
    """
    production = (environment or settings.environment()) == "production"
    mongo_options: dict[str, Any] = {} if mongo_timeout_ms is None else {"timeout_ms": mongo_timeout_ms}
    redis_options: dict[str, Any] = {} if redis_timeout_s is None else {"timeout_s": redis_timeout_s}
    mongo = MongoResource(uri=_configured_or_embedded(settings.ENV_MONGO, production, env_vars, pin_embedded),
                          **mongo_options)
    sql = SqlResource(url=_configured_or_embedded(settings.ENV_SQL, production, env_vars, pin_embedded))
    redis = RedisResource(url=_configured_or_embedded(settings.ENV_REDIS, production, env_vars, pin_embedded),
                          **redis_options)
    return mongo, sql, redis


def build_resources(environment: str | None = None) -> dict[str, object]:
    """Every resource key the definitions use, from the environment."""
    mongo, sql, redis = database_resources(environment, env_vars=True)
    return wire(mongo, sql, redis, storage_setting())


def storage_setting() -> dg.EnvVar | str:
    """Where intermediate values live: ``SALESPRED_STORAGE_URL`` when set (it wins), else ``SALESPRED_STORAGE_DIR``,
    else ``$SALESPRED_HOME/storage``; checked now, so that a bad URL stops the code location from loading."""
    url, directory = settings.get(settings.ENV_STORAGE_URL), settings.get(settings.ENV_STORAGE_DIR)
    location = choose(url, directory, settings.home() / "storage", url_name=settings.ENV_STORAGE_URL,
                      directory_name=settings.ENV_STORAGE_DIR)
    if url:
        return dg.EnvVar(settings.ENV_STORAGE_URL)
    return dg.EnvVar(settings.ENV_STORAGE_DIR) if directory else location.url


def wire(mongo: MongoResource, sql: SqlResource, redis: RedisResource, storage: dg.EnvVar | str) -> dict[str, object]:
    """The resource keys the assets use, around one resource per database; ``storage``: a directory or URL for
    the intermediate values (see :mod:`salespred_assets.storage`)."""
    origin = storage.env_var_name if isinstance(storage, dg.EnvVar) else "the storage location"
    return {
        "mongo": mongo,
        "sql": sql,
        "redis": redis,
        "model_io_manager": MongoModelIOManager(mongo=mongo),
        "sql_io_manager": SqlIOManager(sql=sql),
        "redis_io_manager": RedisCacheIOManager(redis=redis),
        # Intermediate frames, as Parquet under a directory or an object store URL that every run can reach.
        "io_manager": FrameIOManager(url=storage, origin=origin),
    }
