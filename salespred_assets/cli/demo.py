"""`salespred demo` and `salespred materialize`: the asset graph materialised, then (demo) the UIs served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from salespred_assets.cli.common import APP_PORT, DAGSTER_PORT, connected_mongo, databases


@click.command()
@click.option("--once", is_flag=True, help="Exit after materialising (exit code 0 only if all succeeded).")
@click.option("--synthetic", "n", default=20_000, show_default=True, help="Demo opportunities if Mongo is empty.")
@click.option("--dagster-port", default=DAGSTER_PORT, show_default=True)
@click.option("--app-port", default=APP_PORT, show_default=True)
def demo(once, n, dagster_port, app_port) -> None:
    """Start services, load demo data if empty, materialise everything, then serve the UIs."""
    from salespred_assets.mongo import catalogs
    from salespred_assets.mongo.resource import OPPORTUNITIES
    from salespred_assets.operations import loading, runner

    _ping_all()  # starts the embedded services that are not configured
    mongo = connected_mongo()
    if mongo.db[OPPORTUNITIES].estimated_document_count() == 0:
        click.echo(f"MongoDB is empty: generating {n} synthetic opportunities ...")
        loading.seed_synthetic(mongo, n)
    loading.ensure_demo_sellers(mongo)
    catalogs.ensure_demo_if_empty(mongo)  # a loaded catalog is never overwritten
    click.echo("materialising the asset graph (job full_refresh) ...")
    started = time.perf_counter()
    outcome = runner.materialize("full_refresh")
    _summary(outcome, time.perf_counter() - started, dagster_port, app_port)
    if once:
        sys.exit(0 if outcome.ok else 1)
    _serve_forever(dagster_port, app_port)


def _ping_all() -> None:
    """Fail before any work, with one line naming the service, when a database does not answer."""
    mongo, sql, redis = databases()
    mongo.ping()
    redis.ping()
    sql.ping()


def _summary(outcome, seconds: float, dagster_port: int, app_port: int) -> None:
    from salespred_assets.mongo.resource import OPPORTUNITIES, QUARANTINE
    from salespred_assets.operations import loading
    from salespred_assets.sql import tables, writer

    mongo, sql, redis = databases()
    mongo.ping()
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


@click.command()
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
