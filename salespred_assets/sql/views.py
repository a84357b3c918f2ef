"""Reporting views: one per dashboard tile, built with SQLAlchemy so that every dialect compiles them.

| view | tile | one row per |
|---|---|---|
| ``rpt_closed_by_result`` | closed amounts, Won vs Lost | result (won, lost) |
| ``rpt_open_pipeline`` | expected sales of the open pipeline | close-date horizon |
| ``rpt_expected_by_close_month`` | expected TCV by close month | close year and month |
| ``rpt_expected_by_region`` | expected TCV by region | region |
| ``rpt_seller_stage_matrix`` | seller x open stage: counts and TCV | seller and stage |
| ``rpt_model_quality`` | the model's quality over versions | model version |

Expected TCV is ``tcv x probability`` (the calibrated probability that the opportunity is won), summed.

**Period rule** (the ``period_rule`` column of ``rpt_open_pipeline``): the headline counts *every open
opportunity, whatever its close date*. Open opportunities whose expected close date has passed are
still being worked, and the reference data's open pipeline has close dates in the past. Each row of the
view is one horizon: the opportunity's close month against ``as_of``, the month of the latest scoring
(``overdue``, ``next 3 months`` = that month and the two after it, ``3-5 months``, ``6-11 months``,
``12+ months``). Summing every row gives the headline; filtering on ``horizon_order <= 2`` gives
"what is left to close in the next 3 months". Measuring against the scoring time, not the database
clock, keeps the figures reproducible and free of dialect-specific date functions.

Views are replaced atomically: ``DROP VIEW IF EXISTS`` + ``CREATE VIEW`` in one transaction on SQLite and
PostgreSQL (PostgreSQL's ``CREATE OR REPLACE VIEW`` refuses a changed column list), ``CREATE OR REPLACE
VIEW`` on MariaDB/MySQL and ``CREATE OR ALTER VIEW`` on SQL Server (``CreateView(or_replace=True)``).
Rewriting a table's rows (DELETE + INSERT/COPY) leaves the views intact; rebuilding a table whose columns
changed drops its dependent views first and recreates them (``writer.ensure_table``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateView, DropView
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnElement

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.sql import tables, transaction

CLOSED_BY_RESULT = "rpt_closed_by_result"
OPEN_PIPELINE = "rpt_open_pipeline"
EXPECTED_BY_CLOSE_MONTH = "rpt_expected_by_close_month"
EXPECTED_BY_REGION = "rpt_expected_by_region"
SELLER_STAGE_MATRIX = "rpt_seller_stage_matrix"
MODEL_QUALITY = "rpt_model_quality"

PERIOD_RULE = ("all open opportunities, whatever their close date; horizon = close month "
               "against the month of the latest scoring (as_of)")
# (order, label, first month ahead of as_of included); the last bucket is open-ended.
UNSUPPORTED = "a field the export's schema lacks"
HORIZONS = ((1, "overdue", None), (2, "next 3 months", 0), (3, "3-5 months", 3), (4, "6-11 months", 6),
            (5, "12+ months", 12))


class ViewError(SalespredError):
    pass


@dataclass(frozen=True)
class ViewSpec:
    name: str
    description: str
    tables: tuple[str, ...]
    build: Callable[[dict[str, sa.Table], DatasetSchema], sa.Select | None]


def _roles(schema: DatasetSchema) -> dict[str, str | None]:
    return {"amount": schema.amount, "close": schema.close, "seller": schema.seller, "stage": schema.stage,
            "region": tables.region_field(schema)}


def _count() -> ColumnElement:
    return sa.func.count().label("opportunities")


def _open_rows(fact: sa.Table, schema: DatasetSchema, *columns: ColumnElement,
               source: sa.FromClause | None = None) -> sa.Subquery:
    """Open opportunities with their TCV and expected TCV, plus ``columns``: a derived table to group on.

    Grouping on a derived table's plain columns is valid on every dialect (SQL Server refuses
    sub-queries and mismatched expressions in GROUP BY).
    """
    amount = fact.c[str(schema.amount)]
    select = sa.select(*columns, amount.label("tcv"), (amount * fact.c.probability).label("expected_tcv"))
    if source is not None:
        select = select.select_from(source)
    return select.where(fact.c.outcome == "open").subquery("open_rows")


def _sums(rows: sa.Subquery) -> list[ColumnElement]:
    return [_count(), sa.func.sum(rows.c.tcv).label("tcv"), sa.func.sum(rows.c.expected_tcv).label("expected_tcv")]


def _month_index(value: ColumnElement) -> ColumnElement:
    return sa.cast(sa.extract("year", value), sa.Integer) * 12 + sa.cast(sa.extract("month", value), sa.Integer)


def closed_by_result(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select | None:
    if not schema.amount:
        return None
    fact = t[tables.FACT_OPPORTUNITY]
    return (sa.select(fact.c.outcome.label("result"), _count(),
                      sa.func.sum(fact.c[schema.amount]).label("tcv"))
            .where(fact.c.outcome.in_(["won", "lost"])).group_by(fact.c.outcome))


def open_pipeline(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select | None:
    if not schema.amount:
        return None
    fact = t[tables.FACT_OPPORTUNITY]
    # The latest scoring as a one-row derived table joined once: as a scalar sub-query inside the horizon's
    # CASE, PostgreSQL planned one full scan per mention (49 at 1,000,000 rows: 52 s instead of under 1 s).
    latest = sa.select(sa.func.max(fact.c.scored_at).label("as_of")).subquery("latest")
    source = fact.join(latest, sa.true())
    rule = sa.literal(PERIOD_RULE, sa.String).label("period_rule")
    if not schema.close:  # no close date: one row, the whole open pipeline
        rows = _open_rows(fact, schema, latest.c.as_of.label("as_of"), source=source)
        return sa.select(sa.literal(0).label("horizon_order"), sa.literal("all", sa.String).label("horizon"),
                         *_sums(rows), sa.func.max(rows.c.as_of).label("as_of"), rule)
    ahead = _month_index(fact.c[schema.close]) - _month_index(latest.c.as_of)
    order = sa.case(*[(ahead < low, o - 1) for o, _, low in HORIZONS[1:]], else_=HORIZONS[-1][0])
    rows = _open_rows(fact, schema, order.label("horizon_order"), latest.c.as_of.label("as_of"), source=source)
    label = sa.case(*[(rows.c.horizon_order == o, sa.literal(name, sa.String)) for o, name, _ in HORIZONS])
    return (sa.select(rows.c.horizon_order, label.label("horizon"), *_sums(rows),
                      sa.func.max(rows.c.as_of).label("as_of"), rule)
            .group_by(rows.c.horizon_order))


def expected_by_close_month(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select | None:
    if not (schema.amount and schema.close):
        return None
    fact = t[tables.FACT_OPPORTUNITY]
    close = fact.c[schema.close]
    rows = _open_rows(fact, schema, sa.cast(sa.extract("year", close), sa.Integer).label("close_year"),
                      sa.cast(sa.extract("month", close), sa.Integer).label("close_month"))
    return (sa.select(rows.c.close_year, rows.c.close_month,
                      (rows.c.close_year * 100 + rows.c.close_month).label("close_month_key"), *_sums(rows))
            .group_by(rows.c.close_year, rows.c.close_month))


def expected_by_region(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select | None:
    region = tables.region_field(schema)
    if not (schema.amount and region):
        return None
    fact = t[tables.FACT_OPPORTUNITY]
    rows = _open_rows(fact, schema, fact.c[region].label("region"))
    return sa.select(rows.c.region, *_sums(rows)).group_by(rows.c.region)


def seller_stage_matrix(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select | None:
    if not (schema.amount and schema.seller):
        return None
    fact, sellers = t[tables.FACT_OPPORTUNITY], t[tables.DIM_SELLER]
    seller = fact.c[schema.seller]
    rows = (sa.select(seller.label("seller"), sa.func.coalesce(sellers.c.full_name, seller).label("seller_name"),
                      fact.c[schema.stage].label("stage"), fact.c[schema.amount].label("tcv"),
                      (fact.c[schema.amount] * fact.c.probability).label("expected_tcv"))
            .select_from(fact.outerjoin(sellers, sellers.c.numero_vendedor == seller))
            .where(fact.c.outcome == "open").subquery("open_rows"))
    return (sa.select(rows.c.seller, rows.c.seller_name, rows.c.stage, *_sums(rows))
            .group_by(rows.c.seller, rows.c.seller_name, rows.c.stage))


def model_quality(t: dict[str, sa.Table], schema: DatasetSchema) -> sa.Select:
    mv, history = t[tables.DIM_MODEL_VERSION], t[tables.FACT_PREDICTION_HISTORY]
    recorded = (sa.select(history.c.model_version, sa.func.count().label("predictions_recorded"),
                          sa.func.min(history.c.scored_at).label("first_scored_at"),
                          sa.func.max(history.c.scored_at).label("last_scored_at"))
                .group_by(history.c.model_version).subquery("recorded"))
    return (sa.select(mv.c.model_version, mv.c.trained_at, mv.c.status, mv.c.is_current, mv.c.ever_promoted,
                      mv.c.promoted_at, mv.c.retired_at, mv.c.roc_auc, mv.c.accuracy, mv.c.brier, mv.c.f1,
                      mv.c.training_rows,
                      sa.func.coalesce(recorded.c.predictions_recorded, 0).label("predictions_recorded"),
                      recorded.c.first_scored_at, recorded.c.last_scored_at)
            .select_from(mv.outerjoin(recorded, recorded.c.model_version == mv.c.model_version)))


FACT_ONLY = (tables.FACT_OPPORTUNITY,)
SPECS: tuple[ViewSpec, ...] = (
    ViewSpec(CLOSED_BY_RESULT, "Closed opportunities: count and TCV by result (won, lost)", FACT_ONLY,
             closed_by_result),
    ViewSpec(OPEN_PIPELINE, "Open pipeline: count, TCV and expected TCV (TCV x probability) by close-date "
             "horizon; the headline is the sum of every row. " + PERIOD_RULE, FACT_ONLY, open_pipeline),
    ViewSpec(EXPECTED_BY_CLOSE_MONTH, "Open opportunities: expected TCV by expected close month", FACT_ONLY,
             expected_by_close_month),
    ViewSpec(EXPECTED_BY_REGION, "Open opportunities: expected TCV by region", FACT_ONLY, expected_by_region),
    ViewSpec(SELLER_STAGE_MATRIX, "Open opportunities: count, TCV and expected TCV by seller and stage",
             (tables.FACT_OPPORTUNITY, tables.DIM_SELLER), seller_stage_matrix),
    ViewSpec(MODEL_QUALITY, "Held-out quality of every model version, its promotion history and the "
             "predictions it made", (tables.DIM_MODEL_VERSION, tables.FACT_PREDICTION_HISTORY), model_quality),
)
NAMES = tuple(spec.name for spec in SPECS)


def definitions(schema: DatasetSchema = DEFAULT_SCHEMA) -> dict[str, sa.Select]:
    """The SELECT behind every view the schema supports (a view needing a field the export lacks is left out)."""
    declared = tables.all_tables(sa.MetaData(), schema)
    out = {}
    for spec in SPECS:
        select = spec.build(declared, schema)
        if select is not None:
            out[spec.name] = select
    return out


def dependents(table_name: str) -> list[str]:
    return [spec.name for spec in SPECS if table_name in spec.tables]


def ddl(dialect_name: str, name: str, select: sa.Select) -> list[sa.ExecutableDDLElement]:
    """The statements that create or replace one view on ``dialect_name``."""
    if dialect_name in ("mysql", "mariadb", "mssql"):
        return [CreateView(select, name, or_replace=True)]  # MariaDB: OR REPLACE; SQL Server: OR ALTER
    return [DropView(sa.Table(name, sa.MetaData()), if_exists=True), CreateView(select, name)]


def _comment(conn: Connection, name: str) -> None:
    if conn.dialect.name != "postgresql":  # MariaDB has no view comments; SQL Server uses extended properties
        return
    spec = next(s for s in SPECS if s.name == name)
    text = sa.literal(spec.description, sa.String).compile(dialect=conn.dialect,
                                                            compile_kwargs={"literal_binds": True})
    conn.exec_driver_sql(f"COMMENT ON VIEW {conn.dialect.identifier_preparer.quote(name)} IS {text}")


def _base_columns(select: sa.Select) -> dict[str, set[str]]:
    needed: dict[str, set[str]] = defaultdict(set)
    for element in visitors.iterate(select):
        if isinstance(element, sa.Column) and isinstance(element.table, sa.Table):
            needed[element.table.name].add(element.name)
    return needed


def missing_columns(conn: Connection, select: sa.Select) -> dict[str, list[str]]:
    """Columns the view reads that the database does not hold, by table ("*" when the table is absent)."""
    inspector = sa.inspect(conn)
    out = {}
    for table, cols in _base_columns(select).items():
        if not inspector.has_table(table):
            out[table] = ["*"]
            continue
        present = {c["name"] for c in inspector.get_columns(table)}
        lacking = sorted(cols - present)
        if lacking:
            out[table] = lacking
    return out


def existing(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_view_names()) & set(NAMES)


def drop(conn: Connection, names: Iterable[str]) -> None:
    for name in names:
        conn.execute(DropView(sa.Table(name, sa.MetaData()), if_exists=True))


def create(conn: Connection, schema: DatasetSchema, names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Create or replace the views ``names`` (default: all); returns the ones skipped, with what they lack.

    A view whose base tables or columns are missing is skipped (and dropped if an older one exists),
    never created half-broken.
    """
    wanted = set(NAMES if names is None else names)
    selects = definitions(schema)
    skipped: dict[str, list[str]] = {}
    for name in NAMES:
        if name not in wanted:
            continue
        select = selects.get(name)
        if select is None:
            skipped[name] = [UNSUPPORTED]
            drop(conn, [name])
            continue
        lacking = missing_columns(conn, select)
        if lacking:
            skipped[name] = [f"{t}.{c}" for t, cols in lacking.items() for c in cols]
            drop(conn, [name])
            continue
        for statement in ddl(conn.dialect.name, name, select):
            conn.execute(statement)
        _comment(conn, name)
    return skipped


