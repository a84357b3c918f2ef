"""The command line as a newcomer meets it: the demo, clear errors, and a valid workspace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from salespred_tests.conftest import REPO

SALESPRED = [sys.executable, "-m", "salespred_assets.cli"]


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SALESPRED, *args], capture_output=True, check=False, text=True, env=env, timeout=timeout,
                          cwd=REPO)


@pytest.mark.parametrize(("var", "url", "service"), [
    ("SALESPRED_MONGO_URI", "mongodb://app:s3cr3t@127.0.0.1:9/?serverSelectionTimeoutMS=500&connectTimeoutMS=500",
     "MongoDB"),
    ("SALESPRED_REDIS_URL", "redis://:s3cr3t@127.0.0.1:9/0", "Redis"),
    ("SALESPRED_SQL_URL", "postgresql+psycopg://app:s3cr3t@127.0.0.1:9/db?connect_timeout=1", "SQL database"),
])
def test_an_unreachable_database_gives_one_clear_line(var, url, service, tmp_path, mongo_server):
    env = dict(os.environ, SALESPRED_HOME=str(tmp_path), **{var: url})
    if var != "SALESPRED_MONGO_URI":
        env["SALESPRED_MONGO_URI"] = mongo_server.uri.replace("/?", f"/cli_{tmp_path.name[-12:]}?")
    # `seed` needs MongoDB; `demo --once` reaches Redis and SQL too (and may start the embedded ones).
    try:
        args = (["seed", "--synthetic", "10"] if var == "SALESPRED_MONGO_URI"
                else ["demo", "--once", "--synthetic", "600"])
        out = _run(args, env)
    finally:
        _run(["services", "down"], env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr[-2000:]
    assert f"{service} is unreachable at" in lines[0] and "127.0.0.1:9" in lines[0]
    assert "s3cr3t" not in out.stderr + out.stdout and "***" in lines[0]


@pytest.mark.integration
def test_demo_once_runs_the_whole_system_on_embedded_services(tmp_path):
    pytest.importorskip("secantus", reason="SecantusDB is not installed")
    env = dict(os.environ, SALESPRED_HOME=str(tmp_path), SALESPRED_SEARCH="fast")
    for var in ("SALESPRED_MONGO_URI", "SALESPRED_REDIS_URL", "SALESPRED_SQL_URL", "DAGSTER_HOME"):
        env.pop(var, None)
    try:
        out = _run(["demo", "--once", "--synthetic", "2500"], env, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        text = out.stdout
        assert "succeeded" in text
        assert "MongoDB opportunities : 2500" in text
        assert "SQL fact_opportunity  : 2500 rows (sqlite)" in text
        assert "Redis cache           : 2500 keys" in text
        assert "new opportunities as at capture: ROC AUC" in text and "http://127.0.0.1:3000" in text
        creds = Path(tmp_path / "demo-credentials.txt")
        assert str(creds) in text and oct(creds.stat().st_mode & 0o777) == "0o600"
        # The demo's catalog reached SQL as dimension tables: Power BI shows names.
        import sqlite3

        with sqlite3.connect(tmp_path / "salespred.db") as db:
            assert db.execute("SELECT name_es FROM dim_industria WHERE code = 'IN-23'").fetchone() == ("Sanidad",)
            assert db.execute("SELECT count(*) FROM dim_territorio").fetchone() == (16,)
        # The run is recorded in the instance that the Dagster UI serves.
        assert (tmp_path / "dagster" / "dagster.yaml").exists() and any((tmp_path / "dagster").rglob("*.db"))
        # A second run reuses the data (no reseed) and the running services.
        again = _run(["demo", "--once"], env, timeout=600)
        assert again.returncode == 0 and "MongoDB opportunities : 2500" in again.stdout
    finally:
        _run(["services", "down"], env)


def test_the_workspace_validates():
    """`dg check defs` (Dagster's successor to `dagster definitions validate`) loads the project as [tool.dg] in
    pyproject.toml describes it: the same salespred_assets.definitions that workspace.yaml names."""
    bin_dir = Path(sys.executable).parent
    # dg warns when the active virtual environment is not the project's: run it as if this one were activated.
    env = {**os.environ, "VIRTUAL_ENV": str(bin_dir.parent), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([str(bin_dir / "dg"), "check", "defs"],
                         capture_output=True, check=False, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr
