"""The reporting layer on real databases: SQLite, PostgreSQL (psycopg, COPY) and MariaDB through pyodbc.

Each view's figures are checked against the same numbers computed with pandas from the scored frame;
writes are idempotent and transactional; views survive rewrites and rebuilds of the tables they read.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets import dashboard
from salespred_assets.core import names
from salespred_assets.core.schema import DEFAULT_SCHEMA as S, DatasetSchema
from salespred_assets.errors import SalespredError
from salespred_assets.registry import model_versions
from salespred_assets.sql import tables, views, writer
from salespred_assets.sql.resource import make_engine
from salespred_tests import reporting_fixtures as rf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scored_frames() -> dict[str, pd.DataFrame]:
    """Two scorings of the same opportunities by two tiny models (trained once for the module)."""
    frame = rf.source_frame()
    first, second = rf.tiny_model(frame, trees=30), rf.tiny_model(frame, trees=40)
    return {"first": rf.scored(frame, first), "second": rf.scored(frame, second, rf.SCORED_AT + dt.timedelta(days=1))}


@pytest.fixture
def engine(sql_url: str) -> sa.Engine:
    engine = make_engine(sql_url)
    rf.reset(engine)
    return engine


def _registry(preds_by_version: list[pd.DataFrame]) -> pd.DataFrame:
    docs = []
    for n, preds in enumerate(preds_by_version):
        version = str(preds["model_version"].iloc[0])
        at = rf.SCORED_AT - dt.timedelta(days=10 - n)
        current = n == len(preds_by_version) - 1
        history = [{"event": "trained", "at": at}, {"event": "promoted", "at": at}]
        if not current:
            history.append({"event": "retired", "at": at + dt.timedelta(days=1)})
        docs.append({"_id": version, "version": version, "trained_at": at.isoformat(), "current": current,
                     "status": "promoted" if current else "retired", "history": history,
                     "info": {"params": {"n_estimators": 30 + 10 * n}, "rows": 1000, "threshold": 0.5,
                              "metrics": {"roc_auc": 0.80 + n / 100, "accuracy": 0.75 + n / 100, "brier": 0.18}}})
    return model_versions.frame(docs)


def _careless_sellers() -> pd.DataFrame:
    """Sellers as a careless caller might pass them: the table contract keeps only its declared columns."""
    sellers = rf.sellers_frame()
    sellers["password"] = "plain-demo-password"
    sellers["password_hash"] = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    return sellers


def _write_all(engine: sa.Engine, preds: pd.DataFrame, registry: pd.DataFrame, history: list[pd.DataFrame]) -> None:
    t = tables.all_tables(sa.MetaData(), S)
    writer.write(engine, t[tables.FACT_OPPORTUNITY], preds)
    writer.write(engine, t[tables.DIM_SELLER], _careless_sellers())
    writer.write(engine, t[tables.DIM_MODEL_VERSION], registry)
    versions = list(registry["model_version"])
    writer.write(engine, t[tables.FACT_MODEL_SWITCH], pd.DataFrame({
        "switch_number": range(1, len(versions) + 1),
        "switched_at": [rf.SCORED_AT - dt.timedelta(days=9 - n) for n in range(len(versions))],
        "model_version": versions, "previous_version": [None, *versions[:-1]],
        "action": ["gate"] * len(versions), "reason": ["passed the promotion gate"] * len(versions)}))
    for frame in history:
        writer.write(engine, t[tables.FACT_PREDICTION_HISTORY], frame[rf.HISTORY_COLUMNS], mode="append")
    lookup = names.Names(names.demo_entries())
    for kind, table in tables.CODE_DIMENSIONS.items():
        writer.write(engine, t[table], pd.DataFrame(names.dimension(lookup, kind, preds.get(kind, []))))


def test_views_match_pandas(engine, scored_frames):
    first, second = scored_frames["first"], scored_frames["second"]
    registry = _registry([first, second])
    _write_all(engine, second, registry, [first, second])
    assert views.refresh(engine, S) == list(views.NAMES)
    if engine.dialect.name == "postgresql":  # views carry their tile's description (COMMENT ON VIEW)
        assert views.PERIOD_RULE in sa.inspect(engine).get_table_comment(views.OPEN_PIPELINE)["text"]

    closed = views.read(engine, views.CLOSED_BY_RESULT).set_index("result")
    rf.assert_frames_close(closed, rf.expected_closed(second), "closed by result")

    pipeline = views.read(engine, views.OPEN_PIPELINE)
    want = rf.expected_pipeline(second)
    assert len(want) >= 3, "the fixture should spread open opportunities over several horizons"
    rf.assert_frames_close(pipeline.set_index("horizon_order"), want, "open pipeline")
    assert set(pipeline["period_rule"]) == {views.PERIOD_RULE}
    assert pd.Timestamp(pipeline["as_of"].max()).replace(tzinfo=None) == \
        pd.Timestamp(second["scored_at"].max()).tz_convert("UTC").replace(tzinfo=None)
    assert dict(zip(pipeline["horizon_order"], pipeline["horizon"], strict=True))[2] == "next 3 months"

    by_month = views.read(engine, views.EXPECTED_BY_CLOSE_MONTH)
    assert (by_month["close_month_key"] == by_month["close_year"] * 100 + by_month["close_month"]).all()
    rf.assert_frames_close(by_month.set_index("close_month_key"), rf.expected_by_month(second), "by close month")

    region = views.read(engine, views.EXPECTED_BY_REGION).set_index("region")
    rf.assert_frames_close(region, rf.expected_by_region(second), "by region")

    matrix = views.read(engine, views.SELLER_STAGE_MATRIX).set_index(["seller", "seller_name", "stage"])
    rf.assert_frames_close(matrix, rf.expected_matrix(second, rf.sellers_frame()), "seller x stage")
    assert "Sofía Herrera" in set(matrix.index.get_level_values("seller_name"))  # accents survive every dialect

    quality = views.read(engine, views.MODEL_QUALITY).set_index("model_version")
    for preds, entry in zip((first, second), registry.itertuples(), strict=True):
        row = quality.loc[entry.model_version]
        assert row["predictions_recorded"] == len(preds)
        assert row["roc_auc"] == pytest.approx(entry.roc_auc, rel=1e-12)  # DOUBLE everywhere, not FLOAT
        assert bool(row["is_current"]) == entry.is_current
    assert quality["predictions_recorded"].sum() == len(first) + len(second)

    # No password or hash, as a column or a value, in any table.
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for name in tables.all_tables(sa.MetaData(), S):
            columns = inspector.get_columns(name)
            assert not [c for c in columns if "pass" in c["name"].lower() or "hash" in c["name"].lower()], name
            values = writer.read_table(engine, name).astype(str)
            assert not values.apply(lambda col: col.str.contains("argon2|plain-demo")).any().any(), name
            if engine.dialect.name != "sqlite":  # table and column comments document the meaning
                assert inspector.get_table_comment(name)["text"], name
                assert all(c.get("comment") for c in columns), name

    # The dashboard reads the same views: its headline is the pipeline's sum.
    figs = dashboard.figures(engine)
    assert figs["pipeline"]["expected_tcv"] == pytest.approx(want["expected_tcv"].sum(), rel=1e-9)
    assert figs["matrix"]["opportunities"] == int((second["outcome"] == "open").sum())


def test_a_managers_matrix_holds_only_the_team(sqlite_url, scored_frames):
    engine = make_engine(sqlite_url)
    rf.reset(engine)
    second = scored_frames["second"]
    _write_all(engine, second, _registry([scored_frames["first"], second]), [second])
    views.refresh(engine, S)
    everyone = dashboard.figures(engine)
    team = sorted({r["seller"] for r in everyone["matrix"]["rows"]})[:2]
    mine = dashboard.figures(engine, sellers=team)
    assert [r["seller"] for r in mine["matrix"]["rows"]] == sorted(team, key=lambda s: next(
        r["seller_name"] for r in everyone["matrix"]["rows"] if r["seller"] == s))
    open_team = second[(second["outcome"] == "open") & second["numero_vendedor"].isin(team)]
    assert mine["matrix"]["opportunities"] == len(open_team) < everyone["matrix"]["opportunities"]
    assert mine["matrix"]["tcv"] == pytest.approx(open_team["tcv"].sum())
    assert mine["pipeline"] == everyone["pipeline"]  # the other tiles stay company-wide


def test_writes_are_idempotent_and_the_history_appends_once(engine, scored_frames):
    first, second = scored_frames["first"], scored_frames["second"]
    t = tables.all_tables(sa.MetaData(), S)
    fact, history = t[tables.FACT_OPPORTUNITY], t[tables.FACT_PREDICTION_HISTORY]
    for _ in range(2):
        writer.write(engine, fact, first)
    assert writer.count_rows(engine, fact.name) == len(first)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count(sa.distinct(fact.c[S.id])))).scalar_one() == len(first)

    results = [writer.write(engine, history, first[rf.HISTORY_COLUMNS], mode="append") for _ in range(2)]
    assert [r["inserted"] for r in results] == [len(first), 0]
    assert results[1]["skipped"] == len(first)
    assert writer.count_rows(engine, history.name) == len(first)

    # A sensor-style batch: a few opportunities rescored later are appended; the rest is untouched.
    later = second.head(25).copy()
    writer.write(engine, history, later[rf.HISTORY_COLUMNS], mode="append")
    writer.write(engine, history, later[rf.HISTORY_COLUMNS], mode="append")
    assert writer.count_rows(engine, history.name) == len(first) + 25
    writer.write(engine, fact, later, mode="upsert")
    stored = writer.read_table(engine, fact.name).set_index(S.id)
    assert len(stored) == len(first)
    assert (stored.loc[later[S.id], "model_version"] == later["model_version"].iloc[0]).all()
    assert (stored.drop(index=later[S.id])["model_version"] == first["model_version"].iloc[0]).all()


def test_a_failed_write_leaves_the_previous_rows_and_views(engine, scored_frames):
    first, second = scored_frames["first"], scored_frames["second"]
    _write_all(engine, first, _registry([first]), [first])
    views.refresh(engine, S)
    before = views.read(engine, views.OPEN_PIPELINE)["expected_tcv"].sum()

    broken = second.copy()
    broken.loc[broken.index[-1], S.id] = broken[S.id].iloc[0]  # a duplicate key at the very end
    fact = tables.fact_opportunity(sa.MetaData(), S)
    with pytest.raises(writer.WriteFailed, match="rolled back"):
        writer.write(engine, fact, broken)
    stored = writer.read_table(engine, fact.name)
    assert len(stored) == len(first)
    assert set(stored["model_version"]) == {first["model_version"].iloc[0]}
    assert views.read(engine, views.OPEN_PIPELINE)["expected_tcv"].sum() == pytest.approx(before, rel=1e-12)


def test_rebuilding_a_table_recreates_the_views_that_read_it(engine, scored_frames):
    first = scored_frames["first"]
    _write_all(engine, first, _registry([first]), [first])
    views.refresh(engine, S)
    # The same data under a schema with one input field fewer: the fact table's columns change.
    lean = DatasetSchema.from_dict({**S.to_dict(), "numeric": [c for c in S.numeric if c != "edad_oferta"],
                                    "final_at_close": []})
    narrower = first.drop(columns=["edad_oferta"])
    result = writer.write(engine, tables.fact_opportunity(sa.MetaData(), lean), narrower, schema=lean)
    assert result["table"] == "rebuilt"
    assert result["views_recreated"] == sorted(views.dependents(tables.FACT_OPPORTUNITY))
    with engine.connect() as conn:
        assert views.existing(conn) == set(views.NAMES)
        assert "edad_oferta" not in {c["name"] for c in sa.inspect(conn).get_columns(tables.FACT_OPPORTUNITY)}
    region = views.read(engine, views.EXPECTED_BY_REGION).set_index("region")
    rf.assert_frames_close(region, rf.expected_by_region(first), "by region after the rebuild")


def test_non_ascii_text_round_trips(engine):
    sellers = rf.sellers_frame()
    sellers.loc[0, ["first_name", "last_name", "full_name"]] = ["Zoë", "Ñúñez-Ærø", "Zoë Ñúñez-Ærø"]
    writer.write(engine, tables.dim_seller(sa.MetaData()), sellers)
    stored = writer.read_table(engine, tables.DIM_SELLER).set_index("numero_vendedor")
    assert stored.loc["NV-0", "full_name"] == "Zoë Ñúñez-Ærø"
    assert stored.loc["NV-4", "full_name"] == "Sofía Herrera"


def test_long_text_of_every_length_round_trips(engine):
    # Rows longer than the first one came back byte-shifted from MariaDB's ODBC driver when text was sent
    # as UTF-16 (the factors' JSON and the dashboard's stored figures are such rows).
    values = [("Añó café ✓ 0123456789, " * 200)[:n] for n in (120, 300, 1500, 400, 3000, 800, 7)]
    frame = pd.DataFrame({"view_name": [f"v{i}" for i in range(len(values))], "rows_json": values,
                          "computed_at": pd.Timestamp("2026-11-30T12:00:00Z")})
    writer.write(engine, tables.dashboard_figures(sa.MetaData()), frame)
    stored = writer.read_table(engine, tables.DASHBOARD_FIGURES).set_index("view_name")["rows_json"]
    assert [stored[f"v{i}"] for i in range(len(values))] == values


def test_append_only_history_is_never_dropped(sqlite_url):
    engine = make_engine(sqlite_url)
    legacy = sa.Table(tables.FACT_PREDICTION_HISTORY, sa.MetaData(), sa.Column("opportunity_id", sa.String(64)))
    legacy.create(engine)
    with pytest.raises(SalespredError, match="append-only"):
        writer.write(engine, tables.fact_prediction_history(sa.MetaData()), pd.DataFrame(), mode="append")
    assert sa.inspect(engine).has_table(tables.FACT_PREDICTION_HISTORY)
    with pytest.raises(SalespredError, match="unknown write mode"):
        writer.write(engine, tables.dim_seller(sa.MetaData()), rf.sellers_frame(), mode="merge")


def test_power_bi_files_name_what_the_database_holds():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pbids = json.loads((root / "powerbi" / "salespred.pbids").read_text(encoding="utf-8"))
    [connection] = pbids["connections"]
    assert connection["details"]["protocol"] == "postgresql" and connection["details"]["address"]["database"]
    guide = (root / "docs" / "powerbi.md").read_text(encoding="utf-8")
    for name in [*tables.all_tables(sa.MetaData()), *views.NAMES]:
        assert f"`{name}`" in guide, name
    for name, select in views.definitions(S).items():  # every view column the DAX may use is documented
        for column in select.selected_columns.keys():  # noqa: SIM118 - a column collection, not a dict
            assert column in guide, f"{name}.{column}"


def test_the_page_escapes_text_and_says_when_a_tile_has_no_data():
    figs = {"closed": None, "pipeline": None, "by_month": [], "by_region": None, "model_quality": [],
            "matrix": {"stages": ["S1"], "totals": {"S1": {"opportunities": 1, "tcv": 5.0, "expected_tcv": 1.0}},
                       "opportunities": 1, "tcv": 5.0, "rows": [
                           {"seller": "NV-9", "seller_name": "<script>alert(1)</script>", "opportunities": 1,
                            "tcv": 5.0, "expected_tcv": 1.0,
                            "cells": {"S1": {"opportunities": 1, "tcv": 5.0, "expected_tcv": 1.0}}}]}}
    page = dashboard.render_html(figs, "en")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("Not available") == 3 and page.count("No data yet.") == 2
    assert "<script" not in page.replace('<script type="application/json" id="figures">', "")
    with pytest.raises(SalespredError, match="unknown dashboard language"):
        dashboard.render_html(figs, "fr")


def test_a_history_table_from_before_closed_outcomes_is_migrated_in_place(engine):
    """Deployments created the history with NOT NULL probabilities; relaxing that keeps every row."""
    old = sa.MetaData()
    legacy = tables.fact_prediction_history(old)
    for name in ("probability", "score", "grade"):
        legacy.c[name].nullable = False
    legacy.create(engine)
    row = {"opportunity_id": "OP-1", "model_version": "v0", "scored_at": rf.SCORED_AT, "probability": 0.5,
           "score": 50, "grade": "B", "outcome": "open"}
    with engine.begin() as conn:
        conn.execute(legacy.insert(), [row])
    result = writer.ensure_table(engine, tables.fact_prediction_history(sa.MetaData()))
    assert sorted(result["columns_made_nullable"]) == ["grade", "probability", "score"]
    nullable = {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns(tables.FACT_PREDICTION_HISTORY)}
    assert nullable["probability"] and nullable["score"] and nullable["grade"]
    with engine.begin() as conn:  # a closed opportunity's scoring now fits
        conn.execute(legacy.insert(), [{**row, "opportunity_id": "OP-2", "probability": None, "score": None,
                                        "grade": None, "outcome": "won"}])
    kept = writer.read_table(engine, tables.FACT_PREDICTION_HISTORY).set_index("opportunity_id")
    assert kept.loc["OP-1", "probability"] == 0.5 and pd.isna(kept.loc["OP-2", "probability"])


def _has_statistics(engine: sa.Engine, table: str) -> bool:
    """Whether the database holds planner statistics for ``table`` (read where each dialect keeps them)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            query = "SELECT count(*) FROM pg_stats WHERE tablename = :t"
        elif engine.dialect.name in ("mysql", "mariadb"):
            query = ("SELECT count(*) FROM mysql.innodb_table_stats WHERE database_name = DATABASE() "
                     "AND table_name = :t AND n_rows >= 1000")
        else:
            if not sa.inspect(conn).has_table("sqlite_stat1"):
                return False
            query = "SELECT count(*) FROM sqlite_stat1 WHERE tbl = :t"
        return bool(conn.execute(sa.text(query), {"t": table}).scalar())


