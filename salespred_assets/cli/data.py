"""`salespred seed`: opportunities into MongoDB, synthetic or from a CRM export, and the sellers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from salespred_assets.cli.common import connected_mongo


@click.command()
@click.option("--synthetic", "n", type=int, help="Generate N synthetic opportunities.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Load a CRM export (CSV).")
@click.option("--sellers", "sellers_path", type=click.Path(dir_okay=False), help="Sellers CSV (passwords are hashed).")
@click.option("--schema", "schema_path", type=click.Path(dir_okay=False), help="Schema file (YAML/TOML) for --csv.")
@click.option("--seed", default=42, show_default=True, help="Random seed for --synthetic.")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%d"]), help="Reference date for --synthetic (default today).")
@click.option("--batch-size", default=5000, show_default=True, help="Documents per insert.")
@click.option("--replace", is_flag=True, help="Delete existing opportunities first.")
def seed(n, csv_path, sellers_path, schema_path, seed, as_of, batch_size, replace) -> None:
    """Load opportunities into MongoDB: synthetic (--synthetic N) or an export (--csv PATH)."""
    from tqdm import tqdm

    from salespred_assets.core.schema import load_schema
    from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE
    from salespred_assets.operations import loading

    if (n is None) == (csv_path is None):
        raise click.UsageError("give exactly one of --synthetic N or --csv PATH")
    mongo = connected_mongo()
    if replace:
        mongo.db[OPPORTUNITIES].delete_many({})
        mongo.db[QUARANTINE].delete_many({})
    started = time.perf_counter()
    if n is not None:
        with tqdm(total=n, unit="doc", desc="opportunities", file=sys.stderr, mininterval=0.5) as bar:
            written = loading.seed_synthetic(mongo, n, seed=seed, as_of=as_of.date() if as_of else None,
                                             batch_size=batch_size, progress=bar.update)
        click.echo(f"inserted {written} synthetic opportunities in {time.perf_counter() - started:.1f} s")
    else:
        schema = load_schema(schema_path)
        with tqdm(unit="row", desc=Path(csv_path).name, file=sys.stderr, mininterval=0.5) as bar:
            result = loading.seed_csv(mongo, csv_path, schema, progress=bar.update)
        click.echo(f"inserted {result['inserted']} opportunities from {csv_path}"
                   + (f"; {result['rejected']} rows rejected (invalid)" if result["rejected"] else ""))
    if sellers_path:
        click.echo(f"loaded {loading.load_sellers_csv(mongo, sellers_path)} sellers "
                   "(passwords stored as argon2 hashes)")
    else:
        path = loading.ensure_demo_sellers(mongo)
        if path:
            click.echo(f"created 5 demo sellers; their logins are in {path}")
