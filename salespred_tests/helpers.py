"""Helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import dagster as dg

from salespred_assets.core.model import SearchConfig, WinModel
from salespred_assets.core.training import fit
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.registry import model_store
from salespred_assets.resources import wire
from salespred_assets.sql.resource import SqlResource

AS_OF = dt.date(2026, 11, 1)


def train_current_model(mongo: MongoResource, *, trees: int = 30, leaf: int = 3, promote: bool = True) -> WinModel:
    """Train a small forest (fixed parameters, no search) on what MongoDB holds and make it current
    (``promote=False``: store it as a candidate only)."""
    schema = mongo.schema()
    frame = mongo.read_opportunities(schema).frame
    model = fit(frame, schema, SearchConfig.preset("fast"),
                params={"rf__n_estimators": trees, "rf__min_samples_leaf": leaf}).model
    model_store.save(mongo.db, model)
    if promote:
        model_store.set_current(mongo.db, model.version, "test")
    return model


def build_test_resources(mongo: MongoResource, redis: RedisResource, sql_url: str,
                         storage_dir: str | None = None) -> dict[str, Any]:
    """The production wiring (resources.wire) around the test servers; no storage dir: Dagster's default."""
    resources = wire(mongo, SqlResource(url=sql_url), redis, storage_dir or "")
    if not storage_dir:
        resources.pop("io_manager")
    return resources


def all_assets_and_checks() -> tuple[list, list]:
    from salespred_assets.definitions import environment_definitions

    defs = environment_definitions()
    # The folder loader lists an asset once for each module that imports it: each object once, in order.
    assets = list({id(a): a for a in defs.assets or []}.values())
    checks = list({id(c): c for c in defs.asset_checks or []}.values())
    return assets, checks


def materialize_all(resources: dict[str, Any], run_config: dict | None = None, selection: Any = None,
                    instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    from salespred_assets.defs.automation import EVERYTHING

    assets, checks = all_assets_and_checks()
    # "All" is what the full_refresh job materialises: every asset but the (partitioned) batches.
    return dg.materialize([*assets, *checks], resources=resources, run_config=run_config or {},
                          selection=selection if selection is not None else EVERYTHING, instance=instance,
                          raise_on_error=False)
