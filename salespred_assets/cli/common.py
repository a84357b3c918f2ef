"""What the command groups share: the default ports and the databases from the environment."""

from __future__ import annotations

DAGSTER_PORT = 3000
APP_PORT = 8000


def connected_mongo():
    """The configured (or embedded) MongoDB, pinged: a server that does not answer fails here, by name."""
    mongo = databases()[0]
    mongo.ping()
    return mongo


def databases():
    """(MongoDB, SQL, Redis) resources as the environment configures them (the definitions' and the app's way)."""
    from salespred_assets.resources import database_resources

    return database_resources()

