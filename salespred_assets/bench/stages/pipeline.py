"""Pipeline stages: the full refresh and an incremental batch, each a `salespred` command in its own process."""

from __future__ import annotations

import functools
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from salespred_assets.bench.harness import StageResult, timed
from salespred_assets.bench.stages.common import (
    Scale,
    Servers,
    env_for,
    measured_run,
    scratch_database,
    seed_collection,
)
from salespred_assets.core import synthetic
from salespred_assets.redis_cache.resource import RedisResource


def stage_pipeline(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    """Full refresh of the whole graph at both sizes, the large one on every configured reporting database
    (this also prepares the incremental and app stages, on PostgreSQL when it is configured)."""
    r = StageResult("full_refresh", f"Full refresh of the graph at {scale.big_docs:,} opportunities")
    if not state.get("seeded"):
        seed_collection(servers, "bench_small", scale.small_docs)
        seed_collection(servers, "bench_big", scale.big_docs)
        state["seeded"] = True
    small_url = state.get("sql_small") or _pipeline_sql(servers, "small", state)
    state["sql_small"] = small_url
    seconds, rss, _steps, _path = _refresh(servers, scale, "small", small_url)
    r.figure(f"wall at {scale.small_docs:,} ({_dialect(small_url)})", "s", [seconds])
    r.figure(f"peak memory at {scale.small_docs:,}", "GB", [rss / 1024])
    # The large collection on each reporting database; the last one (PostgreSQL when configured) is what the
    # incremental, app and dashboard stages then read.
    sqlite = f"sqlite:///{servers.home / 'pipeline-big.db'}"
    if scale.name == "smoke":  # proves the suite runs: one database (the refresh is the same code on each)
        databases = [_scratch(servers.postgres_url, state) or sqlite]
    else:
        servers_urls = (_scratch(servers.mariadb_url, state), _scratch(servers.postgres_url, state))
        databases = [sqlite, *(url for url in servers_urls if url)]
    bounds = []
    profiles, halves = [], []
    for url in databases:
        name = _dialect(url)
        profile = servers.home / f"profile-{name.lower()}.txt"
        seconds, rss, steps, path = _refresh(servers, scale, "big", url, profile=profile)
        docs = scale.big_docs
        r.figure(f"{name}: wall", "min", [seconds / 60])
        r.figure(f"{name}: peak memory of the run's largest process", "GB", [rss / 1024])
        r.figure(f"{name}: throughput", "opportunities/s", [docs / seconds])
        r.goal(f"{name}: full refresh at {docs:,} ≤ 15 min", seconds / 60, 15, "at_most", "min")
        r.goal(f"{name}: peak memory at {docs:,} ≤ 6 GB", rss / 1024, 6, "at_most", "GB")
        total = sum(steps.values())
        for step, took in sorted(steps.items(), key=lambda kv: -kv[1])[:6]:
            r.figure(f"{name}: step {step}", "s", [took])
        checks_and_views = {k: v for k, v in steps.items() if _is_check_or_view(k)}
        if checks_and_views:
            worst = max(checks_and_views, key=lambda k: checks_and_views[k])
            r.figure(f"{name}: slowest check or view ({worst})", "s", [checks_and_views[worst]])
            r.goal(f"{name}: no check or view above 2% of the refresh", checks_and_views[worst] / seconds, 0.02,
                   "at_most", "× the refresh")
        if total:
            shares = sorted(((k, v / total) for k, v in steps.items()), key=lambda kv: -kv[1])
            bounds.append(f"{name}: " + ", ".join(f"{k} {share:.0%}" for k, share in shares[:4]))
            slowest = shares[0][0]
            on_path = sum(steps[k] for k in path)
            # What a refresh twice as fast needs: half the wall taken off the steps the run waited on.
            largest = sorted(path, key=lambda k: -steps[k])[:3]
            halves.append(f"{name}: the {len(path)} steps the run waited on, one after the other, take "
                          f"{on_path:.0f} s of its {seconds:.0f} s; {seconds / 2:.0f} s less is "
                          f"{seconds / 2 / max(on_path, 1e-9):.0%} of that chain, whose largest steps are "
                          + ", ".join(f"{k} {steps[k]:.0f} s" for k in largest))
            if profile.exists():
                samples, where, packages = step_profile(profile.read_text(), _function_of(slowest))
                if samples:
                    profiles.append(f"{name}, {slowest} ({steps[slowest]:.0f} s, {samples:,} samples): in "
                                    + ", ".join(f"{k} {v:.0%}" for k, v in where) + "; its time in "
                                    + ", ".join(f"{k} {v:.0%}" for k, v in packages))
        state["sql_big"] = url
    from salespred_assets.core.model import SearchConfig

    r.notes.append("`salespred materialize --processes` (Dagster's multiprocess executor, each step in its own "
                   "process, as deployed runs execute; peak memory is the largest process of the run's tree): "
                   "extract, features, the search (on a stratified sample of at most "
                   f"{SearchConfig().max_rows:,} closed opportunities), scoring with explanations, "
                   "SQL (fact table, history, views, the dashboard's stored figures), the Redis generation swap and "
                   "the dashboard, with every asset check. Step times are Dagster's own (start to end of each step); "
                   "their sum exceeds the wall time where steps overlap.")
    if bounds:
        r.notes.append("What bounds the refresh, as shares of the summed step time (largest first): "
                       + "; ".join(bounds) + ".")
    if halves:
        r.notes.append("Twice as fast: " + "; ".join(halves) + ". The chain is each step that ended last before the "
                       "next one on it started (the executor runs as many steps at once as there are cores); "
                       "a step beside it, on the other core, does not shorten the refresh.")
    if profiles:
        r.notes.append("The slowest step of each refresh, profiled by py-spy during the measured run (25 samples "
                       "per second of every process's threads, running or waiting, without pausing them): where "
                       "the step's main thread spent its time, by the innermost salespred function on the stack, "
                       "and by the package it was in (waiting on a database counts in its driver's caller): "
                       + "; ".join(profiles) + ".")
    return r


CHECK_OR_VIEW_STEPS = ("reporting_views", "dashboard_figures")


@functools.cache
def _check_names() -> frozenset[str]:
    from salespred_assets.definitions import defs

    return frozenset(key.name for key in defs().resolve_asset_graph().asset_check_keys)


def _function_of(step: str) -> str:
    """The Python function a step runs: an asset's is its name, a check's step is ``<asset>_<check>``."""
    return next((name for name in _check_names() if step.endswith(f"_{name}")), step)


def _is_check_or_view(step: str) -> bool:
    return step in CHECK_OR_VIEW_STEPS or any(step.endswith(f"_{name}") for name in _check_names())


def _dialect(url: str) -> str:
    backend = sa.engine.make_url(url).get_backend_name()
    return {"postgresql": "PostgreSQL", "mysql": "MariaDB", "mariadb": "MariaDB", "sqlite": "SQLite"}.get(backend,
                                                                                                       backend)


def _scratch(url: str | None, state: dict[str, Any]) -> str | None:
    if not url:
        return None
    ctx = scratch_database(url, "bench_big")
    state.setdefault("cleanups", []).append(lambda: ctx.__exit__(None, None, None))
    return ctx.__enter__()


def _refresh(servers: Servers, scale: Scale, name: str, sql_url: str,
             profile: Path | None = None) -> tuple[float, float, dict[str, float], list[str]]:
    """One full refresh in a fresh process: (seconds, peak MB, seconds per step from the run's own records,
    the steps on its critical path)."""
    home = servers.home / f"run-{name}-{_dialect(sql_url).lower()}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    seconds, rss, _out = measured_run(["materialize", "--job", "full_refresh", "--processes"],
                                      env_for(servers, f"bench_{name}", sql_url, scale.search, home), profile=profile)
    times = _step_seconds(home / "dagster")
    steps = {k: end - start for k, (start, end) in times.items()}
    return seconds, rss, steps, critical_path(times)


