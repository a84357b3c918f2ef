"""The IO managers are the one write path to SQL and Redis: a partition's write replaces only its keys.

Small assets defined here write the real reporting table and cache through ``SqlIOManager`` and
``RedisCacheIOManager``, as the full refresh and the new-opportunity batches do: a full write first, then
one partition's rows. On SQLite, PostgreSQL and MariaDB (each when its server is configured) and real
Redis: the partition's keys are replaced, every other row and entry is left as it was, a partition run
again changes nothing, and a partitioned asset that asks to replace the whole table is refused by name.
The export's schema reaches the table as the output's typed metadata.
"""

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from salespred_assets.core.schema import DEFAULT_SCHEMA as S, DatasetSchema
from salespred_assets.redis_cache.cache import cache_frame
from salespred_assets.redis_cache.io_manager import RedisCacheIOManager
from salespred_assets.sql import tables, writer
from salespred_assets.sql.io_manager import SqlIOManager, schema_metadata
from salespred_assets.sql.resource import SqlResource, make_engine
from salespred_tests import reporting_fixtures as rf

pytestmark = pytest.mark.integration
PARTS = dg.StaticPartitionsDefinition(["b1", "b2"])


@pytest.fixture(scope="module")
def scorings() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same opportunities scored twice by one tiny model, a day apart."""
    frame = rf.source_frame(300, seed=5)
    model = rf.tiny_model(frame)
    return rf.scored(frame, model), rf.scored(frame, model, rf.SCORED_AT + dt.timedelta(days=1))


def _batches(later: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Two disjoint batches of the later scoring: 40 and 25 opportunities."""
    return {"b1": later.iloc[10:50], "b2": later.iloc[100:125]}


def _sql_assets(full: pd.DataFrame, batch: dict[str, pd.DataFrame], write: str, schema: DatasetSchema = S):
    @dg.asset(name="full", io_manager_key="sql_io_manager",
              metadata={"table": tables.FACT_OPPORTUNITY, "write": "replace"})
    def full_asset() -> dg.Output[pd.DataFrame]:
        return dg.Output(full, metadata=schema_metadata(schema))

    @dg.asset(name="batch", partitions_def=PARTS, io_manager_key="sql_io_manager",
              metadata={"table": tables.FACT_OPPORTUNITY, "write": write})
    def batch_asset(context: dg.AssetExecutionContext) -> dg.Output[pd.DataFrame]:
        return dg.Output(batch[context.partition_key], metadata=schema_metadata(schema))

    @dg.asset(name="history", partitions_def=PARTS, io_manager_key="sql_io_manager",
              metadata={"table": tables.FACT_PREDICTION_HISTORY, "write": "append"})
    def history_asset(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return batch[context.partition_key][rf.HISTORY_COLUMNS]

    return full_asset, batch_asset, history_asset


def _run(asset: dg.AssetsDefinition, resources: dict, partition: str | None = None) -> dict:
    result = dg.materialize([asset], resources=resources, partition_key=partition, raise_on_error=False)
    if not result.success:
        [failure] = result.get_step_failure_events()
        error, messages = failure.step_failure_data.error, []
        while error is not None:  # Dagster's "error while handling output", caused by the IO manager's own
            messages.append(error.message)
            error = error.cause
        raise AssertionError(" <- ".join(messages))
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in event.metadata.items()}


def _table(engine: sa.Engine) -> pd.DataFrame:
    return writer.read_table(engine, tables.FACT_OPPORTUNITY).set_index(S.id).sort_index()


def test_a_partition_replaces_only_its_keys_through_the_sql_io_manager(sql_url, scorings):
    """On every dialect: the fact table upserted by key, the history appended, never the whole table."""
    first, later = scorings
    engine = make_engine(sql_url)
    rf.reset(engine)
    batch = _batches(later)
    full, upsert, history = _sql_assets(first, batch, "upsert")
    resources = {"sql_io_manager": SqlIOManager(sql=SqlResource(url=sql_url))}

    meta = _run(full, resources)
    assert meta["rows_written"] == len(first) and meta["rows_in_table"] == len(first)
    before = _table(engine)

    meta = _run(upsert, resources, "b1")
    # The batch's rows replaced and nothing else; a batch's write never counts the whole table.
    assert meta["rows_replaced"] == meta["rows_written"] == len(batch["b1"]) and "rows_in_table" not in meta
    after = _table(engine)
    keys = batch["b1"][S.id]
    others = before.index.difference(keys)
    assert len(after) == len(before) and after.index.is_unique
    assert (after.loc[keys, "scored_at"] > before.loc[keys, "scored_at"]).all()
    pd.testing.assert_frame_equal(after.loc[others], before.loc[others])

    # The same partition run again (a retried run) leaves the same table.
    assert _run(upsert, resources, "b1")["rows_replaced"] == len(batch["b1"])
    pd.testing.assert_frame_equal(_table(engine), after)

    # The history: the batch's scorings appended once, however often the partition runs.
    first_time = _run(history, resources, "b1")
    again = _run(history, resources, "b1")
    assert first_time["rows_written"] == len(batch["b1"]) and again["rows_written"] == 0
    assert again["rows_already_recorded"] == len(batch["b1"])
    assert writer.count_rows(engine, tables.FACT_PREDICTION_HISTORY) == len(batch["b1"])

    # A partitioned asset that asks to replace its table would wipe every other partition's rows: refused.
    _, replace, _ = _sql_assets(first, batch, "replace")
    with pytest.raises(AssertionError, match="partitioned and would replace the whole fact_opportunity table"):
        _run(replace, resources, "b2")
    pd.testing.assert_frame_equal(_table(engine), after)


