"""Everything Dagster loads: the ``defs`` folder, merged with the resources and the step executor.

``dg.load_from_defs_folder`` imports every module under ``salespred_assets/defs/`` and collects what each defines
at module level (assets, the external collections' AssetSpecs, checks, jobs, schedules, sensors), so a new file
there needs no edit here. It reads the project configuration, ``[tool.dg]`` in ``pyproject.toml``, from the nearest
directory above this package that has one: the checkout's root, or ``/opt/venv`` in the image (see the Dockerfile).
"""

from __future__ import annotations

import functools
import pkgutil
from pathlib import Path

import dagster as dg

import salespred_assets.defs
from salespred_assets.resources import build_resources

PACKAGE_DIR = Path(__file__).resolve().parent

# Runs (as deployed, and `salespred materialize --processes`) execute each step in a process of its own. The
# processes fork from a server that has imported the code location once, so a step starts at once instead of
# importing Dagster, pandas and scikit-learn again: about six seconds of CPU for each of some forty steps. The
# server imports this module and every module of the defs folder (found, not listed), which the loader reads.
PRELOAD = ["salespred_assets.definitions",
           *(m.name for m in pkgutil.walk_packages(salespred_assets.defs.__path__, "salespred_assets.defs.")),
           "salespred_assets.operations.warm"]  # last: builds the definitions once, before any step forks
STEP_EXECUTOR = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": PRELOAD}}}, name="step_processes")


def build_definitions(environment: str | None = None, resources: dict[str, object] | None = None) -> dg.Definitions:
    """The code location; ``resources`` replaces the environment's (tests, benchmarks)."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=PACKAGE_DIR),
        dg.Definitions(resources=resources if resources is not None else build_resources(environment),
                       executor=STEP_EXECUTOR),
    )


@functools.cache
def environment_definitions() -> dg.Definitions:
    """The code location with the environment's resources, built once per process (each step's process asks)."""
    return build_definitions()


@dg.definitions
def defs() -> dg.Definitions:
    """What ``dagster`` and ``dg`` load: workspace.yaml, [tool.dagster], the image's gRPC code server."""
    return environment_definitions()
