"""The queries the asset checks and the batch path run against the reporting database, each named once.

The checks run these very statements, and ``salespred_tests/test_query_plans.py`` reads the plan of
each of them (with the views the dashboard reads and the writer's lookups, see :func:`catalogue`) on
PostgreSQL at 200,000 opportunities, so a plan that turns quadratic fails a test, not a night's refresh.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from salespred_assets.core.schema import DatasetSchema
from salespred_assets.sql import tables, views, writer


def row_count(table_name: str) -> sa.Select:
    return sa.select(sa.func.count()).select_from(sa.table(table_name))


def _fact_and_history(schema: DatasetSchema) -> tuple[sa.Table, sa.Table, sa.Join]:
    md = sa.MetaData()
    fact, history = tables.fact_opportunity(md, schema), tables.fact_prediction_history(md)
    # The history's whole key: a hash anti join on it, or a unique lookup per row, never a range walk.
    joined = fact.outerjoin(history, sa.and_(history.c.opportunity_id == fact.c[schema.id],
                                             history.c.model_version == fact.c.model_version,
                                             history.c.scored_at == fact.c.scored_at))
    return fact, history, joined


def latest_scoring_missing(schema: DatasetSchema) -> sa.Select:
    """fact_prediction_history_has_latest_scoring: fact rows whose latest scoring the history lacks."""
    _, history, joined = _fact_and_history(schema)
    return sa.select(sa.func.count()).select_from(joined).where(history.c.opportunity_id.is_(None))


def history_totals() -> sa.Select:
    """fact_prediction_history_has_latest_scoring: the history's rows and how many scorings (model version,
    time) they come from, in one scan."""
    history = tables.fact_prediction_history(sa.MetaData())
    per_scoring = (sa.select(sa.func.count().label("n")).select_from(history)
                   .group_by(history.c.model_version, history.c.scored_at).subquery("per_scoring"))
    return sa.select(sa.func.coalesce(sa.func.sum(per_scoring.c.n), 0), sa.func.count()).select_from(per_scoring)


def fact_totals(schema: DatasetSchema) -> sa.Select:
    """reporting_views_reconcile: count and expected TCV of the open opportunities, and TCV of the closed ones,
    in one scan of the fact table."""
    fact = tables.fact_opportunity(sa.MetaData(), schema)
    amount, outcome = fact.c[str(schema.amount)], fact.c.outcome
    is_open = outcome == "open"
    return sa.select(sa.func.count(sa.case((is_open, 1))),
                     sa.func.sum(sa.case((is_open, amount * fact.c.probability))),
                     sa.func.sum(sa.case((outcome.in_(["won", "lost"]), amount))))


def batch_rows(schema: DatasetSchema, ids: Sequence[str]) -> sa.Select:
    """new_opportunity_scores_landed: for a chunk of a batch, each row's model version and whether its
    scoring is missing from the history (key lookups on both tables)."""
    fact, history, joined = _fact_and_history(schema)
    return (sa.select(fact.c.model_version, history.c.opportunity_id.is_(None))
            .select_from(joined).where(fact.c[schema.id].in_(list(ids))))


def codes_without_name(schema: DatasetSchema, kinds: Sequence[str] | None = None) -> sa.Select | None:
    """code_dimensions_cover_the_data: for each code field of ``fact_opportunity`` (``kinds``, default every one
    the export has), how many distinct codes it uses that its dimension table lacks (Power BI's relationship
    would show them blank); one row, a column per field; None when the export has none of them.

    One scan of the fact table for all of them, each dimension joined on its key: a query per field read the
    million rows seven times (3.8 s on MariaDB, against 2 s for this one)."""
    md = sa.MetaData()
    fact = tables.fact_opportunity(md, schema)
    joined: sa.FromClause = fact
    counts = []
    for kind in kinds if kinds is not None else list(tables.CODE_DIMENSIONS):
        if kind not in fact.c:
            continue
        dim = tables.dim_code(md, kind).alias(f"dim_{kind}")
        joined = joined.outerjoin(dim, dim.c.code == fact.c[kind])
        counts.append(sa.func.count(sa.distinct(sa.case((dim.c.code.is_(None), fact.c[kind])))).label(kind))
    return sa.select(*counts).select_from(joined) if counts else None


def blank_names(kind: str) -> sa.Select:
    """code_dimensions_cover_the_data: rows of a dimension table with an empty name in either language."""
    dim = tables.dim_code(sa.MetaData(), kind)
    blank = sa.or_(*(sa.or_(c.is_(None), sa.func.trim(c) == "") for c in (dim.c.name_es, dim.c.name_en)))
    return sa.select(sa.func.count()).select_from(dim).where(blank)


def catalogue(schema: DatasetSchema, ids: Sequence[str], model_version: str,
              scored_at: dt.datetime) -> dict[str, sa.Executable]:
    """Every query a check, a view read (the dashboard), or the batch path runs, by name.

    ``ids``, ``model_version`` and ``scored_at`` fill the parameters of the per-batch statements (a
    chunk of opportunity numbers as the batch path sends them).
    """
    md = sa.MetaData()
    fact, history = tables.fact_opportunity(md, schema), tables.fact_prediction_history(md)
    out: dict[str, sa.Executable] = {
        "check fact_opportunity_reconciles: rows": row_count(tables.FACT_OPPORTUNITY),
        "check fact_prediction_history_has_latest_scoring: missing": latest_scoring_missing(schema),
        "check fact_prediction_history_has_latest_scoring: rows and scorings": history_totals(),
        "check new_opportunity_scores_landed: batch rows": batch_rows(schema, ids),
        "batch path: history rows already recorded": writer.held_keys_statement(
            history, ["opportunity_id", "model_version", "scored_at"], [model_version, scored_at], ids),
        "batch path: upsert's delete": writer.upsert_delete_statement(fact, schema.id, ids),
    }
    missing = codes_without_name(schema)
    if missing is not None:
        out["check code_dimensions_cover_the_data: codes without a row"] = missing
    for kind, table in tables.CODE_DIMENSIONS.items():
        out[f"check code_dimensions_cover_the_data: {table} blank names"] = blank_names(kind)
    if schema.amount:
        out["check reporting_views_reconcile: totals"] = fact_totals(schema)
    for name in views.definitions(schema):
        out[f"view {name} (dashboard, reporting_views_reconcile)"] = views.read_statement(name)
    return out