def test_a_bulk_write_leaves_fresh_planner_statistics(engine):
    """Bulk-filled tables get statistics in the same write: without them PostgreSQL planned the fact tables'
    anti join as a quadratic nested loop. A small write leaves the statistics to the database."""
    small = rf.sellers_frame()
    result = writer.write(engine, tables.dim_seller(sa.MetaData()), small)
    assert "statistics_refreshed" not in result
    if engine.dialect.name == "sqlite":  # SQLite gathers none by itself: nothing was analysed
        assert not _has_statistics(engine, tables.DIM_SELLER)
    n = writer.STATISTICS_ROWS
    bulk = pd.DataFrame({"numero_vendedor": [f"NV-{i}" for i in range(n)], "username": [f"u{i}" for i in range(n)],
                         "first_name": "Ana", "last_name": "Pérez", "title": "Vendedor", "full_name": "Ana Pérez"})
    result = writer.write(engine, tables.dim_seller(sa.MetaData()), bulk)
    assert result["inserted"] == n and result["statistics_refreshed"] == 1
    assert _has_statistics(engine, tables.DIM_SELLER)


def test_each_dialect_has_its_statistics_statement():
    assert writer.statistics_statement("mssql", "[fact_opportunity]") == "UPDATE STATISTICS [fact_opportunity]"
    assert writer.statistics_statement("postgresql", '"t"') == 'ANALYZE "t"'
    assert writer.statistics_statement("mariadb", "`t`") == "ANALYZE TABLE `t`"
    with pytest.raises(SalespredError, match="no statistics statement for the oracle dialect"):
        writer.statistics_statement("oracle", "t")


