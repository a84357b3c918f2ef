"""The benchmark suite runs end to end at a tiny scale (figures belong to `make bench`, not to tests)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from salespred_assets import bench
from salespred_assets.bench.harness import Figure, Goal, StageResult, percentile, scale_limits
from salespred_assets.bench.stages import STAGES
from salespred_assets.bench.stages.stack import (
    Capture,
    Run,
    Rung,
    capture_bound,
    fanout_bound,
    fanout_summary,
)

pytestmark = pytest.mark.integration


def test_goals_and_percentiles_are_computed_right():
    assert Goal("x", 0.9, 0.8, "at_least").met and not Goal("x", 0.7, 0.8, "at_least").met
    assert Goal("x", 4, 5, "at_most").met and Goal("x", 10, 5, "at_most").gap == "missed: 2.0× the target"
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1.0, 2.0], 100) == 2.0


def test_scale_limits_size_by_the_slowest_reporting_database():
    refresh = StageResult("full_refresh", "Full refresh", figures=[
        Figure("SQLite: throughput", "opportunities/s", [6000.0]),
        Figure("MariaDB: throughput", "opportunities/s", [5000.0]),
        Figure("SQLite: peak memory of the run's largest process", "GB", [3.0]),
        Figure("MariaDB: peak memory of the run's largest process", "GB", [4.0])])
    text = "\n".join(scale_limits([refresh]))
    assert "5,000 opportunities/s (MariaDB, the slowest" in text and "peaked at 4.0 GB" in text
    assert "no full-refresh" not in text


@pytest.mark.slow  # four minutes of the ten stages end to end: `make test-slow`, which .ci/run also runs
def test_the_suite_runs_at_smoke_scale(tmp_path, mongo_server, redis_url, monkeypatch):
    monkeypatch.setenv("SALESPRED_BENCH_MONGO_URI", mongo_server.uri)
    monkeypatch.setenv("SALESPRED_BENCH_REDIS_URL", redis_url)
    stages = [name for name in STAGES if name != "stack"]  # the stack's own test follows
    results = bench.run("smoke", tmp_path, only=stages, progress=lambda _: None)
    failed = {r.name: r.skipped for r in results if r.skipped and r.skipped.startswith("failed")}
    assert failed == {}
    report = json.loads((tmp_path / "BENCHMARKS.json").read_text())
    assert report["scale"] == "smoke" and report["machine"]["cores"]
    names = {s["name"] for s in report["stages"]}
    assert names == {"seed", "extract", "sql", "redis", "training", "single_row", "full_refresh", "incremental", "app",
                     "dashboard"}
    by_name = {s["name"]: s for s in report["stages"]}
    for name in ("seed", "extract", "sql", "redis", "full_refresh", "incremental"):
        assert by_name[name]["skipped"] is None and by_name[name]["figures"], name
    if shutil.which("wrk"):
        assert by_name["app"]["skipped"] is None
        if os.environ.get("SALESPRED_TEST_POSTGRES_URL"):  # the dashboard stage loads it on PostgreSQL
            assert by_name["dashboard"]["skipped"] is None and by_name["dashboard"]["figures"]
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Goals" in markdown and "ratio ours / raw" in markdown
    if shutil.which("py-spy") or os.path.exists(os.path.join(os.path.dirname(sys.executable), "py-spy")):
        assert any("profiled by py-spy" in note for note in by_name["full_refresh"]["notes"])


def test_a_step_profile_takes_every_sample_of_the_steps_process():
    from salespred_assets.bench.stages.pipeline import step_profile

    main = 'process 10:"python -m salespred materialize"'
    server = 'process 11:"python -c from multiprocessing.forkserver import main; main(3, 5)"'
    raw = "\n".join([
        # the step's process (12): its compute, and its IO manager's write after the asset function returned
        (f'{main};{server};process 12:"python -c x";run (dagster/x.py:1);fact_opportunity '
        f'(/r/salespred_assets/defs/reporting/assets.py:40);read (/r/salespred_assets/sql/writer.py:9);'
        f'fetch (sqlalchemy/engine/base.py:3) 30'),
        (f'{main};{server};process 12:"python -c x";run (dagster/x.py:1);handle_output '
        f'(/r/salespred_assets/sql/io_manager.py:20);copy (/r/salespred_assets/sql/writer.py:50);'
        f'execute (/venv/lib/python3.11/site-packages/psycopg/cursor.py:7) 60'),
        f'{main};{server};process 12:"python -c x";<module> (<frozen importlib._bootstrap>:1) 10',
        # another step's process, and the run's own process: not the step's
        (f'{main};{server};process 13:"python -c x";win_model (/r/salespred_assets/defs/modeling/assets.py:9);'
        f'fit (sklearn/ensemble/_forest.py:3) 500'),
        f'{main};wait (threading.py:1) 99',
        "garbage line",
    ])
    samples, where, packages = step_profile(raw, "fact_opportunity")
    assert samples == 100
    assert where[0] == ("sql/writer.py:copy", 0.6) and where[1] == ("sql/writer.py:read", 0.3)
    assert dict(packages) == {"psycopg": 0.6, "sqlalchemy": 0.3, "Python (standard library)": 0.1}
    assert step_profile(raw, "no_such_step") == (0, [], [])

    # Recorded with --idle --threads: only the step's main thread (its id is the process id) counts, waiting
    # included; a helper thread that only sleeps does not.
    threaded = "\n".join(line.replace('process 12:"python -c x";', 'process 12:"python -c x";thread (12): MainThread;')
                         for line in raw.splitlines())
    threaded += (f'\n{main};{server};process 12:"python -c x";thread (17): Thread-2 (heartbeat);'
                 'wait (threading.py:1) 400')
    assert step_profile(threaded, "fact_opportunity") == (samples, where, packages)


def test_peak_memory_counts_step_processes_forked_from_a_forkserver(tmp_path, monkeypatch):
    """Dagster's step processes are children of a forkserver that nobody waits for; their peak must count."""
    from salespred_assets.bench.stages import common

    script = tmp_path / "forkserver_step.py"
    script.write_text(
        "import multiprocessing as mp\n"
        "def step():\n"
        "    block = bytearray(400 * 1024 * 1024)\n"
        "    for i in range(0, len(block), 4096):\n"
        "        block[i] = 1\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('forkserver').Process(target=step)\n"
        "    p.start()\n"
        "    p.join()\n")
    monkeypatch.setattr(common, "SALESPRED", [sys.executable, str(script)])
    _, peak_mb, _ = common.measured_run([], dict(os.environ))
    assert peak_mb >= 400, f"the step's 400 MB were not seen: peak {peak_mb:.0f} MB"


