"""`salespred backtest` and `salespred evaluate`: the model judged on a CRM export, with no servers."""

from __future__ import annotations

import json

import click


def _read_export(csv_path: str, schema_path: str | None):
    """(schema, raw, validated) for a CSV export: every row typed, or quarantined with its reason.

    Read as ``seed --csv`` reads it (:mod:`salespred_assets.core.exports`): categories as written, a number
    or date that cannot be read rejects its row only.
    """
    from salespred_assets.core.documents import validate
    from salespred_assets.core.exports import read_export
    from salespred_assets.core.schema import load_schema

    schema = load_schema(schema_path)
    raw = read_export(csv_path, schema)
    return schema, raw, validate(raw, schema)


@click.command()
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--schema", "schema_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Backtest date; default: where the newest fifth of closed opportunities begins.")
@click.option("--predictions-out", type=click.Path(dir_okay=False),
              help="Write one row per scored opportunity (id, group, age at scoring, probability, outcome) as CSV.")
@click.option("--search", type=click.Choice(["full", "fast"]), default="full", show_default=True)
@click.option("--no-yardstick", is_flag=True, help="Skip the HistGradientBoosting yardstick.")
def backtest(csv_path, schema_path, as_of, predictions_out, search, no_yardstick) -> None:
    """The figure a seller would have got: train on the history before --as-of, then score the pipeline open
    on that date (at its age then) and every opportunity created later (as at capture). Prints one JSON
    object: ROC AUC, accuracy, Brier score and a calibration table per group, and the 3- and 6-month
    forecast of wins and won amount against what was actually won."""
    from salespred_assets.core.backtest import backtest as run_backtest
    from salespred_assets.core.model import SearchConfig

    schema, raw, validated = _read_export(csv_path, schema_path)
    bt = run_backtest(validated.frame, schema, as_of.date().isoformat() if as_of else None,
                      SearchConfig.preset(search), yardstick=not no_yardstick)
    out = {"data": {"rows": len(raw), "rows_used": len(validated.frame), "rows_rejected": len(validated.quarantine)},
           **bt.summary()}
    if predictions_out:
        bt.predictions.rename(columns={"id": schema.id}).to_csv(predictions_out, index=False)
        out["predictions_out"] = str(predictions_out)
    click.echo(json.dumps(out, indent=2, default=str))


@click.command()
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--schema", "schema_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--test-size", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.95))
@click.option("--random-state", default=42, show_default=True)
@click.option("--predictions-out", type=click.Path(dir_okay=False), help="Write the test rows' predictions (CSV).")
@click.option("--search", type=click.Choice(["full", "fast"]), default="full", show_default=True)
@click.option("--no-yardstick", is_flag=True, help="Skip the HistGradientBoosting yardstick.")
def evaluate(csv_path, schema_path, test_size, random_state, predictions_out, search, no_yardstick) -> None:
    """The ORIGINAL protocol, for comparison with the original system only: a random split of closed rows,
    with inputs only known at close (e.g. the final duration). Not what a seller gets: see `backtest`."""
    from salespred_assets.core.evaluation import CAVEAT, ORIGINAL_ACCURACY, evaluate as run_evaluation
    from salespred_assets.core.model import SearchConfig

    schema, raw, validated = _read_export(csv_path, schema_path)
    ev = run_evaluation(validated.frame, schema, SearchConfig.preset(search), test_size=test_size,
                        random_state=random_state, yardstick=not no_yardstick)
    out = {
        "protocol": CAVEAT,
        "data": {"rows": len(raw), "rows_used": len(validated.frame), "rows_rejected": len(validated.quarantine),
                 "train": int(ev.trained.model.info["rows"]), "test": ev.metrics["n"]},
        "metrics": ev.metrics,
        "raw_forest": {k: ev.raw_metrics[k] for k in ("roc_auc", "brier", "log_loss")},
        "yardstick_hist_gradient_boosting": ev.yardstick or None,
        "hyperparameters": ev.trained.model.info["params"],
        "seconds": {k: round(v, 2) for k, v in ev.seconds.items()},
        "original_accuracy": ORIGINAL_ACCURACY,
    }
    if predictions_out:
        ev.test[["id", "y_true", "probability"]].rename(columns={"id": schema.id}).to_csv(predictions_out, index=False)
        out["predictions_out"] = str(predictions_out)
    click.echo(json.dumps(out, indent=2, default=str))
