"""Materialise the asset graph from the command line, recorded in the Dagster instance the UI shows."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from importlib import resources as pkg_resources
from typing import Any

from salespred_assets import settings


def prepare_dagster_home() -> str:
    """DAGSTER_HOME under SALESPRED_HOME (unless set), with the local instance config in place."""
    home = os.environ.get("DAGSTER_HOME") or str(settings.dagster_home())
    os.makedirs(home, exist_ok=True)
    os.environ["DAGSTER_HOME"] = home
    target = os.path.join(home, "dagster.yaml")
    if not os.path.exists(target):
        template = pkg_resources.files("salespred_assets") / "instance" / "dagster.local.yaml"
        with pkg_resources.as_file(template) as src:
            shutil.copyfile(src, target)
    return home


@dataclass
class RunOutcome:
    success: bool
    run_id: str
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.success and not self.failed_checks and not self.failed_steps


def job_by_name(name: str) -> Any:
    """The job ``name`` of the code location: what each step's process rebuilds in a multiprocess run."""
    from salespred_assets.definitions import environment_definitions

    return environment_definitions().resolve_job_def(name)


def materialize(job_name: str = "full_refresh", run_config: dict | None = None, ephemeral: bool = False,
                resources: dict[str, Any] | None = None, partition_key: str | None = None,
                instance: Any = None, processes: bool = False) -> RunOutcome:
    """Run a job. ``resources`` replaces the environment's; ``partition_key`` runs one partition (a batch of
    ``score_new_opportunities``: the key is registered as a partition first).

    In-process by default (quickest for the demo's data). ``processes=True`` runs it as a deployment does:
    Dagster's multiprocess executor, each step in a process of its own, so memory is held per step and
    returned to the system after it; this needs the persistent instance and the environment's resources.
    """
    import dagster as dg

    from salespred_assets.definitions import build_definitions, environment_definitions

    if processes and (ephemeral or resources is not None or partition_key is not None):
        raise ValueError("a multiprocess run needs the persistent instance, the environment's resources, no partition")
    if not ephemeral and instance is None:
        prepare_dagster_home()
    if instance is None:
        instance = dg.DagsterInstance.ephemeral() if ephemeral else dg.DagsterInstance.get()
    if processes:
        job = dg.build_reconstructable_job(__name__, "job_by_name", reconstructable_args=(job_name,))
        return _outcome(dg.execute_job(job, instance=instance, run_config=run_config or {}, raise_on_error=False))
    definitions = environment_definitions() if resources is None else build_definitions(resources=resources)
    job_def = definitions.resolve_job_def(job_name)
    if partition_key is not None:
        partitions = job_def.partitions_def
        if isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name \
                and not instance.has_dynamic_partition(partitions.name, partition_key):
            instance.add_dynamic_partitions(partitions.name, [partition_key])
    result = job_def.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config or {},
                                        partition_key=partition_key)
    return _outcome(result)


def _outcome(result: Any) -> RunOutcome:
    outcome = RunOutcome(success=result.success, run_id=result.run_id)
    for event in result.all_events:
        if event.is_step_failure:
            outcome.failed_steps.append(event.step_key or "?")
    for evaluation in result.get_asset_check_evaluations():
        name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        if not evaluation.passed:
            sev = getattr(evaluation.severity, "value", str(evaluation.severity))
            (outcome.warned_checks if sev == "WARN" else outcome.failed_checks).append(name)
    for mat in result.get_asset_materialization_events():
        m = mat.event_specific_data.materialization
        outcome.metadata[m.asset_key.to_user_string()] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    return outcome
