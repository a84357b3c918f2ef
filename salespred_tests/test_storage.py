"""Intermediate values under a storage URL (salespred_assets/storage/): a real S3-compatible server (moto's,
started by the fixture) and real directories.

Part of the asset graph runs with its intermediates in a bucket, and what the bucket holds is read back as
Parquet with pyarrow; a partition's write replaces only its object; a directory's writes are atomic; every bad
setting fails before anything is written, naming the URL (masked) and what to change.
"""

import importlib.util
import io
import os

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from salespred_assets import settings
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.operations import loading
from salespred_assets.resources import storage_setting
from salespred_assets.sql import tables, writer
from salespred_assets.storage.io_manager import FrameIOManager
from salespred_assets.storage.location import StorageError, parse
from salespred_tests.conftest import free_port
from salespred_tests.helpers import AS_OF, all_assets_and_checks, build_test_resources, train_current_model
from salespred_tests.storage_fixtures import *  # noqa: F403 - the fixtures s3_server, s3_storage_url (its __all__)
from salespred_tests.storage_fixtures import two_process_job

pytestmark = pytest.mark.integration
PARTS = dg.StaticPartitionsDefinition(["b1", "b2"])
GRAPH_PART = ["raw_opportunities", "sellers", "opportunity_features", "opportunity_predictions", "fact_opportunity"]


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """Every message in the chain of causes of the run's errors (a failed step, or a resource that failed to
    start)."""
    messages = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            messages.append(error.message)
            error = error.cause
    assert messages, "the run failed without an error"
    return " <- ".join(messages)


def _objects(fs, url: str) -> dict[str, bytes]:
    """Every object under ``url``, by its key relative to it."""
    root = url.removeprefix("s3://")
    return {key[len(root) + 1:]: fs.cat_file(key) for key in fs.find(root)}


def test_part_of_the_graph_runs_with_its_intermediates_in_an_s3_bucket(mongo, redis_resource, sqlite_url, s3_server,
                                                                       s3_storage_url):
    loading.seed_synthetic(mongo, 400, seed=11, as_of=AS_OF)
    loading.ensure_demo_sellers(mongo)
    train_current_model(mongo)
    assets, checks = all_assets_and_checks()
    resources = build_test_resources(mongo, redis_resource, sqlite_url, s3_storage_url)
    result = dg.materialize([*assets, *checks], resources=resources, raise_on_error=False,
                            selection=dg.AssetSelection.assets(*GRAPH_PART).without_checks())
    assert result.success, _failure(result)

    objects = _objects(s3_server.filesystem(), s3_storage_url)
    assert set(objects) == {f"{name}.parquet" for name in GRAPH_PART if name != "fact_opportunity"}
    frames = {name.removesuffix(".parquet"): pq.read_table(io.BytesIO(data)).to_pandas()
              for name, data in objects.items()}
    assert all(data[:4] == data[-4:] == b"PAR1" for data in objects.values())
    assert len(frames["raw_opportunities"]) == len(frames["opportunity_predictions"]) == 400
    assert len(frames["sellers"]) == 5
    assert not any("pass" in c or "hash" in c for c in frames["sellers"].columns)
    # The next step read them from the bucket: the fact table holds what the stored predictions hold.
    engine = sa.create_engine(sqlite_url)
    fact = writer.read_table(engine, tables.FACT_OPPORTUNITY)
    engine.dispose()
    assert sorted(fact[DEFAULT_SCHEMA.id]) == sorted(frames["opportunity_predictions"][DEFAULT_SCHEMA.id])
    metadata = result.asset_materializations_for_node("opportunity_features")[0].metadata
    assert metadata["storage_format"].value == "parquet"
    assert metadata["path"].value == f"{s3_storage_url}/opportunity_features.parquet"
    assert metadata["stored_bytes"].value == len(objects["opportunity_features.parquet"])


