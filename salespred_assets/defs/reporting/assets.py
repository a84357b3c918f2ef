"""Reporting: the SQL tables and views analysts open in Power BI, and the built-in sales dashboard."""

import functools
import os
from pathlib import Path

import dagster as dg
import pandas as pd

from salespred_assets import dashboard, i18n, settings
from salespred_assets.core import names
from salespred_assets.core.names import Names
from salespred_assets.defs.common import IO_RETRY, md
from salespred_assets.defs.ingestion.assets import catalogs_collection
from salespred_assets.defs.modeling.assets import production_model
from salespred_assets.mongo import catalogs
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.registry import model_store, model_versions
from salespred_assets.sql import tables, views
from salespred_assets.sql.io_manager import schema_metadata
from salespred_assets.sql.resource import SqlResource

GROUP = "reporting"
HISTORY_COLUMNS = ["opportunity_id", "model_version", "scored_at", "probability", "score", "grade", "outcome"]
DASHBOARD_FILE = "sales_dashboard.html"


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          metadata={"table": tables.FACT_OPPORTUNITY, "write": "replace"})
def fact_opportunity(opportunity_predictions: pd.DataFrame, mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """One row per opportunity: every input field and its latest prediction (replaced in one transaction)."""
    return dg.Output(opportunity_predictions, metadata=schema_metadata(mongo.schema()))


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          metadata={"table": tables.DIM_SELLER, "write": "replace"})
def dim_seller(sellers: pd.DataFrame) -> pd.DataFrame:
    """Sellers for the reports: names and titles, never a password or a hash."""
    out = sellers[["numero_vendedor", "username", "first_name", "last_name", "title"]].copy()
    out["full_name"] = (out["first_name"].fillna("") + " " + out["last_name"].fillna("")).str.strip()
    return out


@dg.multi_asset(
    group_name=GROUP, deps=[catalogs_collection], retry_policy=IO_RETRY, can_subset=False,
    outs={table: dg.AssetOut(kinds={"sql"}, io_manager_key="sql_io_manager",
                             metadata={"table": table, "write": "replace"},
                             description=f"Names of the {kind} codes in Spanish and English (for Power BI)")
          for kind, table in tables.CODE_DIMENSIONS.items()})
def code_dimensions(context: dg.AssetExecutionContext, raw_opportunities: pd.DataFrame, mongo: MongoResource):
    """One dimension table per kind of code, from the catalog and the codes the opportunities use (a missing
    value left out, codes that only case, accents or spaces tell apart merged, over-long text cut to fit)."""
    lookup = Names(catalogs.read(mongo))
    for kind, table in tables.CODE_DIMENSIONS.items():
        used = list(raw_opportunities[kind]) if kind in raw_opportunities.columns else []
        display = None
        if kind == "etapas":  # every stage, named as the pages name it (catalog, else Ganada / Won)
            used = [*names.STAGE_CODES, *used]
            display = functools.partial(_stage_name, lookup)
        dim = names.dimension_table(lookup, kind, used, display)
        for note in dim.notes:
            context.log.warning(f"{table}: {note}")
        frame = pd.DataFrame(dim.rows, columns=["code", "name_es", "name_en",
                                                *(["region"] if kind in names.PARENT else [])])
        unnamed = int((frame["name_es"] == frame["code"]).sum()) if len(frame) else 0
        yield dg.Output(frame, output_name=table, metadata={
            "dagster/row_count": len(frame), "unnamed_codes": unnamed,
            "merged_codes": dim.merged, "truncated_values": dim.truncated})