_PROCESS = re.compile(r'process (\d+):"')
_THREAD = re.compile(r"thread \((\d+)\)")


def _stacks(raw: str) -> Iterator[tuple[str, str | None, list[str], int]]:
    """(innermost process id, thread id or None, its Python frames, samples) per line of py-spy's raw output with
    --subprocesses (stacks start with ``process PID:"command line";`` for the process and each of its ancestors)
    and --threads (then ``thread (TID)[: name];``)."""
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        found = list(_PROCESS.finditer(stack))
        if not count.isdigit() or not found:
            continue
        last = found[-1]
        end = stack.find('";', last.end())
        frames = [f.strip() for f in stack[end + 2:].split(";")] if end >= 0 else []
        thread = _THREAD.match(frames[0]) if frames else None
        if thread:
            frames = frames[1:]
        yield last.group(1), thread.group(1) if thread else None, frames, int(count)


def _package(frame: str) -> str:
    """The package a frame's code belongs to (py-spy names files from their package: ``sklearn/tree/x.py``)."""
    path = frame.partition(" (")[2].rpartition(":")[0]
    if "salespred_assets/" in path:
        return "salespred"
    top = path.rpartition("site-packages/")[2].split("/")[0].removesuffix(".py")
    if not top or top.startswith("<") or top in sys.stdlib_module_names:
        return "Python (standard library)"
    return top


def step_profile(raw: str, function: str, top: int = 4) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """A step's samples in a py-spy raw profile of a multiprocess run: (how many, the innermost salespred
    function running by share, the package its time was in by share). Each step runs in a process of its own:
    the step's are all the samples of the main thread of the process(es) where a frame runs ``function`` (its
    load of inputs and its IO manager's write included; waiting on a database too, when sampled with --idle)."""
    stacks = list(_stacks(raw))
    pids = {pid for pid, _, frames, _ in stacks if function in (f.partition(" (")[0] for f in frames)}
    ours: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for pid, thread, frames, n in stacks:
        # On Linux the main thread's id is the process id; Dagster's helper threads (heartbeats, log capture)
        # only wait.
        if pid not in pids or not frames or thread not in (None, pid):
            continue
        total += n
        inner = next((f for f in reversed(frames) if "salespred_assets/" in f), frames[-1])
        name, _, place = inner.partition(" (")
        file = place.rpartition("salespred_assets/")[2].rpartition(":")[0] if "salespred_assets/" in place else ""
        label = f"{file}:{name}" if file else name
        ours[label] = ours.get(label, 0) + n
        packages[_package(frames[-1])] = packages.get(_package(frames[-1]), 0) + n

    def shares(counts: dict[str, int]) -> list[tuple[str, float]]:
        return sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1])[:top]

    return total, shares(ours) if total else [], shares(packages) if total else []


