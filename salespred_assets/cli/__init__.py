"""The ``salespred`` command line: one module per command group.

- ``services``: the embedded MongoDB and Redis (:mod:`.services`)
- ``seed``: data into MongoDB (:mod:`.data`)
- ``catalog``: the codes' display names, loaded and shown (:mod:`.catalog`)
- ``backtest``, ``evaluate``: the model judged on a CRM export (:mod:`.evaluation`)
- ``model``: versions by hand: list, promote, roll back (:mod:`.model`)
- ``batches``: partitions of new and changed opportunities (:mod:`.batches`)
- ``demo``, ``materialize``: the asset graph run into the Dagster instance (:mod:`.demo`)
- ``serve``: the seller app (:mod:`.serve`); ``bench``: the benchmark suite (:mod:`.bench`)
- ``stack``: the docker-compose topology as local processes (:mod:`.stack`)
"""

from __future__ import annotations

import sys

import click

from salespred_assets import settings
from salespred_assets.cli import batches, bench, catalog, data, demo, evaluation, model, serve, services, stack
from salespred_assets.errors import SalespredError, ServiceUnavailable


@click.group()
def cli() -> None:
    """salespred: predict which B2B sales opportunities will be won, and why."""
    settings.load_environment()


# One module per command group; click lists the commands by name.
for command in (services.services, data.seed, catalog.catalog, evaluation.backtest, evaluation.evaluate, model.model,
                batches.batches_group, demo.demo, demo.materialize, serve.serve, bench.bench,
                stack.stack):
    cli.add_command(command)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ServiceUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    except SalespredError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # last resort: name the database and mask secrets
        converted = _as_service_error(exc)
        if converted is None:
            raise
        click.echo(f"error: {converted}", err=True)
        sys.exit(3)


def _as_service_error(exc: BaseException) -> ServiceUnavailable | None:
    import pymongo.errors
    import redis
    import sqlalchemy.exc

    if isinstance(exc, pymongo.errors.ConnectionFailure):
        return ServiceUnavailable("MongoDB", settings.get(settings.ENV_MONGO) or "embedded", exc)
    if isinstance(exc, redis.ConnectionError):
        return ServiceUnavailable("Redis", settings.get(settings.ENV_REDIS) or "embedded", exc)
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return ServiceUnavailable("SQL database", settings.get(settings.ENV_SQL) or "embedded", exc.orig or exc)
    return None

