"""The stack's run launcher: each run in a process of its own, as ``DockerRunLauncher`` runs each in a container.

Dagster's ``DefaultRunLauncher`` asks the code server to start a run, which makes the run a child of the code
server: restarting the code server kills the runs in progress, and runs dequeued meanwhile land on a server that
is shutting down. In production (``DockerRunLauncher``, Helm's ``K8sRunLauncher``) each run is its own container
started with ``dagster api execute_run``, independent of the code server. This launcher does the same with a
local process (:mod:`.workers`): the command is built the same way, from the run's code origin; the process
gets the launching process's environment (the stack gives every process the same one, the code server's); its
pid, start time and host become run tags, as the container id does, so that ``terminate`` and run monitoring's
health check find it again from any process of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import dagster._check as check
from dagster import Field, IntSource, StringSource
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    ResumeRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs
from dagster._serdes import ConfigurableClass
from dagster._serdes.config_class import ConfigurableClassData

from salespred_assets.stack import workers

PID_TAG = "salespred/run_worker_pid"
START_TIME_TAG = "salespred/run_worker_start_time"  # the kernel's: tells the worker from a later reuse of its pid
HOST_TAG = "salespred/run_worker_host"
BOOT_TAG = "salespred/run_worker_boot"  # the machine's boot: a worker recorded under another one is gone
DEFAULT_STOP_TIMEOUT_S = 20


def worker_of(run: DagsterRun) -> workers.Worker | None:
    """The run's worker as its tags name it (None: never launched by this launcher)."""
    pid = run.tags.get(PID_TAG)
    if not pid:
        return None
    return workers.Worker(pid=int(pid), start_time=run.tags.get(START_TIME_TAG) or None,
                          host=run.tags.get(HOST_TAG, ""), boot=run.tags.get(BOOT_TAG, ""), run_id=run.run_id)


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run as a local process (``dagster api execute_run``) in a session of its own."""

    def __init__(self, log_dir: str, stop_timeout_seconds: int = DEFAULT_STOP_TIMEOUT_S,
                 inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        self.log_dir = Path(check.str_param(log_dir, "log_dir"))
        self.stop_timeout_seconds = check.int_param(stop_timeout_seconds, "stop_timeout_seconds")
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "log_dir": Field(StringSource, description="Where each run's output (<run_id>.log) and its worker's "
                                                       "record (<run_id>.json) go."),
            "stop_timeout_seconds": Field(IntSource, is_required=False, default_value=DEFAULT_STOP_TIMEOUT_S,
                                          description="Seconds between SIGTERM and SIGKILL when a run is "
                                                      "terminated (docker stop's timeout)."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)

    # ---- launching ----------------------------------------------------------------------------------------------
    def _launch(self, run: DagsterRun, command: list[str], label: str) -> None:
        env = {**os.environ, "DAGSTER_RUN_JOB_NAME": run.job_name}  # as DockerRunLauncher sets it
        worker = workers.spawn(command, run.run_id, self.log_dir, env, label=label)
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(worker.pid), START_TIME_TAG: worker.start_time or "",
                                                 HOST_TAG: worker.host, BOOT_TAG: worker.boot})
        self._instance.report_engine_event(
            message=f"Launching run in a new process {worker.pid} on {worker.host} "
                    f"(output: {workers.log_path(self.log_dir, run.run_id)})",
            dagster_run=run, cls=self.__class__)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        command = ExecuteRunArgs(job_origin=check.not_none(context.job_code_origin), run_id=run.run_id,
                                 instance_ref=self._instance.get_ref()).get_command_args()
        self._launch(run, list(command), "execute_run")

    @property
    def supports_resume_run(self) -> bool:
        return True

    def resume_run(self, context: ResumeRunContext) -> None:
        run = context.dagster_run
        command = ResumeRunArgs(job_origin=check.not_none(context.job_code_origin), run_id=run.run_id,
                                instance_ref=self._instance.get_ref()).get_command_args()
        self._launch(run, list(command), "resume_run")

    # ---- terminating ----------------------------------------------------------------------------------------------
    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        worker = worker_of(run)
        if worker is None or not worker.alive():
            self._instance.report_engine_event(
                message="Unable to find the run's process to send a termination request to"
                        + (f" (process {worker.pid} on {worker.host} {self._ended(run, worker)})." if worker else "."),
                dagster_run=run, cls=self.__class__)
            return False
        # The worker turns SIGTERM into an interruption and reports the run canceled itself.
        if not workers.stop(worker, self.stop_timeout_seconds):
            return False  # it ended just before: run monitoring reports how
        after = self._instance.get_run_by_id(run_id)
        if after is not None and not after.is_finished:
            # Stopped without a word (SIGKILL after the timeout): nothing is left to report it, so mark it
            # canceled now rather than after run monitoring's cancel timeout.
            self._instance.report_run_canceled(
                after, message=f"Run process {worker.pid} stopped without reporting the run's end "
                               f"(SIGTERM, then SIGKILL after {self.stop_timeout_seconds} s).")
        return True

    # ---- run monitoring -----------------------------------------------------------------------------------------
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _ended(self, run: DagsterRun, worker: workers.Worker) -> str:
        return workers.describe_exit(workers.exit_status(self.log_dir, run.run_id, worker))

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = worker_of(run)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.NOT_FOUND, msg="No run process pid tag for run.")
        if not worker.here():
            # The stack is one machine: a worker from an earlier boot is gone with it.
            return CheckRunHealthResult(
                WorkerStatus.FAILED, run_worker_id=str(worker.pid),
                msg=f"Run process {worker.pid} was started on {worker.host} before this machine last started; it "
                    "is gone.")
        if worker.alive():
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker.pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, run_worker_id=str(worker.pid),
            msg=f"Run process {worker.pid} on {worker.host} {self._ended(run, worker)} without reporting the "
                f"run's end (its output: {workers.log_path(self.log_dir, run.run_id)}).")

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs: bool | None = True) -> str | None:
        worker = worker_of(run)
        if worker is None:
            return None
        state = "running" if worker.alive() else self._ended(run, worker)
        info = f"Run process {worker.pid} on {worker.host}: {state}."
        tail = workers.log_tail(self.log_dir, run.run_id) if include_container_logs else None
        return f"{info}\nLast lines of {workers.log_path(self.log_dir, run.run_id)}:\n{tail}" if tail else info
