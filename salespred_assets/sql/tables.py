"""Reporting tables, declared once and created explicitly (never inferred by ``to_sql``).

Input columns keep the capture app's field names (the data contract analysts already know from the
original Power BI model); everything the platform adds is in English.
"""

from __future__ import annotations

import sqlalchemy as sa

from salespred_assets.core.schema import DEFAULT_SCHEMA, DatasetSchema

FACT_OPPORTUNITY = "fact_opportunity"
DIM_SELLER = "dim_seller"

PREDICTION_COLUMNS = ["probability", "predicted_won", "score", "grade", "factors_for", "factors_against",
                      "model_version", "scored_at"]


def _input_column(name: str, schema: DatasetSchema, primary: bool = False) -> sa.Column:
    if name in schema.dates:
        return sa.Column(name, sa.Date, nullable=False, comment=f"source field {name} (date)")
    if name in schema.number_fields:
        return sa.Column(name, sa.Float, nullable=False, comment=f"source field {name}")
    return sa.Column(name, sa.String(64), primary_key=primary, nullable=False, comment=f"source field {name}")


def fact_opportunity(metadata: sa.MetaData, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
    cols = [_input_column(schema.id, schema, primary=True)]
    cols += [_input_column(c, schema) for c in schema.fields if c != schema.id]
    cols += [
        sa.Column("outcome", sa.String(8), nullable=False, comment="won, lost or open (from the stage)"),
        sa.Column("probability", sa.Float, nullable=False, comment="calibrated probability that it is won"),
        sa.Column("predicted_won", sa.Boolean, nullable=False, comment="probability >= the model's threshold"),
        sa.Column("score", sa.SmallInteger, nullable=False, comment="1-99: the probability in percent"),
        sa.Column("grade", sa.String(1), nullable=False, comment="A >= 0.75 > B >= 0.50 > C >= 0.25 > D"),
        sa.Column("factors_for", sa.Text, nullable=False, comment="JSON: top 3 features raising the probability"),
        sa.Column("factors_against", sa.Text, nullable=False, comment="JSON: top 3 features lowering it"),
        sa.Column("model_version", sa.String(40), nullable=False, comment="model version that scored the row"),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False, comment="when it was scored (UTC)"),
    ]
    indexes = [sa.Index(f"ix_{FACT_OPPORTUNITY}_outcome", "outcome")]
    for role in (schema.seller, schema.close):
        if role:
            indexes.append(sa.Index(f"ix_{FACT_OPPORTUNITY}_{role}", role))
    return sa.Table(FACT_OPPORTUNITY, metadata, *cols, *indexes,
                    comment="One row per opportunity: its inputs and its latest prediction")


def dim_seller(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        DIM_SELLER, metadata,
        sa.Column("numero_vendedor", sa.String(32), primary_key=True, comment="seller number"),
        sa.Column("username", sa.String(64), nullable=False, comment="login name"),
        sa.Column("first_name", sa.String(100), nullable=True),
        sa.Column("last_name", sa.String(100), nullable=True),
        sa.Column("title", sa.String(100), nullable=True, comment="job title; managers and VPs see their team"),
        sa.Column("full_name", sa.String(201), nullable=True, comment="first and last name"),
        comment="Sellers; never holds a password or a password hash",
    )


def table_for(name: str, metadata: sa.MetaData, schema: DatasetSchema = DEFAULT_SCHEMA) -> sa.Table:
    if name in metadata.tables:
        return metadata.tables[name]
    builders = {FACT_OPPORTUNITY: lambda: fact_opportunity(metadata, schema), DIM_SELLER: lambda: dim_seller(metadata)}
    if name not in builders:
        raise KeyError(f"no reporting table is declared as {name!r}; known: {sorted(builders)}")
    return builders[name]()