def test_the_chain_a_run_waited_on_follows_step_ends():
    from salespred_assets.bench.stages.pipeline import critical_path

    times = {"extract": (0.0, 10.0), "sellers": (0.5, 2.0), "features": (10.2, 20.0), "sellers_check": (2.1, 3.0),
             "train": (20.1, 50.0), "cache_check": (21.0, 25.0), "score": (50.3, 60.0), "load": (60.2, 70.0)}
    assert critical_path(times) == ["extract", "features", "train", "score", "load"]
    assert critical_path({}) == []


@pytest.mark.slow  # the stack up, a seed, three runs through its queue, a backfill and two capture windows
def test_the_stack_stage_runs_at_smoke_scale(tmp_path, mongo_server, redis_url, monkeypatch):
    if not os.environ.get("SALESPRED_TEST_POSTGRES_URL"):
        pytest.skip("the stack stage needs PostgreSQL (SALESPRED_TEST_POSTGRES_URL) for its Dagster instance")
    monkeypatch.setenv("SALESPRED_BENCH_MONGO_URI", mongo_server.uri)
    monkeypatch.setenv("SALESPRED_BENCH_REDIS_URL", redis_url)
    [result] = bench.run("smoke", tmp_path, only=["stack"], progress=lambda _: None)
    assert result.skipped is None, result.skipped
    figures = {f.name: f for f in result.figures}
    # What the figures are depends on the machine; that each was measured does not.
    assert "captures per second sustained, every one in SQL within a minute" in figures
    assert figures["fanned out / single run"].median > 0
    assert {g.text.split(" ")[0] for g in result.goals} == {"fanned-out", "at"}
    notes = " ".join(result.notes)
    assert "What bounds it: " in notes and "The fan-out: `salespred batches plan" in notes
    assert "## The stack" in (tmp_path / "BENCHMARKS.md").read_text()


