"""The benchmark stages, by family (data, model, pipeline, app, reporting, stack). Each compares the project's code path
with the fastest plain use of the same database or library, measured side by side in the same run (see
BENCHMARKS.md for the figures). ``STAGES`` is the registry, in the order the suite runs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from salespred_assets.bench.harness import StageResult
from salespred_assets.bench.stages.app import stage_app
from salespred_assets.bench.stages.common import SCALES, Scale, Servers
from salespred_assets.bench.stages.data import stage_extract, stage_redis, stage_seed, stage_sql
from salespred_assets.bench.stages.model import stage_single_row, stage_training
from salespred_assets.bench.stages.pipeline import stage_incremental, stage_pipeline
from salespred_assets.bench.stages.reporting import stage_dashboard
from salespred_assets.bench.stages.stack import stage_stack

__all__ = ["SCALES", "STAGES", "Scale", "Servers"]

STAGES: dict[str, Callable[[Servers, Scale, dict[str, Any]], StageResult]] = {
    "seed": stage_seed,
    "extract": stage_extract,
    "sql": stage_sql,
    "redis": stage_redis,
    "training": stage_training,
    "single_row": stage_single_row,
    "full_refresh": stage_pipeline,
    "incremental": stage_incremental,
    "app": stage_app,
    "dashboard": stage_dashboard,
    "stack": stage_stack,
}
