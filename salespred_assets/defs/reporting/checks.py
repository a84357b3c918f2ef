"""Checks on the reporting tables and views: what SQL holds reconciles with MongoDB and with itself."""

import json
import math
import re

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from salespred_assets.defs.reporting.assets import (
    DASHBOARD_FILE,
    dashboard_dir,
    dashboard_figures,
    dim_model_version,
    dim_seller,
    fact_opportunity,
    fact_prediction_history,
    reporting_views,
    sales_dashboard,
)
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store
from salespred_assets.sql import queries, tables, views, writer
from salespred_assets.sql.resource import SqlResource


@dg.asset_check(asset=fact_opportunity, blocking=True,
                description="SQL rows = the documents the extraction read from MongoDB - those it quarantined, and "
                            "the opportunity number is the table's primary key (no duplicate ids).")
def fact_opportunity_reconciles(context: dg.AssetCheckExecutionContext, sql: SqlResource,
                                mongo: MongoResource) -> dg.AssetCheckResult:
    # The extraction's own counts, recorded when it read the collection: counting the documents again
    # scanned a million of them on SecantusDB (a fifth of a full refresh) and counted captures made since.
    extracted = _extraction_counts(context)
    schema = mongo.schema()
    with sql.engine.connect() as conn:
        sql_rows = int(conn.execute(queries.row_count(tables.FACT_OPPORTUNITY)).scalar_one())
        key = sa.inspect(conn).get_pk_constraint(tables.FACT_OPPORTUNITY).get("constrained_columns") or []
    if extracted is None:
        return dg.AssetCheckResult(passed=False, metadata={
            "sql_rows": sql_rows, "reason": "raw_opportunities has no materialization with its document counts: "
                                            "materialize raw_opportunities and fact_opportunity together"})
    read, quarantined = extracted
    # A new-opportunity batch may upsert rows meanwhile (never remove any): fewer rows than extracted is a loss.
    return dg.AssetCheckResult(
        passed=sql_rows >= read - quarantined and key == [schema.id],
        metadata={"sql_rows": sql_rows, "mongo_documents_read": read, "quarantined": quarantined,
                  "rows_added_since_by_batches": max(sql_rows - (read - quarantined), 0),
                  "primary_key": ", ".join(key) or "none"},
    )


def _extraction_counts(context: dg.AssetCheckExecutionContext) -> tuple[int, int] | None:
    """(documents read, documents quarantined) by this run's raw_opportunities, else by the latest one (the
    frame fact_opportunity was built from when this run did not extract; a drift run may extract later)."""
    key = dg.AssetKey("raw_opportunities")
    records = context.instance.fetch_materializations(key, limit=20).records
    mine = [r for r in records if r.run_id == context.run.run_id]
    record = mine[0] if mine else (records[0] if records else None)
    materialization = record.asset_materialization if record else None
    meta = materialization.metadata if materialization else {}
    if "documents_read" not in meta or "quarantined" not in meta:
        return None
    return int(meta["documents_read"].value), int(meta["quarantined"].value)


@dg.asset_check(asset=dim_seller, blocking=True, additional_ins={"sellers": dg.AssetIn("sellers")},
                description="The seller table holds every seller read from MongoDB and no column that could hold "
                            "a password.")
def dim_seller_safe(dim_seller: pd.DataFrame, sellers: pd.DataFrame) -> dg.AssetCheckResult:
    # Against the sellers the extraction read, not a new count: on SecantusDB a count queued behind the
    # extraction of a million opportunities, which may run at the same time.
    frame = dim_seller  # read back from SQL by the SQL IO manager
    leaky = [c for c in frame.columns if "pass" in c.lower() or "hash" in c.lower()]
    values = frame.astype(str).apply(lambda col: col.str.startswith("$argon2")).to_numpy().sum()
    return dg.AssetCheckResult(
        passed=not leaky and int(values) == 0 and len(frame) == len(sellers),
        metadata={"rows": len(frame), "sellers_read_from_mongo": len(sellers),
                  "suspicious_columns": ", ".join(leaky) or "none", "hash_like_values": int(values)},
    )


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(f"{table}_covers_the_data", asset=table, additional_deps=[fact_opportunity],
                             blocking=True,
                             description=f"Every {kind} code fact_opportunity uses has a row in {table} (the "
                                         "relationship Power BI relies on), and no row has a blank name.")
           for kind, table in tables.CODE_DIMENSIONS.items()],
    can_subset=True)
def code_dimensions_cover_the_data(context: dg.AssetCheckExecutionContext, sql: SqlResource,
                                   mongo: MongoResource):
    schema = mongo.schema()
    chosen = context.selected_asset_check_keys
    selected = {kind: table for kind, table in tables.CODE_DIMENSIONS.items()
                if dg.AssetCheckKey(dg.AssetKey(table), f"{table}_covers_the_data") in chosen}
    statement = queries.codes_without_name(schema, list(selected))
    with sql.engine.connect() as conn:
        missing = dict(conn.execute(statement).one()._mapping) if statement is not None else {}
        for kind, table in selected.items():
            blank = int(conn.execute(queries.blank_names(kind)).scalar_one())
            lacking = int(missing.get(kind, 0))
            yield dg.AssetCheckResult(
                asset_key=table, check_name=f"{table}_covers_the_data", passed=lacking == 0 and blank == 0,
                metadata={"codes_without_a_row": lacking, "blank_names": blank, "field_in_fact_table": kind in missing})


