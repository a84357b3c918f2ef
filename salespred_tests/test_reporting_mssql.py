"""SQL Server without a server: every table, index, view and write statement compiles for mssql+pyodbc.

The statements compiled here are the ones the code executes (``views.ddl``, the writer's statements),
not copies of them.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.schema import (
    CreateIndex,
    CreateTable,
    SetColumnComment,
    SetTableComment,
)

from salespred_assets.core.schema import DEFAULT_SCHEMA as S, DatasetSchema
from salespred_assets.sql import tables, views, writer

# The dialect an mssql+pyodbc URL gives (qmark parameters, as pyodbc sends them); no connection is made.
DIALECT = sa.create_engine("mssql+pyodbc://reporter@salespred-dsn").dialect
DIALECT.default_schema_name = "dbo"  # what the first connection would set; comments need it


def _sql(statement, literal: bool = False) -> str:
    return str(statement.compile(dialect=DIALECT, compile_kwargs={"literal_binds": literal}))


@pytest.mark.parametrize("name", list(tables.all_tables(sa.MetaData())))
def test_every_table_and_index_compiles(name):
    table = tables.all_tables(sa.MetaData(), S)[name]
    ddl = _sql(CreateTable(table))
    assert ddl.startswith(f"\nCREATE TABLE {name} (")
    assert "PRIMARY KEY" in ddl
    # Instants keep their offset, text people write is NVARCHAR, and no column is a single-precision float.
    for column in table.columns:
        if isinstance(column.type, sa.DateTime):
            assert f"{column.name} DATETIMEOFFSET" in ddl
        if isinstance(column.type, sa.Double):
            assert f"{column.name} DOUBLE PRECISION" in ddl
    for index in table.indexes:
        assert _sql(CreateIndex(index)).startswith(f"CREATE INDEX {index.name} ON {name}")
    # Table and column comments become MS_Description extended properties.
    assert table.comment and _sql(SetTableComment(table)).startswith(
        f"execute sp_addextendedproperty 'MS_Description', N'{table.comment}'")
    for column in table.columns:
        assert column.comment, f"{name}.{column.name} has no comment"
        assert f"'column', {column.name}" in _sql(SetColumnComment(column))


def test_names_and_json_are_unicode_on_sql_server():
    t = tables.all_tables(sa.MetaData(), S)
    assert "full_name NVARCHAR(201)" in _sql(CreateTable(t[tables.DIM_SELLER]))
    fact = _sql(CreateTable(t[tables.FACT_OPPORTUNITY]))
    assert "factors_for NVARCHAR(max)" in fact and "numero_opportunidad NVARCHAR(64) NOT NULL" in fact


@pytest.mark.parametrize("name", views.NAMES)
def test_every_view_compiles_as_create_or_alter(name):
    select = views.definitions(S)[name]
    statements = views.ddl("mssql", name, select)
    assert len(statements) == 1
    sql = _sql(statements[0])
    assert sql.startswith(f"CREATE OR ALTER VIEW {name} AS SELECT")
    assert "LIMIT" not in sql and "ORDER BY" not in sql  # SQL Server refuses both in a view
    assert "?" not in sql  # a view holds no bound parameter: every constant is inline
    if name == views.OPEN_PIPELINE:
        assert "DATEPART(year, fact_opportunity.fecha_cierre_oportunidad)" in sql
        assert "GROUP BY open_rows.horizon_order" in sql  # grouped on a derived column, not a sub-query


def test_views_follow_a_schema_without_region_or_close_date():
    lean = DatasetSchema.from_dict({"id": "opp", "stage": {"field": "status", "won": ["W"], "lost": ["L"]},
                                    "categorical": ["segment"], "amount": "amount", "seller": "owner"})
    selects = views.definitions(lean)
    assert views.EXPECTED_BY_REGION not in selects and views.EXPECTED_BY_CLOSE_MONTH not in selects
    sql = _sql(views.ddl("mssql", views.OPEN_PIPELINE, selects[views.OPEN_PIPELINE])[0])
    assert "'all' AS horizon" in sql and "GROUP BY" not in sql
    assert "status AS stage" in _sql(views.ddl("mssql", views.SELLER_STAGE_MATRIX,
                                               selects[views.SELLER_STAGE_MATRIX])[0])


def test_write_statements_compile_with_bound_parameters():
    t = tables.all_tables(sa.MetaData(), S)
    fact, history = t[tables.FACT_OPPORTUNITY], t[tables.FACT_PREDICTION_HISTORY]
    insert = _sql(fact.insert())
    assert insert.startswith("INSERT INTO fact_opportunity (numero_opportunidad,") and "?" in insert
    delete = _sql(fact.delete().where(fact.c[S.id].in_(["OP-1", "OP-2"])))
    assert delete.startswith("DELETE FROM fact_opportunity WHERE fact_opportunity.numero_opportunidad IN")
    lookup = _sql(writer.held_keys_statement(history, ["opportunity_id", "model_version", "scored_at"],
                                             ("v1", dt.datetime(2026, 1, 1, tzinfo=dt.UTC)), ["OP-1"]))
    assert lookup.startswith("SELECT fact_prediction_history.opportunity_id \nFROM fact_prediction_history")
    assert "model_version = ?" in lookup and "scored_at = ?" in lookup
