"""The stack's run launcher (salespred_assets/stack/launcher.py, workers.py) on a real Dagster instance: each run a
process of its own (``dagster api execute_run``), found again by its tags for termination and health checks. The
runs are this module's job, launched on a temporary SQLite instance; the stack itself is in test_stack_faults.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from salespred_assets.stack import processes, workers
from salespred_assets.stack.launcher import HOST_TAG, PID_TAG, START_TIME_TAG, ProcessRunLauncher, worker_of
from salespred_tests.stack_fixtures import wait_until


@dg.op(config_schema={"release": str})
def wait_for_release(context) -> None:
    """Holds the run in progress until the test creates the file (the test decides when it ends)."""
    release = Path(context.op_config["release"])
    while not release.exists():
        time.sleep(0.05)


@dg.job(executor_def=dg.in_process_executor)
def held_job() -> None:
    wait_for_release()


@pytest.fixture
def instance(tmp_path) -> Iterator[Any]:
    launcher = {"module": "salespred_assets.stack.launcher", "class": "ProcessRunLauncher",
                "config": {"log_dir": str(tmp_path / "runs"), "stop_timeout_seconds": 10}}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as inst:
        yield inst


def _origin() -> Any:
    """This module's job, to be launched with this Python (as the stack's code server asks, with
    ``--use-python-environment-entry-point``), not whichever ``dagster`` is on the PATH."""
    origin = dg.reconstructable(held_job).get_python_origin()
    return origin._replace(repository_origin=origin.repository_origin._replace(
        entry_point=[sys.executable, "-m", "dagster"]))


def _launch(instance, release: Path) -> str:
    run = instance.create_run_for_job(held_job, run_config={"ops": {"wait_for_release": {"config": {
        "release": str(release)}}}}, job_code_origin=_origin())
    instance.launch_run(run.run_id, workspace=None)
    return run.run_id


def _status(instance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def _running(instance, run_id: str) -> bool:
    return _status(instance, run_id) == dg.DagsterRunStatus.STARTED


def test_the_instance_builds_the_launcher_from_its_config(instance, tmp_path):
    launcher = instance.run_launcher
    assert isinstance(launcher, ProcessRunLauncher)
    assert launcher.log_dir == tmp_path / "runs" and launcher.stop_timeout_seconds == 10
    assert launcher.supports_check_run_worker_health and launcher.supports_resume_run


def test_a_run_is_a_process_of_its_own_that_runs_to_success_and_is_reaped(instance, tmp_path):
    from dagster._core.launcher import WorkerStatus

    run_id = _launch(instance, tmp_path / "release")
    run = instance.get_run_by_id(run_id)
    worker = worker_of(run)
    assert worker is not None and run.tags[HOST_TAG] and run.tags[START_TIME_TAG]
    assert run.tags[PID_TAG] == str(worker.pid)
    # Its own session and process group (no other group's end takes it along); this process is its parent.
    assert os.getsid(worker.pid) == os.getpgid(worker.pid) == worker.pid
    assert wait_until(lambda: _running(instance, run_id), timeout=120), workers.log_tail(tmp_path / "runs", run_id)
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING

    (tmp_path / "release").touch()
    assert wait_until(lambda: instance.get_run_by_id(run_id).is_finished, timeout=120)
    assert _status(instance, run_id) == dg.DagsterRunStatus.SUCCESS
    # Reaped by the launcher's thread (no zombie left), its exit status in the record beside its log.
    assert wait_until(lambda: workers.exit_status(tmp_path / "runs", run_id, worker) is not None, timeout=60)
    assert workers.exit_status(tmp_path / "runs", run_id, worker) == 0
    with pytest.raises(ChildProcessError):  # this process started it, and nothing is left to reap
        os.waitpid(worker.pid, os.WNOHANG)
    assert "wait_for_release" in (tmp_path / "runs" / f"{run_id}.log").read_text()
    events = {e.dagster_event_type for e in instance.all_logs(run_id)}
    assert dg.DagsterEventType.RUN_SUCCESS in events


def test_terminate_stops_the_process_group_and_the_run_ends_canceled(instance, tmp_path):
    run_id = _launch(instance, tmp_path / "never")
    assert wait_until(lambda: _running(instance, run_id), timeout=120), workers.log_tail(tmp_path / "runs", run_id)
    worker = worker_of(instance.get_run_by_id(run_id))
    assert worker is not None and worker.alive()

    assert instance.run_launcher.terminate(run_id) is True
    assert not worker.alive()
    assert _status(instance, run_id) == dg.DagsterRunStatus.CANCELED
    # The worker itself recorded the cancellation (SIGTERM to it alone: its steps are interrupted in order),
    # not the launcher's fallback for a worker killed without a word.
    messages = [e.message or "" for e in instance.all_logs(run_id)]
    assert not any("stopped without reporting" in m for m in messages), messages[-5:]
    # A finished run is not terminated again.
    assert instance.run_launcher.terminate(run_id) is False


def test_a_killed_run_process_fails_the_health_check_with_its_signal(instance, tmp_path):
    from dagster._core.launcher import WorkerStatus

    run_id = _launch(instance, tmp_path / "never")
    assert wait_until(lambda: _running(instance, run_id), timeout=120), workers.log_tail(tmp_path / "runs", run_id)
    worker = worker_of(instance.get_run_by_id(run_id))
    assert worker is not None
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_until(lambda: workers.exit_status(tmp_path / "runs", run_id, worker) is not None, timeout=60)

    result = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
    assert result.status == WorkerStatus.FAILED
    assert f"Run process {worker.pid}" in result.msg and "terminated by signal 9 (SIGKILL)" in result.msg
    info = instance.run_launcher.get_run_worker_debug_info(instance.get_run_by_id(run_id))
    assert info is not None and "terminated by signal 9 (SIGKILL)" in info
    # Nothing is left to terminate: the run is marked canceling, and the call says no process was stopped.
    assert instance.run_launcher.terminate(run_id) is False


def test_a_run_without_a_worker_tag_is_not_found(instance):
    from dagster._core.launcher import WorkerStatus

    run = instance.create_run_for_job(held_job, run_config={"ops": {"wait_for_release": {"config": {
        "release": "/nonexistent"}}}})
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.NOT_FOUND


# ---- workers, without Dagster ----------------------------------------------------------------------------------------
SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_describe_exit():
    assert workers.describe_exit(0) == "exited with code 0"
    assert workers.describe_exit(3) == "exited with code 3"
    assert workers.describe_exit(-9) == "was terminated by signal 9 (SIGKILL)"
    assert workers.describe_exit(-15) == "was terminated by signal 15 (SIGTERM)"
    assert "unknown" in workers.describe_exit(None)


def test_what_a_killed_worker_leaves_behind_is_killed_with_it(tmp_path):
    """A run worker's step processes outlive it when it is SIGKILLed (a container's end would take them along):
    once it has exited, its reaper kills its whole process group."""
    directory = tmp_path / "runs"
    with_child = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    worker = workers.spawn([*SLEEP[:2], with_child], "run-k", directory, dict(os.environ))
    assert wait_until(lambda: len(processes.group_members(worker.pid)) == 2, timeout=30)
    os.kill(worker.pid, signal.SIGKILL)
    assert wait_until(lambda: not processes._group_exists(worker.pid), timeout=30), processes.group_members(worker.pid)
    assert workers.exit_status(directory, "run-k", worker) == -signal.SIGKILL


def test_a_group_whose_leader_ended_is_signalled_only_if_its_members_carry_the_marker():
    """The number of a group whose leader has ended may be someone else's by now: without the marker in a
    member's environment, it is left alone."""
    script = "sleep 120 & exec sleep 0.2"
    for marked in (False, True):
        env = {**os.environ, processes.MARKER_VARIABLE: "ours"} if marked else dict(os.environ)
        leader = subprocess.Popen(["sh", "-c", script], start_new_session=True, env=env)
        started = processes.start_time(leader.pid)
        leader.wait()  # the leader is gone; its background member lives on in the group
        entry = {"pid": leader.pid, "pgid": leader.pid, "start_time": started, "marker": "ours"}
        try:
            assert processes._group_exists(leader.pid)
            assert processes.stop_groups([entry], timeout_s=1) == int(marked)
            assert processes._group_exists(leader.pid) is not marked
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGKILL)