def _partitioned(batches: dict[str, pd.DataFrame]):
    @dg.asset(partitions_def=PARTS)
    def batch(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return batches[context.partition_key]

    @dg.asset
    def every_batch(batch: dict[str, pd.DataFrame]) -> pd.DataFrame:
        return pd.concat([batch[key].assign(batch=key) for key in sorted(batch)], ignore_index=True)

    return batch, every_batch


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_a_partition_write_replaces_only_its_object(where, request, tmp_path):
    url = request.getfixturevalue("s3_storage_url") if where == "s3" else (tmp_path / "storage").as_uri()
    batches = {"b1": pd.DataFrame({"id": [1, 2], "score": [0.1, 0.2]}),
               "b2": pd.DataFrame({"id": [3], "score": [0.3]})}
    batch, every_batch = _partitioned(batches)
    resources = {"io_manager": FrameIOManager(url=url)}
    store = FrameIOManager(url=url).create_io_manager(dg.build_init_resource_context())
    for key in ("b1", "b2"):
        assert dg.materialize([batch], partition_key=key, resources=resources).success
    b2_before = store.fs.info(f"{store.location.url}/batch/b2.parquet")

    batches["b1"] = pd.DataFrame({"id": [1, 2, 4], "score": [0.5, 0.6, 0.7]})  # b1 again, rescored
    assert dg.materialize([batch], partition_key="b1", resources=resources).success
    result = dg.materialize([batch, every_batch], selection=[every_batch], resources=resources)
    combined = result.output_for_node("every_batch")
    assert combined["id"].tolist() == [1, 2, 4, 3]
    assert combined.loc[combined["batch"] == "b1", "score"].tolist() == [0.5, 0.6, 0.7]
    assert combined.loc[combined["batch"] == "b2", "score"].tolist() == [0.3]
    b2_after = store.fs.info(f"{store.location.url}/batch/b2.parquet")
    assert b2_after.get("ETag", b2_after.get("mtime")) == b2_before.get("ETag", b2_before.get("mtime"))
    assert {p.rsplit("/", 1)[-1] for p in store.fs.find(f"{store.location.url}/batch")} == {"b1.parquet",
                                                                                           "b2.parquet"}


def test_a_directory_round_trip_and_an_atomic_replace(tmp_path):
    """Frames as Parquet, other values pickled; a write that fails keeps the previous value, with no leftovers."""
    values: dict[str, object] = {"frame": pd.DataFrame({"when": pd.to_datetime(["2026-01-02"], utc=True),
                                                        "text": ["ü"], "n": pd.array([None], dtype="Int64")}),
                                 "summary": {"rows": 1, "model": "v1"}}

    @dg.asset
    def frame() -> pd.DataFrame:
        return values["frame"]  # type: ignore[return-value]

    @dg.asset
    def summary(frame: pd.DataFrame) -> dict:
        assert frame.equals(values["frame"])  # read back as written
        return values["summary"]  # type: ignore[return-value]

    storage = tmp_path / "storage"
    for url in (str(storage), storage.as_uri()):  # a plain path and a file:// URL are the same place
        result = dg.materialize([frame, summary], resources={"io_manager": FrameIOManager(url=url)})
        assert result.success
    assert sorted(p.name for p in storage.iterdir()) == ["frame.parquet", "summary.pkl"]
    pd.testing.assert_frame_equal(pd.read_parquet(storage / "frame.parquet"), values["frame"])  # type: ignore[arg-type]

    before = (storage / "summary.pkl").read_bytes()
    values["summary"] = {"model": lambda: None}  # cannot be pickled: the write fails before touching the file
    failed = dg.materialize([frame, summary], resources={"io_manager": FrameIOManager(url=str(storage))},
                            raise_on_error=False)
    assert not failed.success
    assert "cannot be stored between steps" in _failure(failed)
    assert (storage / "summary.pkl").read_bytes() == before
    assert sorted(p.name for p in storage.iterdir()) == ["frame.parquet", "summary.pkl"]  # no temporary file left


def test_a_frame_parquet_cannot_hold_is_pickled_and_says_why(tmp_path):
    mixed = pd.DataFrame({"code": [1, "A"]})  # an object column of mixed types

    @dg.asset
    def odd() -> pd.DataFrame:
        return mixed

    storage = tmp_path / "storage"
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([odd], resources={"io_manager": FrameIOManager(url=str(storage))}, instance=instance)
        assert result.success
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert [p.name for p in storage.iterdir()] == ["odd.pkl"]
    assert result.asset_materializations_for_node("odd")[0].metadata["storage_format"].value == "pickle"
    assert any("stored as a pickle, not Parquet, because Parquet cannot hold it" in m for m in logged)


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_an_input_that_names_columns_reads_only_those(where, request, tmp_path):
    """AssetIn(metadata={"columns": [...]}): a check reading two columns of a large frame gets only those, from
    Parquet or from a pickled frame alike."""
    url = request.getfixturevalue("s3_storage_url") if where == "s3" else str(tmp_path / "storage")
    seen: dict[str, list[str]] = {}

    @dg.asset
    def wide() -> pd.DataFrame:
        return pd.DataFrame({"id": ["a", "b", "c"], "score": [0.1, 0.2, 0.3], "note": ["x", "y", "z"]})

    @dg.asset
    def mixed() -> pd.DataFrame:
        return pd.DataFrame({"id": ["a", "b"], "code": [1, "A"]})  # pickled: Parquet cannot hold it

    @dg.asset(ins={"wide": dg.AssetIn("wide", metadata={"columns": ["score", "id"]}),
                   "mixed": dg.AssetIn("mixed", metadata={"columns": ["id"]})})
    def narrow(wide: pd.DataFrame, mixed: pd.DataFrame) -> int:
        seen["wide"], seen["mixed"] = list(wide.columns), list(mixed.columns)
        assert wide["score"].tolist() == [0.1, 0.2, 0.3]
        return len(wide) + len(mixed)

    result = dg.materialize([wide, mixed, narrow], resources={"io_manager": FrameIOManager(url=url)})
    assert result.success and result.output_for_node("narrow") == 5
    assert seen == {"wide": ["score", "id"], "mixed": ["id"]}


def test_whole_numbers_with_a_none_come_back_as_whole_numbers(tmp_path):
    """An object column of ints and None: Parquet would give 3.0 back for 3, so it is pickled, saying why; a
    nullable Int64 column stays Parquet."""
    odd = pd.DataFrame({"count": pd.Series([1, None, 3], dtype=object), "n": pd.array([1, None, 3], dtype="Int64")})

    @dg.asset
    def counts() -> pd.DataFrame:
        return odd

    @dg.asset
    def nullable() -> pd.DataFrame:
        return odd[["n"]]

    @dg.asset
    def read_back(counts: pd.DataFrame, nullable: pd.DataFrame) -> list:
        return [counts["count"].tolist(), str(nullable["n"].dtype)]

    storage = tmp_path / "storage"
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([counts, nullable, read_back],
                                resources={"io_manager": FrameIOManager(url=str(storage))}, instance=instance)
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    values, dtype = result.output_for_node("read_back")
    assert values == [1, None, 3] and all(type(v) is int for v in values if v is not None)
    assert dtype == "Int64"
    assert sorted(p.name for p in storage.iterdir()) == ["counts.pkl", "nullable.parquet", "read_back.pkl"]
    assert any("['count'] hold whole numbers and None, which Parquet gives back as floats" in m for m in logged)


@pytest.mark.parametrize("where", ["s3", "directory"])
def test_a_damaged_value_or_a_missing_column_is_named_as_such_not_as_unreachable(where, request, tmp_path):
    url = request.getfixturevalue("s3_storage_url") if where == "s3" else str(tmp_path / "storage")
    resources = {"io_manager": FrameIOManager(url=url, origin=settings.ENV_STORAGE_URL)}

    @dg.asset
    def wide() -> pd.DataFrame:
        return pd.DataFrame({"id": ["a", "b"], "score": [0.1, 0.2]})

    @dg.asset(ins={"wide": dg.AssetIn("wide", metadata={"columns": ["id", "grade"]})})
    def asks_too_much(wide: pd.DataFrame) -> int:
        return len(wide)

    @dg.asset
    def reads_all(wide: pd.DataFrame) -> int:
        return len(wide)

    assert dg.materialize([wide], resources=resources).success
    lacking = dg.materialize([wide, asks_too_much], selection=[asks_too_much], resources=resources,
                             raise_on_error=False)
    message = _failure(lacking)
    assert "cannot be read as parquet" in message and "no column 'grade' that the input asks for" in message
    assert "unreachable" not in message and "could not read" not in message

    store = FrameIOManager(url=url).create_io_manager(dg.build_init_resource_context())
    store.fs.pipe_file(f"{store.location.url}/wide.parquet".removeprefix("file://"), b"not parquet at all")
    damaged = dg.materialize([wide, reads_all], selection=[reads_all], resources=resources, raise_on_error=False)
    message = _failure(damaged)
    assert "wide.parquet cannot be read as parquet: ArrowInvalid" in message
    assert "unreachable" not in message and "could not read" not in message
    assert "damaged or was written by something else: materialise the upstream asset again" in message
    assert f"intermediate storage {store.location.masked} (SALESPRED_STORAGE_URL): " in message


def test_a_truncated_file_or_a_pickle_of_a_class_since_removed_is_named_as_undecodable(tmp_path, monkeypatch):
    import pickle
    import sys
    import types

    storage = tmp_path / "storage"
    resources = {"io_manager": FrameIOManager(url=str(storage))}

    @dg.asset
    def frame() -> pd.DataFrame:
        return pd.DataFrame({"x": range(1000)})

    @dg.asset
    def thing() -> object:
        return None

    @dg.asset
    def reads(frame: pd.DataFrame, thing: object) -> int:
        return len(frame)

    assert dg.materialize([frame, thing], resources=resources).success
    whole = (storage / "frame.parquet").read_bytes()
    (storage / "frame.parquet").write_bytes(whole[:len(whole) // 3] + whole[-(len(whole) // 3):])  # a middle lost
    message = _failure(dg.materialize([frame, thing, reads], selection=[reads], resources=resources,
                                      raise_on_error=False))
    assert "frame.parquet cannot be read as parquet" in message and "damaged" in message, message
    assert "unreachable" not in message and "could not read" not in message

    (storage / "frame.parquet").write_bytes(whole)
    gone = types.ModuleType("salespred_gone_module")
    exec("class Thing:\n    pass", gone.__dict__)
    gone.Thing.__module__ = "salespred_gone_module"
    monkeypatch.setitem(sys.modules, "salespred_gone_module", gone)
    (storage / "thing.pkl").write_bytes(pickle.dumps(gone.Thing()))
    monkeypatch.delitem(sys.modules, "salespred_gone_module")  # the class's module is gone since
    message = _failure(dg.materialize([frame, thing, reads], selection=[reads], resources=resources,
                                      raise_on_error=False))
    assert "thing.pkl cannot be read as pickle: ModuleNotFoundError" in message, message
    assert "unreachable" not in message


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://host/dir", "the scheme ftp:// is not supported"),
    ("s3://", "name a bucket"),
    ("file://server/share", "file:///dir (three slashes)"),
    ("s3://AKIAEXAMPLE:hunter2@bucket/runs", "credentials do not belong in the URL"),  # scan-secrets: allow
    ("   ", "is empty"),
])
def test_a_bad_url_is_refused_naming_what_to_fix(url, says):
    with pytest.raises(StorageError, match="SALESPRED_STORAGE_URL") as caught:
        parse(url, settings.ENV_STORAGE_URL)
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_missing_driver_names_the_package_to_install():
    missing = [(scheme, package) for scheme, package in (("gs", "gcsfs"), ("az", "adlfs"))
               if importlib.util.find_spec(package) is None]
    if not missing:
        pytest.skip("gcsfs and adlfs are both installed (the cloud extra): no driver is missing here")
    scheme, package = missing[0]
    with pytest.raises(StorageError, match=rf"{scheme}:// driver is not installed: pip install {package} "
                                           r"\(or salespred\[cloud\]\)"):
        parse(f"{scheme}://bucket/runs", settings.ENV_STORAGE_URL)


def _run_fails(url: str) -> str:
    @dg.asset
    def anything() -> pd.DataFrame:
        return pd.DataFrame({"x": [1]})

    io_manager = FrameIOManager(url=url, origin=settings.ENV_STORAGE_URL)
    result = dg.materialize([anything], resources={"io_manager": io_manager}, raise_on_error=False)
    assert not result.success
    return _failure(result)


def test_a_missing_bucket_fails_the_step_naming_it(s3_storage_url):
    url = s3_storage_url.replace("s3://salespred-", "s3://nobucket-")
    message = _run_fails(url)
    assert f"intermediate storage {url} (SALESPRED_STORAGE_URL)" in message and "is unreachable" in message
    assert "make the bucket 'nobucket-" in message


def test_an_unreachable_endpoint_fails_the_step_naming_it(s3_storage_url, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("SALESPRED_STORAGE_ENDPOINT_URL", endpoint)
    message = _run_fails(s3_storage_url)
    assert f"intermediate storage {s3_storage_url} (SALESPRED_STORAGE_URL) through {endpoint} is unreachable" in message
    assert "check the network, the endpoint (SALESPRED_STORAGE_ENDPOINT_URL" in message


def test_the_settings_the_url_wins_and_a_directory_takes_no_url(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.ENV_STORAGE_URL, raising=False)
    monkeypatch.setenv(settings.ENV_STORAGE_DIR, str(tmp_path))
    assert storage_setting() == dg.EnvVar(settings.ENV_STORAGE_DIR)
    monkeypatch.setenv(settings.ENV_STORAGE_URL, "s3://bucket/runs")
    assert storage_setting() == dg.EnvVar(settings.ENV_STORAGE_URL)  # documented: the URL wins
    monkeypatch.setenv(settings.ENV_STORAGE_URL, "gopher://bucket/runs")
    with pytest.raises(StorageError, match="SALESPRED_STORAGE_URL gopher://bucket/runs: the scheme"):
        storage_setting()  # the code location refuses to load
    monkeypatch.delenv(settings.ENV_STORAGE_URL)
    monkeypatch.setenv(settings.ENV_STORAGE_DIR, "s3://bucket/runs")
    with pytest.raises(StorageError, match="SALESPRED_STORAGE_DIR takes a directory, not a URL"):
        storage_setting()
    monkeypatch.delenv(settings.ENV_STORAGE_DIR)
    assert storage_setting() == (settings.home() / "storage").as_uri()



def test_steps_in_separate_processes_hand_frames_over_through_the_bucket(s3_server, s3_storage_url, monkeypatch):
    monkeypatch.setenv(settings.ENV_STORAGE_URL, s3_storage_url)  # the step processes inherit the environment
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(two_process_job), instance=instance, raise_on_error=False)
        assert result.success, _failure(result)
    data = s3_server.filesystem().cat_file(f"{s3_storage_url.removeprefix('s3://')}/total.parquet")
    [row] = pq.read_table(io.BytesIO(data)).to_pylist()
    assert row["total"] == 6 and row["writer_pid"] != row["reader_pid"] != os.getpid()