def _capture(number: str, answered: float, seen: float | None, run: str | None) -> Capture:
    return Capture(number, answered - 0.01, answered, seen, run)


def test_the_capture_bound_names_the_slowest_part_of_the_slowest_captures():
    # Two rates: the first passes; at the second the batch run takes 70 s, so captures miss the minute.
    quick = Run("r1", created=12.0, started=14.0, ended=20.0, status="SUCCESS")
    slow = Run("r2", created=112.0, started=114.0, ended=190.0, status="SUCCESS")
    ok = Rung(1, 10, [_capture(f"a{i}", float(i), 19.0, "r1") for i in range(10)], {"r1": quick})
    late = Rung(2, 10, [_capture(f"b{i}", 100.0 + i / 2, 185.0, "r2") for i in range(20)], {"r2": slow})
    assert ok.passed and not late.passed
    assert max(late.latencies) == pytest.approx(85.01)
    bound = capture_bound([ok, late])
    assert bound.startswith("the batch run: at 2 captures/s,"), bound
    # A capture never seen fails its rate; an app that cannot keep up is named as the bound.
    lost = Rung(1, 10, [_capture("c", 1.0, None, None)], {})
    assert not lost.passed and lost.latencies == [float("inf")]
    refused = Rung(5, 10, [_capture("d", 1.0, 5.0, None)], {}, errors=["503: busy"])
    assert capture_bound([refused]).startswith("the app workers")
    # The app answering late is its part of the path.
    queued = Rung(1, 10, [Capture("f", 0.0, 40.0, 55.0, "r4")],
                  {"r4": Run("r4", created=45.0, started=47.0, ended=54.0, status="SUCCESS")})
    assert capture_bound([queued]).startswith("the app's answer: at 1 captures/s"), capture_bound([queued])
    # Waiting for the tick dominates when the runs are quick.
    waiting = Rung(1, 10, [_capture("e", 0.0, 50.0, "r3")],
                   {"r3": Run("r3", created=40.0, started=42.0, ended=49.0, status="SUCCESS")})
    assert capture_bound([waiting]).startswith("waiting for the sensor's tick: at 1 captures/s (the highest")
    # A run that waited on the queue (created at 10 s, dequeued at 50 s) names the queue.
    queue = Rung(1, 10, [_capture("g", 5.0, 58.0, "r5")],
                 {"r5": Run("r5", created=10.0, started=52.0, ended=57.0, status="SUCCESS", dequeued=50.0)})
    assert capture_bound([queue]).startswith("in the run queue: at 1 captures/s"), capture_bound([queue])


def test_the_fanout_summary_separates_fixed_cost_steps_and_gaps():
    # Four runs, two at a time, each 10 s of which 6 s are its step; the second pair starts 5 s late.
    runs = [Run(f"r{i}", created=0.0, started=start, ended=start + 10.0, status="SUCCESS",
                steps={"new_opportunity_scores": (start + 4.0, start + 10.0)})
            for i, start in enumerate((2.0, 2.0, 17.0, 17.0))]
    f = fanout_summary(0.0, runs)
    assert (f.wall, f.busy, f.runs, f.to_first_start, f.fixed, f.step, f.run) == (27.0, 40.0, 4, 2.0, 4.0, 6.0, 10.0)
    assert f.floor == 20.0 and f.concurrency == pytest.approx(40 / 25)
    assert f.launch == 9.5  # without RUN_STARTING, each launch counts from the run's creation: 2, 2, 17, 17 s
    runs[2].dequeued = runs[3].dequeued = 16.0
    assert fanout_summary(0.0, runs).launch == 1.5  # 2, 2, 1, 1 s
    text = fanout_bound(f, single=30.0)
    assert "allows 18 s" in text and "each launch, 9.5 s at the median" in text and "starts): 7 s" not in text
    assert "before the run starts) 7 s" in text and "two at a time 8 s" in text
    assert text.endswith("The largest is the runs' steps (read, score, SQL upsert, history, cache), two at a time.")