def refresh(engine: Engine, schema: DatasetSchema = DEFAULT_SCHEMA) -> list[str]:
    """Create or replace every view the schema supports, in one transaction where DDL is transactional.

    Raises ``ViewError`` naming the table and columns to materialise when a view cannot be built.
    """
    with transaction.begin(engine) as conn:
        skipped = create(conn, schema)
        broken = {name: lacking for name, lacking in skipped.items() if lacking != [UNSUPPORTED]}
        if broken:
            detail = "; ".join(f"{name} needs {', '.join(cols)}" for name, cols in broken.items())
            raise ViewError(f"cannot create the reporting views: {detail} (materialise the reporting tables "
                            "first: fact_opportunity, dim_seller, dim_model_version, fact_prediction_history)")
    return [name for name in NAMES if name not in skipped]


def read_statement(name: str) -> sa.Select:
    """What the dashboard and the checks run to read a view: all of its rows."""
    if name not in NAMES:
        raise ViewError(f"{name!r} is not a reporting view; known: {', '.join(NAMES)}")
    return sa.select(sa.text("*")).select_from(sa.table(name))


def read(engine: Engine | Connection, name: str) -> pd.DataFrame:
    """A view's rows as a frame; SQL decimals (MariaDB's SUM) become floats."""
    query = read_statement(name)
    if isinstance(engine, Connection):
        frame = pd.read_sql(query, engine)
    else:
        with engine.connect() as conn:
            frame = pd.read_sql(query, conn)
    for col in frame.columns:
        if frame[col].map(lambda v: isinstance(v, Decimal)).any():
            frame[col] = frame[col].astype("float64")
    return frame
