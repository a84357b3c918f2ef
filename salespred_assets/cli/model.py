"""`salespred model`: model versions by hand (list, promote, roll back), each switch rescored."""

from __future__ import annotations

import json

import click

from salespred_assets.cli.common import connected_mongo


@click.group()
def model() -> None:
    """Model versions: list them, promote one, roll back (each switch rescores SQL and the Redis cache)."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def model_list(as_json: bool) -> None:
    """Every version, newest first; '*' marks the one that scores."""
    from salespred_assets.registry import lifecycle

    rows = lifecycle.versions(connected_mongo())
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no model versions yet: run the retrain job (or `salespred demo --once`)")
        return
    def fig(value: object) -> str:
        return f"{value:8.4f}" if isinstance(value, (int, float)) else f"{'-':>8}"

    click.echo(f"  {'version':24} {'status':10} {'trained at':26} {'ROC AUC':>8} {'accuracy':>8}  last promoted")
    for r in rows:
        click.echo(f"{'*' if r['current'] else ' '} {r['version']:24} {r['status']:10} "
                   f"{r['trained_at'] or '-'!s:26} {fig(r['roc_auc'])} {fig(r['accuracy'])}  "
                   f"{r['last_promoted'] or '-'}")


def _switched(result: dict) -> None:
    what = "now scores" if result["switched"] else "was already current; rescored"
    click.echo(f"model {result['version']} {what} (previous: {result['previous'] or 'none'}); rescore run "
               f"{result['run_id']}: {result['rows']} SQL rows, Redis generation {result['cache_generation']}")


@model.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Promote a version the promotion gate rejected.")
def model_promote(version: str, force: bool) -> None:
    """Make VERSION the model that scores, then rescore SQL and the cache with it (no lookup misses)."""
    from salespred_assets.registry import lifecycle

    _switched(lifecycle.promote(connected_mongo(), version, force=force))


@model.command("rollback")
def model_rollback() -> None:
    """Return to the previously current version, and rescore SQL and the cache with it."""
    from salespred_assets.registry import lifecycle

    _switched(lifecycle.rollback(connected_mongo()))
