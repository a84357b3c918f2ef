"""Reporting tables, declared once and created explicitly (never inferred by ``to_sql``).

Input columns keep the capture app's field names (the data contract analysts already know from the
original Power BI model); everything the platform adds is in English. Types are chosen so that every
dialect keeps the values: ``Double`` (MariaDB's ``FLOAT`` is single precision and would round TCVs),
``Unicode``/``LONG_TEXT`` for text people write (``NVARCHAR`` on SQL Server), ``DateTime(timezone=True)``
for instants (``TIMESTAMPTZ``/``DATETIMEOFFSET``; UTC ``DATETIME`` on MariaDB and SQLite).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mssql

from salespred_assets.core.documents import required
from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema

FACT_OPPORTUNITY = "fact_opportunity"
DIM_SELLER = "dim_seller"
DIM_MODEL_VERSION = "dim_model_version"
FACT_PREDICTION_HISTORY = "fact_prediction_history"
FACT_MODEL_SWITCH = "fact_model_switch"
DASHBOARD_FIGURES = "rpt_dashboard_figures"
# One dimension table per kind of code (a star schema: Power BI relates each fact column to its own table).
CODE_DIMENSIONS: dict[str, str] = {
    "unidad_negocio": "dim_unidad_negocio", "tipos": "dim_tipo", "regiones": "dim_region",
    "territorios": "dim_territorio", "industrias": "dim_industria", "lead_source": "dim_lead_source",
    "etapas": "dim_etapa",
}

# Long text (JSON): TEXT elsewhere, NVARCHAR(max) on SQL Server (its NTEXT is deprecated).
LONG_TEXT = sa.UnicodeText().with_variant(mssql.NVARCHAR(), "mssql")

PREDICTION_COLUMNS = ["probability", "predicted_won", "score", "grade", "factors_for", "factors_against",
                      "prediction_basis", "model_version", "scored_at"]


def _input_column(name: str, schema: DatasetSchema, primary: bool = False) -> sa.Column:
    # Only the fields a row cannot be loaded without are NOT NULL; a missing category or number is kept.
    nullable = name not in required(schema)
    if name in schema.dates:
        return sa.Column(name, sa.Date, nullable=nullable, comment=f"source field {name} (date)")
    if name in schema.number_fields:
        return sa.Column(name, sa.Double, nullable=nullable, comment=f"source field {name}")
    # Unicode: NVARCHAR on SQL Server, so that an export's accented text survives; VARCHAR elsewhere.
    return sa.Column(name, sa.Unicode(64), primary_key=primary, nullable=nullable, comment=f"source field {name}")


OPEN_ROWS_INDEX = f"ix_{FACT_OPPORTUNITY}_view_rows"


def _on_mariadb(ddl: Any, target: Any, bind: Any, tables: Any = None, state: Any = None, *, dialect: Any,
                compiler: Any = None, checkfirst: bool = False) -> bool:
    return dialect.name in ("mysql", "mariadb")  # the same server under either of SQLAlchemy's names


def fact_opportunity(metadata: sa.MetaData, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
    cols = [_input_column(schema.id, schema, primary=True)]
    cols += [_input_column(c, schema) for c in schema.fields if c != schema.id]
    cols += [
        sa.Column("outcome", sa.String(8), nullable=False, comment="won, lost or open (from the stage)"),
        sa.Column("probability", sa.Double, nullable=True,
                  comment="calibrated probability that it is won; empty for a closed one (see prediction_basis)"),
        sa.Column("predicted_won", sa.Boolean, nullable=False,
                  comment="probability >= the model's threshold; for a closed one, whether it was won"),
        sa.Column("score", sa.SmallInteger, nullable=True, comment="1-99: the probability in percent (open only)"),
        sa.Column("grade", sa.String(1), nullable=True, comment="A >= 0.75 > B >= 0.50 > C >= 0.25 > D (open only)"),
        sa.Column("factors_for", LONG_TEXT, nullable=False, comment="JSON: top 3 features raising the probability"),
        sa.Column("factors_against", LONG_TEXT, nullable=False, comment="JSON: top 3 features lowering it"),
        sa.Column("prediction_basis", sa.String(8), nullable=False,
                  comment="'model' (open: a prediction) or 'outcome' (closed: the prediction columns hold its "
                          "outcome)"),
        sa.Column("model_version", sa.String(40), nullable=False, comment="model version that scored the row"),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False, comment="when it was scored (UTC)"),
    ]
    # The views read the schema's roles (amount, close date, seller, stage, region) from here.
    table = sa.Table(FACT_OPPORTUNITY, metadata, *cols, info={"schema": schema},
                     comment="One row per opportunity: its inputs and its latest prediction")
    # Every view and check reads all the rows of an outcome ("open" is about 8%) and groups them. PostgreSQL
    # answers with one parallel scan. MariaDB's InnoDB reads whole rows, their explanations included, from a
    # table larger than its default 128 MB buffer pool: each view took 0.5-1 s at a million rows. On MariaDB
    # only, an index holding just what the views read answers them from a few MB (about 8x faster). Not the
    # model version: the history check's anti join would then walk this index and probe the history's key in
    # random order (8.7 s at a million, against 2.6 s scanning the table in key order).
    roles = ("outcome", schema.close, region_field(schema), schema.seller, schema.stage, schema.amount,
             "probability", "scored_at")
    covered = list(dict.fromkeys(c for c in roles if c and c in table.c))  # a field in two roles, once
    sa.Index(OPEN_ROWS_INDEX, *(table.c[c] for c in covered)).ddl_if(callable_=_on_mariadb)
    return table


def region_field(schema: DatasetSchema) -> str | None:
    """The categorical field that holds the sales region (``regiones`` in the seed), if the export has one."""
    for name in schema.categorical:
        if name.lower().startswith("region"):
            return name
    return None


def dim_seller(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        DIM_SELLER, metadata,
        sa.Column("numero_vendedor", sa.String(32), primary_key=True, comment="seller number"),
        sa.Column("username", sa.String(64), nullable=False, comment="login name"),
        # Unicode: NVARCHAR on SQL Server, where VARCHAR would lose accents (Martínez).
        sa.Column("first_name", sa.Unicode(100), nullable=True, comment="first name"),
        sa.Column("last_name", sa.Unicode(100), nullable=True, comment="last name"),
        sa.Column("title", sa.Unicode(100), nullable=True, comment="job title; managers and VPs see their team"),
        sa.Column("full_name", sa.Unicode(201), nullable=True, comment="first and last name"),
        comment="Sellers; never holds a password or a password hash",
    )


def dim_code(metadata: sa.MetaData, kind: str) -> sa.Table:
    """The display names of one kind of code (``fact_opportunity.<kind>`` relates to ``code``)."""
    cols = [
        sa.Column("code", sa.Unicode(64), primary_key=True, comment=f"the code, as fact_opportunity.{kind} holds it"),
        sa.Column("name_es", sa.Unicode(200), nullable=False, comment="display name in Spanish (the code if unnamed)"),
        sa.Column("name_en", sa.Unicode(200), nullable=False, comment="display name in English (the code if unnamed)"),
    ]
    if kind == "territorios":
        cols.append(sa.Column("region", sa.Unicode(64), nullable=True,
                              comment="the region code (dim_region.code) the territory is grouped under"))
    return sa.Table(CODE_DIMENSIONS[kind], metadata, *cols,
                    comment=f"Names of the {kind} codes in Spanish and English, from the catalog (salespred catalog "
                            "load); a code the data uses without a name is listed with itself as its name")


def dim_model_version(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        DIM_MODEL_VERSION, metadata,
        sa.Column("model_version", sa.String(40), primary_key=True, comment="model version (registry id)"),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=True, comment="when it was trained (UTC)"),
        sa.Column("status", sa.String(16), nullable=False,
                  comment="candidate, promoted (scoring now), retired (was promoted) or rejected (failed the gate)"),
        sa.Column("is_current", sa.Boolean, nullable=False, comment="true for the one version that scores now"),
        sa.Column("ever_promoted", sa.Boolean, nullable=False, comment="true if it has ever been promoted"),
        sa.Column("times_promoted", sa.SmallInteger, nullable=False, comment="promotions, rollbacks included"),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True, comment="its latest promotion (UTC)"),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True,
                  comment="its latest retirement: another version replaced it (UTC)"),
        sa.Column("roc_auc", sa.Double, nullable=True,
                  comment="backtest ROC AUC: new opportunities scored as at capture"),
        sa.Column("accuracy", sa.Double, nullable=True, comment="backtest accuracy at the model's threshold"),
        sa.Column("brier", sa.Double, nullable=True, comment="backtest Brier score (lower is better)"),
        sa.Column("f1", sa.Double, nullable=True,
                  comment="F1 of 'won' (original protocol only; empty for backtested versions)"),
        sa.Column("threshold", sa.Double, nullable=True, comment="probability from which it predicts 'won'"),
        sa.Column("training_rows", sa.Integer, nullable=True, comment="closed opportunities it learned from"),
        sa.Column("hyperparameters", LONG_TEXT, nullable=False, comment="JSON: the forest's hyperparameters"),
        sa.Column("metrics", LONG_TEXT, nullable=False, comment="JSON: the backtest's headline metrics"),
        comment="Model versions from the registry, one row each, with their quality and promotion history",
    )


def fact_prediction_history(metadata: sa.MetaData) -> sa.Table:
    # Append-only: its key makes re-recording the same scoring a no-op, and a change of columns
    # is refused rather than answered by dropping the table (see writer.ensure_table).
    return sa.Table(
        FACT_PREDICTION_HISTORY, metadata,
        sa.Column("opportunity_id", sa.String(64), primary_key=True,
                  comment="the opportunity number (the fact table's id)"),
        sa.Column("model_version", sa.String(40), primary_key=True, comment="model version that scored it"),
        sa.Column("scored_at", sa.DateTime(timezone=True), primary_key=True, comment="when it was scored (UTC)"),
        sa.Column("probability", sa.Double, nullable=True,
                  comment="calibrated probability that it is won (empty once closed)"),
        sa.Column("score", sa.SmallInteger, nullable=True,
                  comment="1-99: the probability in percent (empty once closed)"),
        sa.Column("grade", sa.String(1), nullable=True,
                  comment="A >= 0.75 > B >= 0.50 > C >= 0.25 > D (empty once closed)"),
        sa.Column("outcome", sa.String(8), nullable=False, comment="won, lost or open when it was scored"),
        # Score trends over a date range: one night of a year's nightly rescoring is under 1% of the rows.
        # The key serves the check fact_prediction_history_has_latest_scoring's anti join and the batch
        # path's "already recorded?" lookups. (model_version, scored_at) is not indexed: in a full refresh
        # every row shares both, and the planner walked that whole index once per row.
        sa.Index(f"ix_{FACT_PREDICTION_HISTORY}_scored_at", "scored_at"),
        info={"append_only": True},
        comment="Append-only: one row per opportunity per scoring, for score trends over time",
    )


def fact_model_switch(metadata: sa.MetaData) -> sa.Table:
    # Replaced from MongoDB's pointer history (the source of truth) after every switch; dim_model_version
    # keeps each version's latest promotion and retirement, this table every switch in order.
    return sa.Table(
        FACT_MODEL_SWITCH, metadata,
        sa.Column("switch_number", sa.Integer, primary_key=True, autoincrement=False,
                  comment="1 for the first model ever promoted, then one more per switch"),
        sa.Column("switched_at", sa.DateTime(timezone=True), nullable=False, comment="when scoring switched (UTC)"),
        sa.Column("model_version", sa.String(40), nullable=False, comment="the version that became current"),
        sa.Column("previous_version", sa.String(40), nullable=True, comment="the version it replaced (none at first)"),
        sa.Column("action", sa.String(16), nullable=False,
                  comment="gate (passed the promotion gate), promote (salespred model promote) or rollback"),
        sa.Column("reason", sa.Unicode(400), nullable=False, comment="why, as recorded with the switch"),
        comment="Every switch of the model that scores: promotions by the gate, manual promotions, rollbacks",
    )


def dashboard_figures(metadata: sa.MetaData) -> sa.Table:
    # The views' rows as the dashboard last computed them: a page reads one small table instead of
    # aggregating the fact table per request (about 2 s at a million opportunities on PostgreSQL).
    return sa.Table(
        DASHBOARD_FIGURES, metadata,
        sa.Column("view_name", sa.String(64), primary_key=True, comment="the reporting view these rows come from"),
        sa.Column("rows_json", LONG_TEXT, nullable=False, comment="JSON: the view's rows when computed"),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, comment="when they were read (UTC)"),
        comment="The dashboard's figures: each reporting view's rows, refreshed after every scoring run",
    )


def retired_indexes(name: str, schema: DatasetSchema = DEFAULT_SCHEMA) -> set[str]:
    """Indexes earlier releases declared on ``name`` that no query used (a full refresh cannot make them
    selective); the writer drops them from a deployed table, by these names only."""
    if name == FACT_OPPORTUNITY:
        roles = ("outcome", schema.seller, schema.close, schema.stage, region_field(schema))
        return {f"ix_{FACT_OPPORTUNITY}_{role}" for role in roles if role}
    return {DIM_MODEL_VERSION: {f"ix_{DIM_MODEL_VERSION}_trained_at"},
            FACT_PREDICTION_HISTORY: {f"ix_{FACT_PREDICTION_HISTORY}_run"},
            FACT_MODEL_SWITCH: {f"ix_{FACT_MODEL_SWITCH}_model_version"}}.get(name, set())


def table_for(name: str, metadata: sa.MetaData, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
    if name in metadata.tables:
        return metadata.tables[name]
    builders = {FACT_OPPORTUNITY: lambda: fact_opportunity(metadata, schema), DIM_SELLER: lambda: dim_seller(metadata),
                DIM_MODEL_VERSION: lambda: dim_model_version(metadata),
                FACT_PREDICTION_HISTORY: lambda: fact_prediction_history(metadata),
                FACT_MODEL_SWITCH: lambda: fact_model_switch(metadata),
                DASHBOARD_FIGURES: lambda: dashboard_figures(metadata)}
    kinds = {table: kind for kind, table in CODE_DIMENSIONS.items()}
    if name in kinds:
        return dim_code(metadata, kinds[name])
    if name not in builders:
        raise KeyError(f"no reporting table is declared as {name!r}; known: {sorted([*builders, *kinds])}")
    return builders[name]()


def all_tables(metadata: sa.MetaData, schema: DatasetSchema = DEFAULT_SCHEMA) -> dict[str, sa.Table]:
    """Every reporting table, declared in ``metadata``."""
    names = (FACT_OPPORTUNITY, DIM_SELLER, DIM_MODEL_VERSION, FACT_PREDICTION_HISTORY, FACT_MODEL_SWITCH,
             *CODE_DIMENSIONS.values())
    return {name: table_for(name, metadata, schema) for name in names}