@dg.asset_check(asset=dim_model_version, blocking=True,
                description="One row per registry version, and the current version is the one scoring now.")
def dim_model_version_matches_registry(dim_model_version: pd.DataFrame, mongo: MongoResource) -> dg.AssetCheckResult:
    frame = dim_model_version  # read back from SQL by the SQL IO manager
    registry = mongo.db[model_store.REGISTRY].count_documents({})
    pointer = model_store.current_version(mongo.db)
    current = sorted(frame.loc[frame["is_current"].astype(bool), "model_version"].astype(str))
    return dg.AssetCheckResult(
        passed=len(frame) == registry and current == ([pointer] if pointer else []),
        metadata={"rows": len(frame), "registry_versions": registry, "current_in_sql": ", ".join(current) or "none",
                  "current_in_registry": pointer or "none"},
    )


@dg.asset_check(asset=fact_prediction_history, blocking=False,
                description="Every opportunity's latest scoring (fact_opportunity) is recorded in the history.")
def fact_prediction_history_has_latest_scoring(sql: SqlResource, mongo: MongoResource) -> dg.AssetCheckResult:
    with sql.engine.connect() as conn:
        missing = conn.execute(queries.latest_scoring_missing(mongo.schema())).scalar_one()
        rows, scorings = conn.execute(queries.history_totals()).one()
    return dg.AssetCheckResult(
        passed=int(missing) == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"fact_rows_without_history": int(missing), "history_rows": int(rows), "scorings": int(scorings)},
    )


def _close(a: float | None, b: float | None) -> bool:
    return math.isclose(float(a or 0.0), float(b or 0.0), rel_tol=1e-9, abs_tol=1e-6)


@dg.asset_check(asset=reporting_views, blocking=True, description=(
    "Every view the data supports exists, and each tile's totals equal the same sums taken on fact_opportunity."))
def reporting_views_reconcile(sql: SqlResource, mongo: MongoResource) -> dg.AssetCheckResult:
    schema = mongo.schema()
    engine = sql.engine
    expected_names = sorted(views.definitions(schema))
    with engine.connect() as conn:
        present = sorted(views.existing(conn))
        if present != expected_names or not schema.amount:
            return dg.AssetCheckResult(passed=present == expected_names and not schema.amount, metadata={
                "views_expected": ", ".join(expected_names), "views_present": ", ".join(present) or "none"})
        open_count, open_expected, closed_tcv = conn.execute(queries.fact_totals(schema)).one()
        totals = {name: views.read(conn, name) for name in present if name != views.MODEL_QUALITY}
    metadata: dict = {"open_opportunities": int(open_count), "expected_open_tcv": float(open_expected or 0.0)}
    passed = True
    for name, frame in totals.items():
        if name == views.CLOSED_BY_RESULT:
            ok = _close(frame["tcv"].sum(), closed_tcv)
        else:
            ok = int(frame["opportunities"].sum()) == int(open_count) and _close(frame["expected_tcv"].sum(),
                                                                                   open_expected)
        metadata[f"{name}_reconciles"] = ok
        passed = passed and ok
    return dg.AssetCheckResult(passed=passed, metadata=metadata)


@dg.asset_check(asset=dashboard_figures, blocking=False,
                description="The stored dashboard figures cover every reporting view, and they parse.")
def dashboard_figures_cover_the_views(sql: SqlResource) -> dg.AssetCheckResult:
    stored = writer.read_table(sql.engine, tables.DASHBOARD_FIGURES)
    with sql.engine.connect() as conn:
        present = sorted(set(sa.inspect(conn).get_view_names()) & set(views.NAMES))
    # Reading the stored rows back proves they parse; the views are not aggregated again (that is the cost saved).
    kept = {str(r.view_name): len(json.loads(str(r.rows_json))["data"]) for r in stored.itertuples(index=False)}
    missing = [name for name in present if name not in kept]
    return dg.AssetCheckResult(
        passed=not missing, metadata={"views": len(present), "missing": ", ".join(missing) or "none",
                                      **{f"rows_{name}": n for name, n in kept.items()}})


_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|@import|url\(\s*["']?(?:https?:)?//""",
                       re.IGNORECASE)


@dg.asset_check(asset=sales_dashboard, blocking=False,
                description="The dashboard page exists and is self-contained: no script, style or image from the "
                            "network.")
def sales_dashboard_self_contained() -> dg.AssetCheckResult:
    path = dashboard_dir() / DASHBOARD_FILE
    if not path.exists():
        return dg.AssetCheckResult(passed=False, metadata={"missing": str(path)})
    html = path.read_text(encoding="utf-8")
    external = _EXTERNAL.findall(html)
    return dg.AssetCheckResult(
        passed=not external and "<svg" in html, severity=dg.AssetCheckSeverity.WARN,
        metadata={"path": str(path), "bytes": len(html.encode("utf-8")), "external_references": len(external),
                  "charts": html.count("<svg")},
    )