def _stage_name(lookup: Names, code: str, lang: str) -> str:
    return i18n.stage_name(lang, code, lookup)


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          deps=[production_model], metadata={"table": tables.DIM_MODEL_VERSION, "write": "replace"})
def dim_model_version(mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Every model version in the registry: quality, hyperparameters, whether and when it was promoted."""
    frame = model_versions.frame(model_store.versions(mongo.db))
    current = frame.loc[frame["is_current"], "model_version"]
    return dg.Output(frame, metadata={
        "versions": len(frame),
        "current_version": str(current.iloc[0]) if len(current) else "none",
        "versions_table": md(frame[["model_version", "status", "is_current", "roc_auc", "accuracy"]], max_rows=10),
    })


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          metadata={"table": tables.FACT_PREDICTION_HISTORY, "write": "append"})
def fact_prediction_history(opportunity_predictions: pd.DataFrame, mongo: MongoResource) -> dg.Output[pd.DataFrame]:
    """Append-only: this scoring's probability, score and grade per opportunity (recording it twice is a no-op)."""
    return dg.Output(opportunity_predictions[HISTORY_COLUMNS], metadata=schema_metadata(mongo.schema()))


@dg.asset(group_name=GROUP, kinds={"sql"}, retry_policy=IO_RETRY,
          deps=[fact_opportunity, dim_seller, dim_model_version, fact_prediction_history])
def reporting_views(sql: SqlResource, mongo: MongoResource) -> dg.MaterializeResult:
    """One SQL view per dashboard tile (closed amounts, open pipeline, by close month, by region,
    seller x stage, model quality), created or replaced atomically on every dialect."""
    engine = sql.engine
    try:
        created = views.refresh(engine, mongo.schema())
    except views.ViewError as exc:  # a missing table will not appear by retrying: fail at once, saying which
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    # No row counts here: counting a view's rows aggregates the fact table; dashboard_figures reads each view
    # once, and its check records their rows.
    return dg.MaterializeResult(metadata={
        "dialect": engine.dialect.name,
        "views": ", ".join(created),
        "views_left_out": ", ".join(n for n in views.NAMES if n not in created) or "none",
        "period_rule": views.PERIOD_RULE,
    })


def dashboard_dir() -> Path:
    return settings.home() / "dashboard"


@dg.asset(group_name=GROUP, kinds={"sql"}, io_manager_key="sql_io_manager", retry_policy=IO_RETRY,
          deps=[reporting_views], metadata={"table": tables.DASHBOARD_FIGURES, "write": "replace"})
def dashboard_figures(sql: SqlResource) -> dg.Output[pd.DataFrame]:
    """Each reporting view's rows, stored for the dashboard: a page reads this one small table instead of
    aggregating the fact table on every request. Refreshed by every full refresh and rescore, and after
    new-opportunity batches by the ``dashboard_after_batches`` sensor."""
    frame = dashboard.snapshot(sql.engine)
    return dg.Output(frame, metadata={"views": ", ".join(frame["view_name"]),
                                      "bytes": int(frame["rows_json"].str.len().sum())})


@dg.asset(group_name=GROUP, kinds={"html"}, retry_policy=IO_RETRY)
def sales_dashboard(context: dg.AssetExecutionContext, dashboard_figures: pd.DataFrame,
                    mongo: MongoResource) -> dg.MaterializeResult:
    """The five Power BI tiles and the model-quality trend as one self-contained HTML page (inline SVG,
    no network), from the stored figures, regions and stages by name (the code catalogs); written under
    $SALESPRED_HOME/dashboard/."""
    figs = dashboard.from_snapshot(dashboard_figures)
    try:
        names, names_note = catalogs.names(mongo), "catalogs"
    except Exception as exc:  # noqa: BLE001 - as the pages do: without names the dashboard shows the codes
        context.log.warning(f"the code catalogs could not be read ({exc}); the dashboard shows codes")
        names, names_note = Names(), f"unavailable, codes shown: {type(exc).__name__}"
    out = dashboard_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang in dashboard.LANGUAGES:
        path = out / (DASHBOARD_FILE if lang == "en" else DASHBOARD_FILE.replace(".html", f".{lang}.html"))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(dashboard.render_html(figs, lang, names=names), encoding="utf-8")
        tmp.replace(path)  # readers never see a half-written page
        paths[lang] = path
    metadata: dict = {"path": dg.MetadataValue.path(str(paths["en"])),
                      "path_es": dg.MetadataValue.path(str(paths["es"])),
                      "bytes": paths["en"].stat().st_size, "names": names_note, **dashboard.summary(figs),
                      "figures": dg.MetadataValue.json(figs)}
    if figs.get("pipeline"):
        metadata["open_pipeline"] = md(pd.DataFrame(figs["pipeline"]["horizons"]), floatfmt="{:,.0f}")
    if figs.get("by_region"):
        metadata["expected_by_region"] = md(pd.DataFrame(figs["by_region"]), floatfmt="{:,.0f}")
    if figs.get("model_quality"):
        metadata["model_quality"] = md(pd.DataFrame(figs["model_quality"])[
            ["model_version", "status", "is_current", "roc_auc", "accuracy", "predictions_recorded"]])
    return dg.MaterializeResult(metadata=metadata)