def test_an_empty_batch_writes_nothing(sqlite_url, scorings, redis_resource):
    first, _ = scorings
    engine = make_engine(sqlite_url)
    full, upsert, _ = _sql_assets(first, {"b1": pd.DataFrame(), "b2": pd.DataFrame()}, "upsert")
    resources = {"sql_io_manager": SqlIOManager(sql=SqlResource(url=sqlite_url))}
    _run(full, resources)
    before = _table(engine)
    meta = _run(upsert, resources, "b1")
    assert (meta["rows_written"], meta["rows_replaced"], meta["table_ddl"]) == (0, 0, "untouched")
    pd.testing.assert_frame_equal(_table(engine), before)

    @dg.asset(name="cache", partitions_def=PARTS, io_manager_key="redis_io_manager", metadata={"write": "upsert"})
    def cache_asset() -> pd.DataFrame:
        return pd.DataFrame()

    meta = _run(cache_asset, {"redis_io_manager": RedisCacheIOManager(redis=redis_resource)}, "b1")
    assert meta["keys_written"] == 0 and redis_resource.cache().current_generation() is None


def test_a_partition_writes_only_its_keys_into_the_live_redis_generation(redis_resource, scorings):
    first, later = scorings
    batch = _batches(later)

    @dg.asset(name="full", io_manager_key="redis_io_manager", metadata={"write": "publish"})
    def full_asset() -> pd.DataFrame:
        return cache_frame(first, S.seller)

    @dg.asset(name="batch", partitions_def=PARTS, io_manager_key="redis_io_manager", metadata={"write": "upsert"})
    def batch_asset(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return cache_frame(batch[context.partition_key], S.seller)

    resources = {"redis_io_manager": RedisCacheIOManager(redis=redis_resource)}
    published = _run(full_asset, resources)
    cache = redis_resource.cache()
    assert published["keys_written"] == len(first) and cache.current_generation() == published["generation"]

    meta = _run(batch_asset, resources, "b2")
    assert meta["keys_written"] == len(batch["b2"])
    assert meta["generation"] == published["generation"] == cache.current_generation()  # no new generation
    numbers = first[S.id].astype(str).tolist()
    stamps = {n: json.loads(raw)["scored_at"] for n, raw in zip(numbers, cache.get_many(numbers), strict=True)}
    assert set(cache.live_ids()) == set(numbers)
    in_batch = set(batch["b2"][S.id].astype(str))
    assert len({stamps[n] for n in in_batch}) == 1 and len({stamps[n] for n in set(numbers) - in_batch}) == 1
    assert {stamps[n] for n in in_batch} != {stamps[n] for n in set(numbers) - in_batch}


def test_the_schema_reaches_the_table_as_typed_output_metadata(sqlite_url, scorings):
    """A frame from an export with one input field fewer: the fact table follows the schema in the metadata."""
    first, _ = scorings
    lean = DatasetSchema.from_dict({**S.to_dict(), "numeric": [c for c in S.numeric if c != "edad_oferta"],
                                    "final_at_close": []})
    full, _, _ = _sql_assets(first.drop(columns=["edad_oferta"]), {}, "upsert", schema=lean)
    meta = _run(full, {"sql_io_manager": SqlIOManager(sql=SqlResource(url=sqlite_url))})
    assert DatasetSchema.from_dict(meta["dataset_schema"]) == lean
    columns = {c["name"] for c in sa.inspect(make_engine(sqlite_url)).get_columns(tables.FACT_OPPORTUNITY)}
    assert "edad_oferta" not in columns and S.id in columns


def test_a_downstream_asset_reads_the_table_back_through_the_io_manager(sqlite_url, scorings):
    """The input is the table the upstream asset's metadata names (not the asset's own name), as SQL holds it."""
    first, _ = scorings
    full, _, _ = _sql_assets(first, {}, "upsert")
    seen: dict[str, pd.DataFrame] = {}

    @dg.asset(name="reader")
    def reader(full: pd.DataFrame) -> None:
        seen["frame"] = full

    result = dg.materialize([full, reader], resources={"sql_io_manager": SqlIOManager(sql=SqlResource(url=sqlite_url))})
    assert result.success
    frame = seen["frame"].set_index(S.id).sort_index()
    pd.testing.assert_frame_equal(frame, _table(make_engine(sqlite_url)))
    assert len(frame) == len(first) and set(frame.index) == set(first[S.id])
