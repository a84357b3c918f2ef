"""The benchmark suite runs end to end at a tiny scale (figures belong to `make bench`, not to tests)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from salespred_assets import bench
from salespred_assets.bench.harness import Figure, Goal, StageResult, percentile, scale_limits

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
    results = bench.run("smoke", tmp_path, progress=lambda _: None)
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