def test_an_index_an_earlier_release_declared_is_dropped(engine, scored_frames):
    """A database created before the index review keeps (model_version, scored_at) on the history: the
    next write drops it (it cannot be selective in a full refresh, and the planner walked it once per row)."""
    history = tables.fact_prediction_history(sa.MetaData())
    writer.write(engine, history, scored_frames["first"][rf.HISTORY_COLUMNS], mode="append")
    old = tables.fact_prediction_history(sa.MetaData())  # the index as it was declared, on a copy
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateIndex(sa.Index("ix_fact_prediction_history_run", old.c.model_version,
                                                    old.c.scored_at)))
        # One an operator added for a report, under the same prefix: not ours to drop.
        conn.execute(sa.schema.CreateIndex(sa.Index("ix_fact_prediction_history_outcome", old.c.outcome)))
    assert "ix_fact_prediction_history_run" in {i["name"] for i in sa.inspect(engine).get_indexes(history.name)}
    writer.write(engine, tables.fact_prediction_history(sa.MetaData()), scored_frames["second"][rf.HISTORY_COLUMNS],
                 mode="append")
    names = {i["name"] for i in sa.inspect(engine).get_indexes(history.name)}
    assert "ix_fact_prediction_history_run" not in names and "ix_fact_prediction_history_outcome" in names
    assert {str(i.name) for i in history.indexes} <= names  # the declared ones stay
    assert writer.count_rows(engine, history.name) == len(scored_frames["first"]) + len(scored_frames["second"])


