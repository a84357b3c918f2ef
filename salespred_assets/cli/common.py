"""What the command groups share: the default ports and a MongoDB connection from the settings."""

from __future__ import annotations

from salespred_assets import settings

DAGSTER_PORT = 3000
APP_PORT = 8000


def connected_mongo():
    """The configured (or embedded) MongoDB, pinged: a server that does not answer fails here, by name."""
    from salespred_assets.mongo.resource import MongoResource

    mongo = MongoResource(uri=settings.get(settings.ENV_MONGO) or "")
    mongo.ping()
    return mongo

