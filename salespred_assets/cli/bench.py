"""`salespred bench`: the benchmark suite."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.option("--scale", type=click.Choice(["full", "medium", "smoke"]), default="full", show_default=True,
              help="full: a million opportunities (half an hour to an hour); medium: a tenth, for a quick look at the "
                   "ratios; smoke: tiny, proves the suite runs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where BENCHMARKS.md and BENCHMARKS.json go.")
@click.option("--only", help="Comma-separated stages (default: all).")
def bench(scale: str, out_dir: str, only: str | None) -> None:
    """Run the benchmark suite and write BENCHMARKS.md and its JSON twin."""
    from salespred_assets import bench as suite

    results = suite.run(scale, Path(out_dir), only.split(",") if only else None,
                        progress=lambda line: click.echo(line, err=True))
    missed = [f"{r.title}: {g.text}" for r in results for g in r.goals if not g.met]
    failed = [r.title for r in results if r.skipped and r.skipped.startswith("failed")]
    met = sum(len(r.goals) for r in results) - len(missed)
    click.echo(f"wrote {Path(out_dir) / 'BENCHMARKS.md'}: {met} goals met, "
               f"{len(missed)} missed, {len(failed)} stages failed")
    for line in missed:
        click.echo(f"  missed: {line}")
    sys.exit(1 if failed else 0)