def test_stop_all_stops_the_workers_in_progress_and_nothing_else(tmp_path):
    directory = tmp_path / "runs"
    first = workers.spawn(SLEEP, "run-a", directory, dict(os.environ))
    with_child = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    second = workers.spawn([*SLEEP[:2], with_child], "run-b", directory, dict(os.environ))
    done = workers.spawn([sys.executable, "-c", "raise SystemExit(3)"], "run-c", directory, dict(os.environ))
    assert wait_until(lambda: workers.exit_status(directory, "run-c", done) is not None, timeout=60)
    assert workers.exit_status(directory, "run-c", done) == 3
    # A record whose number another process has taken since (after a reboot) names someone else's group.
    other = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        workers._write(workers.record_path(directory, "run-stale"),
                       {"run_id": "run-stale", "pid": other.pid, "pgid": other.pid, "host": first.host,
                        "start_time": str(int(processes.start_time(other.pid) or 0) + 10**6), "returncode": None})
        assert first.alive() and second.alive()

        assert workers.stop_all(directory, timeout_s=10) == 2
        assert not first.alive() and not second.alive()
        assert not processes._group_exists(second.pid)  # its child too: the whole group
        assert other.poll() is None
        assert not list(directory.glob("*.json"))
        assert workers.stop_all(directory, timeout_s=10) == 0
    finally:
        other.kill()
        other.wait()
