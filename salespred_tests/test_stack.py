"""`salespred stack`: what it generates from the production files (no servers; the running stack is in
test_stack_running.py, marked slow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from salespred_assets.stack import config, processes

REPO = Path(__file__).resolve().parents[1]


def _differences(a: Any, b: Any, path: str = "") -> set[str]:
    """The key paths where two loaded YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return set() if a == b else {path}


def test_the_packaged_instance_is_deploy_dagster_yaml():
    packaged = REPO / "salespred_assets" / "stack" / "dagster.deploy.yaml"
    assert packaged.read_bytes() == (REPO / "deploy" / "dagster.yaml").read_bytes(), \
        "copy deploy/dagster.yaml to salespred_assets/stack/dagster.deploy.yaml (an installed wheel reads that one)"


def test_the_instance_differs_from_deploy_only_in_the_launcher_and_the_addresses(tmp_path):
    deploy = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    instance_path, _ = config.write_files(tmp_path / "home", tmp_path / "logs", 5432, 4000, tmp_path / "runs")
    generated = yaml.safe_load(instance_path.read_text())
    assert {p.split(".")[0] if p.startswith("run_launcher.") else p for p in _differences(deploy, generated)} == \
        {"run_launcher", "compute_logs.config.base_dir"}
    # Each run a process of its own, as DockerRunLauncher makes it a container (not a child of the code server).
    assert generated["run_launcher"] == {"module": "salespred_assets.stack.launcher", "class": "ProcessRunLauncher",
                                         "config": {"log_dir": str(tmp_path / "runs")}}
    assert "DefaultRunLauncher" in instance_path.read_text().split("\n\n")[0]  # the header says why not
    assert generated["compute_logs"]["config"]["base_dir"] == str(tmp_path / "logs")
    # The address stays in the same DAGSTER_PG_* variables; a server on another port changes the port alone.
    moved_path, _ = config.write_files(tmp_path / "h2", tmp_path / "logs", 6543, 4000, tmp_path / "runs")
    moved = yaml.safe_load(moved_path.read_text())
    assert _differences(generated, moved) == {f"{s}.config.postgres_db.port" for s in config.STORAGES}


def test_the_generated_instance_loads_as_a_dagster_instance_config(tmp_path):
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import ConfigurableClassData

    from salespred_assets.stack.launcher import ProcessRunLauncher

    config.write_files(tmp_path, tmp_path / "logs", 5432, 4000, tmp_path / "runs")
    loaded, _ = dagster_instance_config(str(tmp_path))
    assert loaded["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert loaded["run_retries"]["enabled"] is True
    launcher = loaded["run_launcher"]
    built = ConfigurableClassData(launcher["module"], launcher["class"],
                                  yaml.safe_dump(launcher["config"])).rehydrate(ProcessRunLauncher)
    assert isinstance(built, ProcessRunLauncher) and built.log_dir == tmp_path / "runs"


def test_the_workspace_is_the_docker_workspace_on_this_machine(tmp_path):
    docker = yaml.safe_load((REPO / "deploy" / "workspace.docker.yaml").read_text())
    _, workspace_path = config.write_files(tmp_path, tmp_path / "logs", 5432, 4123, tmp_path / "runs")
    local = yaml.safe_load(workspace_path.read_text())
    docker["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=4123)
    assert local == docker


def test_the_instance_database_url_is_read_into_the_deploy_variables():
    target = config.postgres_target("postgresql+psycopg://dagster:s%40cret@db.example:5433/instance")
    assert target.env() == {"DAGSTER_PG_HOST": "db.example", "DAGSTER_PG_USERNAME": "dagster",
                            "DAGSTER_PG_PASSWORD": "s@cret", "DAGSTER_PG_DB": "instance"}
    assert target.port == 5433 and "s@cret" not in target.masked()
    default = config.postgres_target(None)
    assert (default.host, default.port, default.database, default.password) == \
        ("127.0.0.1", 5432, "salespred_dagster", "")


def test_each_stack_process_stands_for_one_compose_service():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert {s.compose for s in processes.SERVICES} == \
        {"user-code", "dagster-webserver", "dagster-daemon", "seller-app"} <= set(compose["services"])
    for service in processes.SERVICES:
        if service.preferred_port:  # compose's own port, so the addresses read the same
            assert str(service.preferred_port) in str(compose["services"][service.compose])


def test_down_never_signals_a_group_the_stack_did_not_start():
    """After a reboot the recorded group number may be someone else's: only a group whose members started no
    earlier than the recorded leader is stopped."""
    import subprocess

    from salespred_assets.stack import processes

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = processes.start_time(other.pid)
        assert started is not None
        stale = {"pid": 2**22 + 7, "pgid": other.pid, "start_time": str(int(started) + 10**6)}  # a later leader
        processes._stop_group(stale, timeout_s=1)
        assert other.poll() is None  # untouched
        ours = {"pid": 2**22 + 7, "pgid": other.pid, "start_time": started}  # leader gone, its member left
        processes._stop_group(ours, timeout_s=1)
        assert other.wait(10) is not None
    finally:
        other.kill()
        other.wait()


def test_relative_storage_paths_reach_every_process_as_the_caller_meant_them(tmp_path, monkeypatch):
    """The stack's processes run in its own directory: a relative SALESPRED_STORAGE_DIR (or a plain-path
    SALESPRED_STORAGE_URL) is resolved where `stack up` was run, not there; URLs pass unchanged."""
    from salespred_assets import settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    for var in (settings.ENV_MONGO, settings.ENV_REDIS, settings.ENV_SQL):  # no embedded server is started
        monkeypatch.setenv(var, "unused://set-by-the-test")
    monkeypatch.setenv(settings.ENV_STORAGE_DIR, "frames")
    monkeypatch.setenv(settings.ENV_STORAGE_URL, "s3://bucket/prefix")
    env = processes._service_env({}, progress=lambda _: None)
    assert env[settings.ENV_STORAGE_DIR] == str(tmp_path / "frames")
    assert env[settings.ENV_STORAGE_URL] == "s3://bucket/prefix"
    monkeypatch.setenv(settings.ENV_STORAGE_URL, "./elsewhere")
    assert processes._service_env({}, progress=lambda _: None)[settings.ENV_STORAGE_URL] == str(tmp_path / "elsewhere")
