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
@click.option("--max-rejected", default=0.01, show_default=True, type=float,
              help="--csv: the largest share of rows that may be rejected (set aside in opportunities_quarantine); "
                   "above it nothing is written and the exit code is 2.")
@click.option("--replace", is_flag=True,
              help="Replace the opportunities (and, with --sellers, the sellers), all or nothing: checked "
                   "first, then swapped in whole.")
def seed(n, csv_path, sellers_path, schema_path, seed, as_of, batch_size, max_rejected, replace) -> None:
    """Load opportunities into MongoDB: synthetic (--synthetic N) or an export (--csv PATH)."""
    from tqdm import tqdm

    from salespred_assets.core.schema import load_schema
    from salespred_assets.operations import loading

    if (n is None) == (csv_path is None):
        raise click.UsageError("give exactly one of --synthetic N or --csv PATH")
    mongo = connected_mongo()
    if loading.finish_swap(mongo):
        click.echo("finished swapping in the data set of an interrupted --replace load", err=True)
    started = time.perf_counter()
    if csv_path is not None:
        schema = load_schema(schema_path)
        schema_name = f"the schema file {schema_path}" if schema_path else "the default schema (the capture app's)"
        try:
            with tqdm(unit="row", desc=Path(csv_path).name, file=sys.stderr, mininterval=0.5) as bar:
                report = loading.load_csv(mongo, csv_path, schema, schema_name=schema_name, max_rejected=max_rejected,
                                          replace=replace, sellers_path=sellers_path, progress=bar.update)
        except loading.TooManyRejected as exc:
            _print_rejections(exc.report)
            raise
        _print_rejections(report)
        click.echo(f"{'replaced the opportunities with' if replace else 'inserted'} {report.inserted:,} opportunities "
                   f"from {csv_path}"
                   + (f"; {report.already_loaded:,} rows were already loaded" if report.already_loaded else "")
                   + (f"; {report.rejected:,} rows set aside in opportunities_quarantine" if report.rejected else "")
                   + f" ({time.perf_counter() - started:.1f} s)")
        if report.sellers is not None:
            click.echo(f"loaded {report.sellers} sellers (passwords stored as argon2 hashes)")
        elif (path := loading.ensure_demo_sellers(mongo)) is not None:
            click.echo(f"created 5 demo sellers; their logins are in {path}")
        return
    # Synthetic data needs no validation: it is generated in the contract's shape.
    sellers = loading.read_sellers_csv(sellers_path) if sellers_path else None
    day = as_of.date() if as_of else None
    with tqdm(total=n, unit="doc", desc="opportunities", file=sys.stderr, mininterval=0.5) as bar:
        if replace:  # swapped in whole, with the sellers (as --csv --replace)
            written = loading.replace_synthetic(mongo, n, seed=seed, as_of=day, sellers=sellers, progress=bar.update)
        else:
            written = loading.seed_synthetic(mongo, n, seed=seed, as_of=day, batch_size=batch_size,
                                             progress=bar.update)
    click.echo(f"{'replaced the opportunities with' if replace else 'inserted'} {written} synthetic opportunities "
               f"in {time.perf_counter() - started:.1f} s")
    if sellers is not None:
        if not replace:
            loading.write_sellers(mongo, sellers, prepared=True)
        click.echo(f"loaded {len(sellers)} sellers (passwords stored as argon2 hashes)")
    elif (path := loading.ensure_demo_sellers(mongo)) is not None:
        click.echo(f"created 5 demo sellers; their logins are in {path}")


def _print_rejections(report) -> None:
    """The rejected rows by reason: how many, and the first row numbers (the header is row 1)."""
    if not report.rejected:
        return
    click.echo(f"{report.rejected:,} of {report.rows:,} rows of {report.file} rejected ({report.rejected_share:.1%}):")
    width = max(len("reason"), *(len(r) for r, _, _ in report.reasons))
    click.echo(f"  {'reason':<{width}}  {'rows':>7}  example rows")
    for reason, count, rows in report.reasons:
        more = ", ..." if count > len(rows) else ""
        click.echo(f"  {reason:<{width}}  {count:>7,}  {', '.join(map(str, rows))}{more}")
    for hint in report.hints:
        click.echo(f"  hint: {hint}")