def test_code_dimensions_keep_accents_and_name_unknown_codes_by_themselves(engine):
    lookup = names.Names(names.demo_entries())
    t = tables.all_tables(sa.MetaData(), S)
    territories = pd.DataFrame(names.dimension(lookup, "territorios", ["TE-04", "TE-99", None]))
    writer.write(engine, t["dim_territorio"], territories)
    stored = writer.read_table(engine, "dim_territorio").set_index("code")
    assert len(stored) == 17 and stored.loc["TE-04", "name_es"] == "Bogotá"  # accents survive every dialect
    assert stored.loc["TE-99", ["name_es", "name_en"]].tolist() == ["TE-99", "TE-99"]  # used, unnamed: its code
    assert stored.loc["TE-05", "region"] == "RE-01" and pd.isna(stored.loc["TE-99", "region"])
    industries = pd.DataFrame(names.dimension(lookup, "industrias"))
    writer.write(engine, t["dim_industria"], industries)
    writer.write(engine, t["dim_industria"], industries)  # replaced, not appended
    assert writer.count_rows(engine, "dim_industria") == 65
    with engine.connect() as conn:  # the relationship Power BI draws: fact code -> dimension code
        dim = sa.table("dim_industria", sa.column("code"), sa.column("name_es"))
        assert conn.execute(sa.select(dim.c.name_es).where(dim.c.code == "IN-61")).scalar_one() == "Videojuegos"


