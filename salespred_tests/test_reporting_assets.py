"""The reporting assets and checks, materialised by Dagster on SQLite, PostgreSQL and MariaDB-via-pyodbc.

Upstream assets (raw opportunities, sellers, features, predictions) are materialised once per module on
real MongoDB with a tiny promoted model; each dialect then materialises the whole ``reporting`` group
twice: the second run must change nothing (idempotent writes, history appended once).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets import dashboard, settings
from salespred_assets.core.names import STAGE_CODES
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.io_manager import RedisCacheIOManager
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.registry.io_manager import MongoModelIOManager
from salespred_assets.sql import queries, tables, views, writer
from salespred_assets.sql.io_manager import SqlIOManager
from salespred_assets.sql.resource import SqlResource, make_engine
from salespred_tests import reporting_fixtures as rf
from salespred_tests.helpers import AS_OF, all_assets_and_checks

pytestmark = pytest.mark.integration
UPSTREAM = ["raw_opportunities", "sellers", "opportunity_features", "opportunity_predictions"]


@pytest.fixture(scope="module")
def mongo_db(mongo_server):
    mongo = MongoResource(uri=mongo_server.uri, database=f"t_{uuid.uuid4().hex[:12]}")
    loading.seed_synthetic(mongo, 800, seed=21, as_of=AS_OF)
    loading.ensure_demo_sellers(mongo)
    frame = mongo.read_opportunities(mongo.schema()).frame
    versions = []
    for trees in (30, 40):  # two versions: the first promoted, then replaced by the second
        model = rf.tiny_model(frame, trees=trees)
        model.info["metrics"] = {"roc_auc": 0.7 + trees / 1000, "accuracy": 0.7, "brier": 0.2}
        model_store.save(mongo.db, model)
        model_store.set_current(mongo.db, model.version, "test")
        versions.append(model.version)
    yield mongo, versions
    mongo.client.drop_database(mongo.database)


@pytest.fixture(scope="module")
def instance():
    """One Dagster instance for the module, as a deployment has: a check reads what an earlier run recorded
    (fact_opportunity_reconciles, the extraction's document counts)."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="module")
def storage(mongo_db, tmp_path_factory, instance) -> Path:
    """Upstream frames materialised once, in a filesystem IO manager the reporting runs read from."""
    base = tmp_path_factory.mktemp("storage")
    result = _materialize(mongo_db[0], f"sqlite:///{base / 'unused.db'}", base, dg.AssetSelection.assets(*UPSTREAM),
                          instance)
    assert result.success
    return base


def _materialize(mongo: MongoResource, sql_url: str, base: Path, selection,
                 instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    sql = SqlResource(url=sql_url)
    redis = RedisResource(url="redis://127.0.0.1:1/0")  # the reporting group never touches Redis
    resources = {"mongo": mongo, "sql": sql, "redis": redis, "model_io_manager": MongoModelIOManager(mongo=mongo),
                 "sql_io_manager": SqlIOManager(sql=sql), "redis_io_manager": RedisCacheIOManager(redis=redis),
                 "io_manager": dg.FilesystemIOManager(base_dir=str(base))}
    assets, checks = all_assets_and_checks()
    return dg.materialize([*assets, *checks], resources=resources, selection=selection, raise_on_error=False,
                          instance=instance)


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in event.metadata.items()}


def test_the_reporting_group_on_every_dialect(mongo_db, storage, instance, sql_url):
    mongo, versions = mongo_db
    engine = make_engine(sql_url)
    rf.reset(engine)
    preds = pd.read_pickle(storage / "opportunity_predictions")
    reporting = dg.AssetSelection.groups("reporting")

    first = _materialize(mongo, sql_url, storage, reporting, instance)
    assert first.success
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks == {"fact_opportunity_reconciles": True, "dim_seller_safe": True,
                      "dim_model_version_matches_registry": True, "fact_prediction_history_has_latest_scoring": True,
                      "reporting_views_reconcile": True, "sales_dashboard_self_contained": True,
                      "dashboard_figures_cover_the_views": True,
                      **{f"{table}_covers_the_data": True for table in tables.CODE_DIMENSIONS.values()}}
    assert _metadata(first, "reporting_views")["views"] == ", ".join(views.NAMES)
    # The dashboard reads the stored figures: the same as reading every view now.
    stored, live = dashboard.figures(engine), dashboard.from_snapshot(dashboard.snapshot(engine))
    assert stored.pop("computed_at") and live.pop("computed_at")
    assert stored == live and set(stored) == {"closed", "pipeline", "by_month", "by_region", "matrix", "model_quality"}

    # The catalogs as dimension tables (the demo catalog that seeding loaded), one per kind of code; every code
    # the opportunities use has its row, and the seller table has names but no password or hash.
    industries = writer.read_table(engine, "dim_industria").set_index("code")
    assert industries.loc["IN-23", "name_es"] == "Sanidad" and industries.loc["IN-23", "name_en"] == "Healthcare"
    assert set(preds["industrias"]) <= set(industries.index)
    territories = writer.read_table(engine, "dim_territorio").set_index("code")
    assert territories.loc["TE-04", ["name_es", "region"]].tolist() == ["Bogotá", "RE-01"]
    stages = writer.read_table(engine, "dim_etapa").set_index("code")
    assert stages.loc["Won", "name_es"] == "Ganada" and set(STAGE_CODES) <= set(stages.index)  # every stage
    for table in tables.CODE_DIMENSIONS.values():
        assert writer.count_rows(engine, table) > 0, table
    sellers = writer.read_table(engine, tables.DIM_SELLER)
    assert "Luis Gómez" in set(sellers["full_name"])
    assert not [c for c in sellers.columns if "pass" in c or "hash" in c]
    assert not sellers.astype(str).apply(lambda col: col.str.contains("argon2")).any().any()

    # Model versions: the second is current, the first retired after one promotion.
    mv = writer.read_table(engine, tables.DIM_MODEL_VERSION).set_index("model_version")
    assert list(mv.loc[versions, "status"]) == ["retired", "promoted"]
    assert [bool(v) for v in mv.loc[versions, "is_current"]] == [False, True]
    assert mv.loc[versions[0], "retired_at"] is not None and int(mv.loc[versions[0], "times_promoted"]) == 1

    # The dashboard: a file, and metadata figures equal to the views and to pandas on the scored frame.
    page = settings.home() / "dashboard" / "sales_dashboard.html"
    assert page.exists() and "<svg" in page.read_text(encoding="utf-8")
    meta = _metadata(first, "sales_dashboard")
    assert meta["path"] == str(page)
    from_views = dashboard.summary(dashboard.figures(engine))
    pipeline = rf.expected_pipeline(preds)
    closed = rf.expected_closed(preds)
    expected = {"expected_open_tcv": pipeline["expected_tcv"].sum(),
                "open_opportunities": len(preds[preds["outcome"] == "open"]), "won_tcv": closed.loc["won", "tcv"],
                "lost_opportunities": closed.loc["lost", "opportunities"],
                "regions": len(rf.expected_by_region(preds)), "model_versions": 2}
    for key, want in expected.items():
        assert meta[key] == pytest.approx(want, rel=1e-9), key
        assert from_views[key] == pytest.approx(want, rel=1e-9), key
    assert meta["current_model"] == versions[1]

    # Idempotent: the same run again changes no table (the history already holds this scoring).
    second = _materialize(mongo, sql_url, storage, reporting, instance)
    assert second.success and all(e.passed for e in second.get_asset_check_evaluations())
    assert _metadata(second, "fact_prediction_history")["rows_already_recorded"] == len(preds)
    for name, rows in {tables.FACT_OPPORTUNITY: len(preds), tables.FACT_PREDICTION_HISTORY: len(preds),
                       tables.DIM_SELLER: 5, tables.DIM_MODEL_VERSION: 2}.items():
        assert writer.count_rows(engine, name) == rows, name
    with engine.connect() as conn:
        history = sa.table(tables.FACT_PREDICTION_HISTORY, sa.column("model_version"))
        assert set(conn.execute(sa.select(history.c.model_version).distinct()).scalars()) == {versions[1]}

    # A row lost in SQL fails the reconciliation against what the extraction read (not a recount of MongoDB).
    fact = sa.table(tables.FACT_OPPORTUNITY, sa.column(DEFAULT_SCHEMA.id))
    with engine.begin() as conn:
        conn.execute(sa.delete(fact).where(fact.c[DEFAULT_SCHEMA.id] == str(preds[DEFAULT_SCHEMA.id].iloc[0])))
    reconcile = dg.AssetCheckKey(dg.AssetKey(tables.FACT_OPPORTUNITY), "fact_opportunity_reconciles")
    lost = _materialize(mongo, sql_url, storage, dg.AssetSelection.checks(reconcile), instance)
    [evaluation] = lost.get_asset_check_evaluations()
    found = {k: v.value for k, v in evaluation.metadata.items()}
    assert not evaluation.passed and found["sql_rows"] == len(preds) - 1
    assert found["mongo_documents_read"] - found["quarantined"] == len(preds)
    assert found["primary_key"] == DEFAULT_SCHEMA.id


def test_the_dashboard_shows_codes_when_the_catalogs_cannot_be_read():
    # As every page does: MongoDB down while the dashboard is written costs the names, not the dashboard.
    frame = pd.DataFrame({"view_name": [], "rows_json": []})
    from salespred_assets.defs.reporting.assets import sales_dashboard
    down = MongoResource(uri="mongodb://127.0.0.1:1/?directConnection=true", database="down", timeout_ms=200)
    result = sales_dashboard(context=dg.build_asset_context(), dashboard_figures=frame, mongo=down)
    meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
    assert meta["names"].startswith("unavailable, codes shown")
    assert Path(meta["path_es"]).read_text(encoding="utf-8").startswith("<!")


def test_the_code_dimension_check_finds_a_code_without_a_row_and_a_blank_name(tmp_path):
    # What code_dimensions_cover_the_data counts: Power BI would show these opportunities with no name.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    frame = rf.source_frame()
    preds = rf.scored(frame, rf.tiny_model(frame))
    schema = DEFAULT_SCHEMA
    t = tables.all_tables(sa.MetaData(), schema)
    writer.write(engine, t[tables.FACT_OPPORTUNITY], preds)
    codes = sorted(set(preds["industrias"].dropna()))
    dim = pd.DataFrame({"code": codes, "name_es": codes, "name_en": codes})
    writer.write(engine, t["dim_industria"], dim)

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            statement = queries.codes_without_name(schema, ["industrias"])
            assert statement is not None
            return (int(conn.execute(statement).scalar_one()),
                    int(conn.execute(queries.blank_names("industrias")).scalar_one()))

    assert counts() == (0, 0)
    dim.loc[0, "name_en"] = "  "
    writer.write(engine, t["dim_industria"], dim.iloc[:-1])  # the last code loses its row
    assert counts() == (1, 1)


def test_the_seller_check_fails_on_a_hash_a_password_column_or_a_missing_seller():
    from salespred_assets.defs.reporting.checks import dim_seller_safe

    read = pd.DataFrame({"numero_vendedor": ["NV-1", "NV-2"], "username": ["ana", "luis"]})
    assert dim_seller_safe(dim_seller=read.copy(), sellers=read).passed
    assert not dim_seller_safe(dim_seller=read.iloc[:1], sellers=read).passed
    assert not dim_seller_safe(dim_seller=read.assign(title=["$argon2id$v=19$x", "Rep"]), sellers=read).passed
    leaky = dim_seller_safe(dim_seller=read.assign(password_hash=""), sellers=read)
    assert not leaky.passed and leaky.metadata["suspicious_columns"].value == "password_hash"