def _step_seconds(dagster_home: Path) -> dict[str, tuple[float, float]]:
    """(start, end) of each step of the instance's latest run, in seconds since the epoch."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        [run] = instance.get_runs(limit=1)
        return {s.step_key: (s.start_time, s.end_time) for s in instance.get_run_step_stats(run.run_id)
                if s.start_time and s.end_time}


def critical_path(times: dict[str, tuple[float, float]], slack: float = 1.0) -> list[str]:
    """The chain of steps that kept the run going, first to last: from the step that ended last, each
    step's predecessor is the one that ended last before it started (within ``slack`` seconds: the
    executor's own start-up between them). Shortening a step off this chain does not shorten the run."""
    if not times:
        return []
    current = max(times, key=lambda k: times[k][1])
    chain = [current]
    while True:
        start = times[current][0]
        before = [k for k, (_, end) in times.items() if end <= start + slack and k not in chain]
        if not before:
            return chain[::-1]
        current = max(before, key=lambda k: times[k][1])
        chain.append(current)


def _pipeline_sql(servers: Servers, name: str, state: dict[str, Any]) -> str:
    return _scratch(servers.postgres_url, state) or f"sqlite:///{servers.home / f'pipeline-{name}.db'}"


def stage_incremental(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("incremental", f"Incremental scoring of {scale.new_docs:,} new opportunities")
    import datetime as dt

    import dagster as dg
    from bson import ObjectId

    from salespred_assets.defs.scoring.assets import new_opportunity_scores
    from salespred_assets.resources import wire
    from salespred_assets.scoring import batches
    from salespred_assets.sql.resource import SqlResource

    if "sql_small" not in state:
        r.skipped = "needs the full-refresh stage (a trained model, SQL and cache)"
        return r
    per_size = {}
    r.figure("new opportunities per batch", "", [scale.new_docs])
    for name, docs in (("small", scale.small_docs), ("big", scale.big_docs)):
        mongo = servers.mongo(f"bench_{name}")
        redis = RedisResource(url=servers.redis_url_for(f"bench_{name}"))
        # The batch asset's own run, in process: scoring, then its IO managers' SQL upsert, history and cache.
        resources = wire(mongo, SqlResource(url=state[f"sql_{name}"]), redis, str(servers.home / "storage"))
        instance = dg.DagsterInstance.ephemeral()
        start = mongo.count_opportunities()
        times = []
        for i in range(scale.repeats):
            # A fresh second, so that the batch's _id range holds exactly the new documents (its lower
            # bound is that second's smallest ObjectId; SecantusDB cannot scan _id backwards cheaply).
            time.sleep(1.1)
            lo = ObjectId.from_datetime(dt.datetime.now(dt.UTC))
            new = [{"_id": ObjectId(), **d} for chunk in synthetic.generate(scale.new_docs, seed=100 + i, start=start)
                   for d in chunk]
            start += len(new)
            mongo.insert_opportunities(new)
            key = batches.range_key(str(lo), str(new[-1]["_id"]))
            instance.add_dynamic_partitions(batches.PARTITIONS, [key])
            # partial binds this size's resources and this batch's key now (a closure would read the loop's variables).
            seconds, result = timed(functools.partial(dg.materialize, [new_opportunity_scores], partition_key=key,
                                                      resources=resources, instance=instance))
            meta = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node(
                new_opportunity_scores.op.name)}["new_opportunity_scores"]
            assert meta["dagster/row_count"].value + meta["quarantined"].value == scale.new_docs, meta
            times.append(seconds)
        per_size[name] = times
        r.figure(f"at {docs:,} documents: score, SQL upsert, history, cache", "s", times)
    ratio = [b / a for a, b in zip(per_size["small"], per_size["big"], strict=True)]
    r.figure(f"ratio at {scale.big_docs:,} / at {scale.small_docs:,}", "×", ratio)
    r.goal(f"{scale.new_docs:,} new at {scale.big_docs:,} ≤ 5 s", float(np.median(per_size["big"])), 5, "at_most", "s")
    r.goal(f"{scale.new_docs:,} new at {scale.small_docs:,} ≤ 5 s", float(np.median(per_size["small"])), 5,
           "at_most", "s")
    r.goal("cost ratio between the two sizes ≤ 1.5", float(np.median(ratio)), 1.5, "at_most", "×")
    r.notes.append("The sensor's run path (the `new_opportunity_scores` asset, one partition, run in process by "
                   "Dagster): an `_id` range read, client facts for the batch's clients only (indexed), then through "
                   "the IO managers an upsert of those rows, their history rows, and their keys in the live cache "
                   "generation.")
    return r