def test_code_dimensions_take_whatever_codes_the_data_holds(engine):
    import numpy as np

    # What an export can hold: missing values, 3 and 3.0, codes a case-insensitive collation (MariaDB,
    # SQL Server) or trailing-space padding takes as one, and codes longer than the column.
    lookup = names.Names([names.Entry("lead_source", "Web", "Sitio web", "Website")])
    used = [None, np.nan, float("nan"), pd.NA, 3, 3.0, "web", "WEB ", "Wéb", "IN-01 ", "IN-01", "x" * 80, "Z" * 65]
    dim = names.dimension_table(lookup, "lead_source", used)
    assert [r["code"] for r in dim.rows] == ["3", "IN-01", "Web", "Z" * 64, "x" * 64]
    assert dim.merged == 3 and dim.truncated == 2 and len(dim.notes) == 5
    assert dim.rows[2]["name_es"] == "Sitio web"  # the catalog's spelling is the one kept
    table = tables.all_tables(sa.MetaData(), S)["dim_lead_source"]
    writer.write(engine, table, pd.DataFrame(dim.rows))  # one primary key per row on every dialect
    stored = writer.read_table(engine, "dim_lead_source")
    assert sorted(stored["code"]) == sorted(r["code"] for r in dim.rows)
    assert not stored["code"].isin(["nan", "None", "3.0", "<NA>"]).any()


def test_code_dimensions_cut_an_overlong_stage_name(engine):
    lookup = names.Names()
    dim = names.dimension_table(lookup, "etapas", ["Won"], lambda code, lang: code + "!" * 300)
    assert dim.truncated == 2 and len(dim.rows[0]["name_es"]) == names.NAME_MAX
    writer.write(engine, tables.all_tables(sa.MetaData(), S)["dim_etapa"], pd.DataFrame(dim.rows))
    assert writer.count_rows(engine, "dim_etapa") == 1
