"""`salespred batches`: opportunities cut into batches (partitions), one run each."""

from __future__ import annotations

import sys

import click

from salespred_assets.cli.common import connected_mongo


@click.group("batches")
def batches_group() -> None:
    """Batches of opportunities (partitions of opportunity_batches): one run each; a full rescore fanned out."""


@batches_group.command("plan")
@click.option("--rows", default=50_000, show_default=True, type=click.IntRange(1), help="Documents per batch.")
def batches_plan(rows: int) -> None:
    """Cut every opportunity into _id-range batches and register them as partitions, ready to launch."""
    import dagster as dg

    from salespred_assets.operations import runner
    from salespred_assets.scoring import batches

    keys = batches.tile(connected_mongo(), rows)
    runner.prepare_dagster_home()
    instance = dg.DagsterInstance.get()
    new = [k for k in keys if not instance.has_dynamic_partition(batches.PARTITIONS, k)]
    instance.add_dynamic_partitions(batches.PARTITIONS, new)
    click.echo(f"{len(keys)} batches of up to {rows} opportunities "
               f"({len(new)} new partitions of {batches.PARTITIONS}):")
    for key in keys:
        click.echo(f"  {key}")
    click.echo("launch them as a backfill (one run per batch): Dagster UI > Lineage > new_opportunity_scores > "
               "Materialize > choose these partitions; or\n  dagster job backfill -w workspace.yaml -j "
               f"score_new_opportunities --noprompt --partitions {','.join(keys[:2])}{',...' if len(keys) > 2 else ''}")


@batches_group.command("run")
@click.argument("key")
def batches_run(key: str) -> None:
    """Score one batch in-process (recorded in the Dagster instance): KEY is '<lo>-<hi>' or 'chg-<digest>'."""
    from salespred_assets.operations import runner
    from salespred_assets.scoring import batches

    batches.parse_range(key)  # a malformed key fails here, with the accepted forms
    outcome = runner.materialize("score_new_opportunities", partition_key=key)
    # The batch asset's outputs, each as its IO manager reported the write.
    meta = outcome.metadata.get("new_opportunity_scores", {})
    cache = outcome.metadata.get("new_opportunity_cache", {})
    click.echo(f"batch {key}: run {outcome.run_id} {'succeeded' if outcome.ok else 'FAILED'}; "
               f"{meta.get('dagster/row_count', 0)} scored, {meta.get('rows_written', 0)} SQL rows upserted, "
               f"{cache.get('keys_written', 0)} cache keys")
    for name in outcome.failed_steps + outcome.failed_checks:
        click.echo(f"  failed: {name}")
    sys.exit(0 if outcome.ok else 1)
