"""Faults and fan-out on the running stack (``slow``): a backfill within the run queue's limits, a run process
SIGKILLed mid-step, and a code-server restart during runs, each driven as an operator's script would drive it
(the webserver's GraphQL API, ``salespred`` commands), with the run storage read to check what happened.

The tests run in order on one stack (a module fixture): the first full refresh is the single-run rescore that
the fanned-out one is compared with, row for row. The run limits are the deployed ones (``deploy/dagster.yaml``,
which the stack's instance keeps as it is): the stack has no override for them, nor for run monitoring.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from salespred_assets.mongo.resource import MongoResource
from salespred_assets.operations import loading
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.stack.client import BACKFILL_TAG, PARTITION_TAG
from salespred_assets.stack.launcher import PID_TAG
from salespred_tests.helpers import AS_OF
from salespred_tests.stack_fixtures import stack_instance, wait_until

# A backfill of 20 runs took about 9 minutes on 2 busy cores; each wait below has its own bound.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

OPPORTUNITIES = 2000
BATCHES = 20
ROWS_PER_BATCH = OPPORTUNITIES // BATCHES
RESTART_BATCHES = 10
JOB = "score_new_opportunities"
PARENT_TAG = "dagster/parent_run_id"
WILL_RETRY_TAG = "dagster/will_retry"
# Dagster's answer to a launch on a code server that is shutting down (DefaultRunLauncher, which the stack no
# longer uses): the run fails, and is not retried. Counted in case it ever comes back.
LAUNCH_ON_SHUTDOWN = "Tried to start a run on a server after telling it to shut down"
# The daemon's answer when a failed run's retry cannot be planned (the code server is down): it gives up.
RETRY_FAILED = "Failed to retry run"
# The daemon's answer when a launch fails for another reason than an unreachable code server: the run is failed.
DROPPED = "dropping it from the queue"
SAMPLE_S = 0.2
# What differs between two scorings of the same data: when they ran.
VOLATILE = {"scored_at"}


# ---- the stack's instance and what the runs wrote ---------------------------------------------------------------
@pytest.fixture(scope="module")
def instance(stack) -> Iterator[Any]:
    with stack_instance(stack) as inst:
        yield inst


@dataclass
class Snapshot:
    """fact_opportunity and the live cache, each row without its scoring time; and the scoring times."""

    fact: dict[str, dict[str, Any]]
    cache: dict[str, dict[str, Any] | None]
    scored_at: dict[str, Any]
    history_rows: int
    history_distinct: int

    def days(self) -> set[Any]:
        """The UTC days the rows were scored as of (features count days: two days' scorings differ)."""
        return {at.astimezone(dt.UTC).date() for at in self.scored_at.values()}


def _snapshot(stack) -> Snapshot:
    engine = sa.create_engine(stack.sql_url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM fact_opportunity"))]
            history = conn.execute(sa.text(
                "SELECT count(*), count(DISTINCT (opportunity_id, model_version, scored_at)) "
                "FROM fact_prediction_history")).one()
    finally:
        engine.dispose()
    fact = {r["numero_opportunidad"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}
    ids = sorted(fact)
    raw = RedisResource(url=stack.redis_url).cache().get_many(ids)
    cache = {n: ({k: v for k, v in json.loads(value).items() if k not in VOLATILE} if value else None)
             for n, value in zip(ids, raw, strict=True)}
    return Snapshot(fact=fact, cache=cache, scored_at={r["numero_opportunidad"]: r["scored_at"] for r in rows},
                    history_rows=int(history[0]), history_distinct=int(history[1]))


def _differences(expected: dict[str, Any], actual: dict[str, Any], limit: int = 3) -> list[str]:
    """The first few keys whose values differ (or are missing on one side), for a failure message."""
    out = []
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key) != actual.get(key):
            out.append(f"{key}: expected {expected.get(key)!r}, got {actual.get(key)!r}")
            if len(out) == limit:
                break
    return out


@pytest.fixture(scope="module")
def single_run(stack) -> Snapshot:
    """The single-run rescore: a full refresh through the queue trains, promotes and scores every opportunity."""
    mongo = MongoResource(uri=stack.mongo_uri, database=stack.database)
    loading.seed_synthetic(mongo, OPPORTUNITIES, seed=18, as_of=AS_OF)
    run_id = stack.submit("full_refresh")
    assert stack.wait_run(run_id, timeout=1200) == "SUCCESS", stack.log_tails()
    snap = _snapshot(stack)
    assert len(snap.fact) == OPPORTUNITIES and all(v is not None for v in snap.cache.values())
    return snap


def _reference(stack, single_run: Snapshot, after: Snapshot) -> Snapshot:
    """The single-run rescore to compare ``after`` with: the first one, unless UTC midnight fell between them
    (scorings of two days differ by design); then a single ``rescore`` run now, which becomes the reference."""
    if after.days() <= single_run.days():
        return single_run
    if len(after.days()) > 1:
        pytest.skip(f"the runs scored across UTC midnight ({sorted(after.days())}): no single run scores so")
    run_id = stack.submit("rescore")
    assert stack.wait_run(run_id, timeout=1200) == "SUCCESS", stack.log_tails()
    fresh = _snapshot(stack)
    assert fresh.days() == after.days(), "UTC midnight fell between the scorings twice"
    single_run.fact, single_run.cache, single_run.scored_at = fresh.fact, fresh.cache, fresh.scored_at
    return single_run


def _limits(stack) -> dict[str, int]:
    """The run queue's limits as the stack's generated instance (deploy/dagster.yaml) sets them."""
    config = yaml.safe_load((stack.home / "stack" / "dagster_home" / "dagster.yaml").read_text())
    runs = config["concurrency"]["runs"]
    tagged = {rule["key"]: rule["limit"] for rule in runs["tag_concurrency_limits"] if "value" not in rule}
    return {"max_concurrent_runs": int(runs["max_concurrent_runs"]), "backfill": int(tagged[BACKFILL_TAG]),
            "run_retries": int(config["run_retries"]["max_retries"]) if config["run_retries"]["enabled"] else 0,
            "monitoring_poll_s": int(config["run_monitoring"]["poll_interval_seconds"])}


# ---- the run storage, sampled -----------------------------------------------------------------------------------
@dataclass
class Sampler:
    """Counts the runs in progress every ``SAMPLE_S`` seconds, in a thread, from the run storage."""

    instance: Any
    samples: int = 0
    max_active: int = 0
    max_by_tag: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _loop(self) -> None:
        from dagster import RunsFilter
        from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES

        while not self._stop.is_set():
            try:
                runs = self.instance.get_runs(filters=RunsFilter(statuses=ACTIVE_RUN_STATUSES))
            except Exception as exc:  # noqa: BLE001 (a sample lost is reported, not fatal)
                self.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.samples += 1
                self.max_active = max(self.max_active, len(runs))
                counts: dict[str, int] = {}
                for run in runs:
                    value = run.tags.get(BACKFILL_TAG)
                    if value:
                        counts[value] = counts.get(value, 0) + 1
                for value, count in counts.items():
                    self.max_by_tag[value] = max(self.max_by_tag.get(value, 0), count)
            self._stop.wait(SAMPLE_S)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)


def _runs(instance, **tags: str) -> list[Any]:
    from dagster import RunsFilter

    return list(instance.get_runs(filters=RunsFilter(tags=tags)))


def _wait_backfill(stack, instance, backfill_id: str, timeout: float) -> list[Any]:
    """The backfill's runs (and their retries) once settled: each one ended, and each failed one either retried
    or given up on by the daemon (``dagster/will_retry``)."""
    from dagster import DagsterRunStatus

    def settled() -> list[Any] | None:
        runs = _runs(instance, **{BACKFILL_TAG: backfill_id})
        # A retry keeps the backfill's tags while the backfill is in progress; one launched after it ended
        # does not: it is found through its parent.
        ids = {r.run_id for r in runs}
        for failed in [r for r in runs if r.status == DagsterRunStatus.FAILURE]:
            runs += [r for r in _runs(instance, **{PARENT_TAG: failed.run_id}) if r.run_id not in ids]
        parents = {r.tags.get(PARENT_TAG) for r in runs}
        for run in runs:
            if not run.is_finished:
                return None
            will_retry = run.tags.get(WILL_RETRY_TAG)
            if run.status == DagsterRunStatus.FAILURE and (will_retry is None or
                                                           (will_retry == "true" and run.run_id not in parents)):
                return None
        return runs or None

    runs = wait_until(settled, timeout=timeout, interval=1.0)
    if runs is None:
        now = _runs(instance, **{BACKFILL_TAG: backfill_id})
        by_status: dict[str, int] = {}
        for run in now:
            by_status[run.status.value] = by_status.get(run.status.value, 0) + 1
        raise AssertionError(f"backfill {backfill_id} ({stack.backfill_status(backfill_id)}) not settled after "
                             f"{timeout} s: runs by status {by_status}\n{stack.log_tails()}")
    return runs


def _lost(instance, runs: list[Any], keys: list[str]) -> dict[str, list[str]]:
    """The partitions no run succeeded for, each with what its runs' failures said."""
    from dagster import DagsterEventType, DagsterRunStatus

    done = {r.tags.get(PARTITION_TAG) for r in runs if r.status == DagsterRunStatus.SUCCESS}
    out: dict[str, list[str]] = {}
    for key in sorted(set(keys) - done):
        out[key] = [e.message or "" for r in runs if r.tags.get(PARTITION_TAG) == key
                    for e in instance.all_logs(r.run_id, of_type={DagsterEventType.RUN_FAILURE,
                                                                  DagsterEventType.ENGINE_EVENT})]
    return out


# ---- the scenarios ----------------------------------------------------------------------------------------------
def test_a_fanned_out_rescore_stays_within_the_run_limits_and_equals_the_single_run(stack, instance, single_run,
                                                                                    reliability):
    from dagster import DagsterRunStatus

    keys = stack.plan(ROWS_PER_BATCH)
    assert len(keys) == BATCHES, keys
    limits = _limits(stack)
    before = _snapshot(stack)
    sampler = Sampler(instance)
    started = time.monotonic()
    with sampler.running():
        backfill_id = stack.launch_backfill(JOB, keys)
        runs = _wait_backfill(stack, instance, backfill_id, timeout=1200)
    elapsed = time.monotonic() - started
    after = _snapshot(stack)
    ref = _reference(stack, single_run, after)

    max_backfill = sampler.max_by_tag.get(backfill_id, 0)
    reliability.record("Stack", f"A fanned-out rescore: a backfill of {BATCHES} batch partitions", **{
        "opportunities": OPPORTUNITIES, "partitions": BATCHES, "runs": len(runs),
        "runs succeeded": sum(r.status == DagsterRunStatus.SUCCESS for r in runs),
        "max backfill runs in progress": max_backfill, f"limit ({BACKFILL_TAG} tag)": limits["backfill"],
        "max runs in progress (all)": sampler.max_active, "limit (max_concurrent_runs)": limits["max_concurrent_runs"],
        "samples": sampler.samples, "sample interval s": SAMPLE_S, "backfill s": round(elapsed, 1),
        "rows differing from the single run": sum(after.fact.get(n) != row for n, row in ref.fact.items()),
        "cache entries differing": sum(after.cache.get(n) != e for n, e in ref.cache.items()),
        "backfill status": stack.backfill_status(backfill_id)})

    assert not sampler.errors[:1], sampler.errors[:3]
    assert sampler.samples > 0 and max_backfill > 0
    assert max_backfill <= limits["backfill"], sampler.max_by_tag
    assert sampler.max_active <= limits["max_concurrent_runs"]
    # One run per partition, each successful: nothing was launched twice.
    assert not _lost(instance, runs, keys)
    assert sorted(r.tags[PARTITION_TAG] for r in runs) == sorted(keys)
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
    # Row for row what the single run wrote, and every row was written again (its scoring time moved on).
    assert after.fact == ref.fact, _differences(ref.fact, after.fact)
    assert after.cache == ref.cache, _differences(ref.cache, after.cache)
    assert all(after.scored_at[n] > before.scored_at[n] for n in before.scored_at)
    # The history holds each scoring once: the backfill added one per opportunity.
    assert after.history_rows == after.history_distinct == before.history_rows + OPPORTUNITIES


def test_a_run_killed_mid_step_is_retried_and_sql_and_redis_converge(stack, instance, single_run, reliability):
    import psutil
    from dagster import DagsterEventType, DagsterRunStatus

    limits = _limits(stack)
    keys = stack.plan(OPPORTUNITIES)  # one batch: every opportunity, so the step lasts long enough to be hit
    assert len(keys) == 1, keys
    key = keys[0]
    # The batch's rows and cache entries are gone first, as if never scored: the retry must bring each one back.
    engine = sa.create_engine(stack.sql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM fact_opportunity"))
    engine.dispose()
    cache = RedisResource(url=stack.redis_url).cache()
    for number in single_run.fact:
        cache.delete(number)
    before = _snapshot(stack)
    assert not before.fact

    run_id = stack.submit(JOB, tags={PARTITION_TAG: key})

    def in_step() -> list[Any] | None:
        events = instance.all_logs(run_id)
        kinds = {e.dagster_event_type for e in events}
        if DagsterEventType.STEP_SUCCESS in kinds or DagsterEventType.RUN_SUCCESS in kinds:
            raise AssertionError(f"run {run_id} finished its step before it could be killed")
        return events if DagsterEventType.STEP_START in kinds else None

    events = wait_until(in_step, timeout=900, interval=0.1)
    assert events, f"run {run_id} never started its step\n{stack.log_tails()}"
    pids = [int(e.dagster_event.engine_event_data.metadata["pid"].value) for e in events
            if e.dagster_event_type == DagsterEventType.ENGINE_EVENT and e.dagster_event is not None
            and "pid" in e.dagster_event.engine_event_data.metadata]
    assert pids, [e.message for e in events]
    worker = psutil.Process(pids[-1])
    services = json.loads((stack.home / "stack" / "state.json").read_text())["services"]
    # The run worker is the process the launcher started (its pid tag), the daemon's child, leading a process
    # group of its own: no service's group holds it (as a container, it is no process of the code server's).
    assert instance.get_run_by_id(run_id).tags.get(PID_TAG) == str(worker.pid), (worker.pid, worker.cmdline())
    assert os.getpgid(worker.pid) == worker.pid, worker.cmdline()
    assert worker.ppid() == int(services["daemon"]["pid"])
    assert worker.pid not in {int(e["pgid"]) for e in services.values()}
    outputs_stored = sum(e.dagster_event_type == DagsterEventType.HANDLED_OUTPUT for e in events)
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Nothing reports the run's end: run monitoring's health check (every poll_interval_seconds, as deployed)
    # finds its process gone and fails the run; the daemon's run retry launches it again.
    failed = wait_until(lambda: (r := instance.get_run_by_id(run_id)).is_finished and r, timeout=600)
    assert failed, f"run {run_id} not failed 600 s after its process was killed\n{stack.log_tails()}"
    failed_s = time.monotonic() - killed_at
    assert failed.status == DagsterRunStatus.FAILURE, failed.status
    retries = wait_until(lambda: _runs(instance, **{PARENT_TAG: run_id}), timeout=600)
    assert retries, f"no retry of run {run_id} within 600 s\n{stack.log_tails()}"
    retry_launched_s = time.monotonic() - killed_at
    assert len(retries) == 1, [r.run_id for r in retries]
    assert stack.wait_run(retries[0].run_id, timeout=900) == "SUCCESS", stack.log_tails()
    recovered_s = time.monotonic() - killed_at
    notes = [e.message or "" for e in instance.all_logs(run_id, of_type={DagsterEventType.ENGINE_EVENT,
                                                                         DagsterEventType.RUN_FAILURE})]
    after = _snapshot(stack)
    ref = _reference(stack, single_run, after)

    reliability.record("Stack", "A run process killed (SIGKILL) mid-step, retried by the instance", **{
        "opportunities in the batch": OPPORTUNITIES, "outputs stored before the kill": outputs_stored,
        "run marked failed after s": round(failed_s, 1), "retry launched after s": round(retry_launched_s, 1),
        "retry succeeded after s (recovery)": round(recovered_s, 1), "retries": len(retries),
        "max_retries": limits["run_retries"], "run_monitoring poll s (deployed)": limits["monitoring_poll_s"],
        "fact rows": len(after.fact), "cache entries": sum(v is not None for v in after.cache.values()),
        "rows differing from the single run": sum(after.fact.get(n) != row for n, row in ref.fact.items()),
        "history rows duplicated": after.history_rows - after.history_distinct,
        "detected by": "run monitoring's health check (the run's process exited)"})

    assert retries[0].tags.get("dagster/retry_number") == "1", retries[0].tags
    assert any("Run process" in m and "terminated by signal 9 (SIGKILL)" in m for m in notes), notes[-3:]
    # SQL and Redis converged: every opportunity once, as the single run scored it, each scoring recorded once.
    assert after.fact == ref.fact, _differences(ref.fact, after.fact)
    assert after.cache == ref.cache, _differences(ref.cache, after.cache)
    assert after.history_rows == after.history_distinct


def test_a_code_server_restart_during_runs_loses_none(stack, instance, single_run, reliability):
    from dagster import DagsterRunStatus

    keys = stack.plan(ROWS_PER_BATCH)[:RESTART_BATCHES]  # more than the backfill limit: some wait queued
    limits = _limits(stack)
    assert len(keys) == RESTART_BATCHES > limits["backfill"], keys
    sampler = Sampler(instance)
    with sampler.running():
        backfill_id = stack.launch_backfill(JOB, keys)

        def mid_flight() -> dict[str, list[str]] | None:
            """Runs in progress and runs queued: the moment to restart."""
            runs = _runs(instance, **{BACKFILL_TAG: backfill_id})
            by: dict[str, list[str]] = {}
            for run in runs:
                by.setdefault(run.status.value, []).append(run.run_id)
            return by if by.get("STARTED") and by.get("QUEUED") else None

        at_restart = wait_until(mid_flight, timeout=900, interval=SAMPLE_S)
        assert at_restart, f"the backfill never had runs in progress and queued at once\n{stack.log_tails()}"
        started = time.monotonic()
        out = stack.cli("stack", "restart", "code-server", timeout=600)
        restart_s = time.monotonic() - started
        runs = _wait_backfill(stack, instance, backfill_id, timeout=1500)
        recovered_s = time.monotonic() - started
    after = _snapshot(stack)
    ref = _reference(stack, single_run, after)

    failed = [r for r in runs if r.status != DagsterRunStatus.SUCCESS]
    retried = {r.tags[PARENT_TAG]: r for r in runs if PARENT_TAG in r.tags}
    succeeded = {r.run_id for r in runs if r.status == DagsterRunStatus.SUCCESS}
    lost = _lost(instance, runs, keys)
    launched_on_shutdown = sum(any(LAUNCH_ON_SHUTDOWN in m for m in notes) for notes in lost.values())
    retry_failed = sum(any(RETRY_FAILED in m for m in notes) for notes in lost.values())
    dropped = sum(any(DROPPED in m for m in notes) for notes in lost.values())
    in_progress, starting = at_restart.get("STARTED", []), at_restart.get("STARTING", [])
    reliability.record("Stack", "A code-server restart during a backfill", **{
        "partitions": RESTART_BATCHES, "runs in progress at the restart": len(in_progress),
        "runs queued at the restart": len(at_restart.get("QUEUED", [])),
        "runs starting at the restart": len(starting), "restart s": round(restart_s, 1),
        "runs in progress at the restart that ran on to success": sum(r in succeeded for r in in_progress),
        "runs starting at the restart that ran on to success": sum(r in succeeded for r in starting),
        "runs": len(runs), "runs failed": len(failed), "retries": len(retried),
        "their failure reasons": ", ".join(sorted({r.tags.get("dagster/failure_reason", "?") for r in failed}))
        or "none",
        "partitions lost": len(lost), "of them launched on the stopping code server": launched_on_shutdown,
        "of them whose retry failed (code server down)": retry_failed,
        "of them dropped from the queue by a failed launch": dropped,
        "settled after s": round(recovered_s, 1),
        "max backfill runs in progress": sampler.max_by_tag.get(backfill_id, 0), "limit": limits["backfill"],
        "rows differing from the single run": sum(after.fact.get(n) != row for n, row in ref.fact.items())})

    assert "code-server restarted" in out.stdout, out.stdout
    # No partition lost: each run is a process of its own (the stack's launcher, as a container in compose),
    # so the restart stopped none, and the queued ones waited and then ran.
    assert not lost, lost
    # The runs in progress at the restart ran on through it, each to success as the same run (no retry).
    assert all(r in succeeded for r in in_progress), {r: instance.get_run_by_id(r).status for r in in_progress}
    # What did run stayed within the limit, and SQL holds every opportunity once, as the single run scored it.
    assert sampler.max_by_tag.get(backfill_id, 0) <= limits["backfill"]
    assert after.fact == ref.fact, _differences(ref.fact, after.fact)
    assert after.history_rows == after.history_distinct
    # A run that failed anyway was retried, and the retry succeeded: none was left failed.
    for run in failed:
        assert run.status == DagsterRunStatus.FAILURE, (run.run_id, run.status)
        assert run.run_id in retried, f"run {run.run_id} failed and was not retried\n{stack.log_tails()}"
