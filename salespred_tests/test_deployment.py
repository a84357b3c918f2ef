"""The deployment files, checked on a machine without a Docker engine.

docker-compose.yml, the Dockerfile and deploy/ are parsed and compared with what the code reads;
the production Dagster instance is loaded by Dagster itself (and, where PostgreSQL runs, opened on
a real server); the code-server command from the compose file is started as-is; the PostgreSQL init
script runs against a throwaway PostgreSQL cluster.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from salespred_tests.conftest import REPO, free_port, wait_for

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
ENV_EXAMPLE = REPO / ".env.example"

# What the code and the brief of the deployment expect, by service: container ports.
EXPECTED_PORTS = {
    "mongo": 27017, "redis": 6379, "postgres": 5432,
    "user-code": 4000, "dagster-webserver": 3000, "seller-app": 8000,
}
DATABASES = ("mongo", "redis", "postgres")
SECRET_NAME = re.compile(r"(?i)(PASSWORD|SECRET|TOKEN|_KEY$|AUTH)")
VAR_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?")


# ---------------------------------------------------------------------------------------------
# helpers


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_text() -> str:
    """Every string value of the compose file (comments left out), one per line."""
    def strings(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node.replace("$$", "")  # $$ is a literal dollar, not a variable
    return "\n".join(strings(compose()))


def env_references(node: object) -> Iterator[str]:
    """Names of the variables a Dagster config reads through {env: NAME}."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from env_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_references(value)


def services() -> dict[str, dict]:
    return compose()["services"]


def container_ports(service: dict) -> set[int]:
    ports: set[int] = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split(":")[-1].split("/")[0]))
    ports.update(int(str(p).split("/")[0]) for p in service.get("expose", []))
    return ports


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation for the forms this file uses: ${V}, ${V:-default}, ${V:?error}."""
    out, i = [], 0
    while i < len(value):
        if not value.startswith("${", i):
            out.append(value[i])
            i += 1
            continue
        depth, j = 0, i
        while True:  # find the brace that closes this ${, past nested ones
            if value.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            if value[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        body = value[i + 2:j]
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", body).group(0)
        rest = body[len(name):]
        if rest.startswith(":-"):
            out.append(env.get(name) or interpolate(rest[2:], env))
        elif rest.startswith(":?") and not env.get(name):
            raise KeyError(f"{name}: {rest[2:]}")
        else:
            out.append(env.get(name, ""))
        i = j + 1
    return "".join(out)


def code_setting_names() -> set[str]:
    """Every SALESPRED_* variable the package reads: settings.ENV_* and literals in its modules."""
    from salespred_assets import settings

    names = {v for k, v in vars(settings).items() if k.startswith("ENV_") and isinstance(v, str)}
    for path in Path(settings.__file__).parent.rglob("*.py"):
        names |= set(re.findall(r"[\"'](SALESPRED_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8")))
    return names


def env_example_names() -> set[str]:
    return set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))


def dagster_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def service_command(name: str) -> list[str]:
    command = services()[name]["command"]
    return command if isinstance(command, list) else command.split()


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_has_every_service_with_its_port():
    svcs = services()
    expected = {*EXPECTED_PORTS, "dagster-daemon", "sqlserver"}
    assert expected <= set(svcs), f"missing services: {sorted(expected - set(svcs))}"
    for name, port in EXPECTED_PORTS.items():
        assert port in container_ports(svcs[name]), f"{name} does not offer port {port}"
    assert svcs["sqlserver"]["profiles"] == ["sqlserver"]
    assert 1433 in container_ports(svcs["sqlserver"])
    # Only the two front doors are published on the host; databases stay on the compose network.
    published = {name for name, s in svcs.items() if s.get("ports")}
    assert published == {"dagster-webserver", "seller-app"}


def test_compose_commands_match_the_code():
    assert service_command("user-code") == [
        "dagster", "api", "grpc", "-m", "salespred_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
    assert service_command("seller-app") == ["salespred", "serve", "--host", "0.0.0.0", "--port", "8000"]
    web = service_command("dagster-webserver")
    assert web[0] == "dagster-webserver" and web[web.index("-p") + 1] == "3000"
    daemon = service_command("dagster-daemon")
    assert daemon[:2] == ["dagster-daemon", "run"]
    # Both load the workspace file the Dockerfile puts into DAGSTER_HOME.
    copied = re.search(r"COPY .*deploy/workspace\.docker\.yaml\s+\$\{DAGSTER_HOME\}/(\S+)", DOCKERFILE.read_text())
    assert copied, "the Dockerfile does not copy deploy/workspace.docker.yaml into DAGSTER_HOME"
    workspace_in_image = f"/opt/dagster/dagster_home/{copied.group(1)}"
    assert web[web.index("-w") + 1] == workspace_in_image
    assert daemon[daemon.index("-w") + 1] == workspace_in_image


def test_seller_app_command_exists_in_the_cli():
    from salespred_assets.cli import cli

    serve = cli.commands.get("serve")
    if serve is None:
        pytest.skip("`salespred serve` is not in the CLI yet (the seller app issue adds it)")
    options = {opt for param in serve.params for opt in getattr(param, "opts", [])}
    assert {"--host", "--port"} <= options


def test_compose_variable_names_are_the_ones_the_code_reads():
    code_names = code_setting_names()
    svcs = services()
    used = {k for s in svcs.values() for k in environment(s) if k.startswith("SALESPRED_")}
    assert used <= code_names, f"compose sets variables the code never reads: {sorted(used - code_names)}"
    connection = {"SALESPRED_ENV", "SALESPRED_MONGO_URI", "SALESPRED_REDIS_URL", "SALESPRED_SQL_URL",
                  "SALESPRED_HOME"} & code_names
    assert len(connection) == 5, "settings.py no longer names the five connection variables"
    for name in ("user-code", "dagster-daemon", "seller-app"):
        env = environment(svcs[name])
        assert connection <= set(env), f"{name} lacks {sorted(connection - set(env))}"
        assert env["SALESPRED_ENV"] == "production", f"{name} must refuse the embedded fallbacks"
    for name in ("user-code", "dagster-daemon"):
        assert "SALESPRED_STORAGE_DIR" in environment(svcs[name])
    if "SALESPRED_SECRET_KEY" in code_names:
        assert "SALESPRED_SECRET_KEY" in environment(svcs["seller-app"])
    # Least privilege: the Dagster processes never receive the app's signing key.
    for name in ("user-code", "dagster-daemon", "dagster-webserver"):
        assert "SALESPRED_SECRET_KEY" not in environment(svcs[name])


def test_run_containers_receive_every_variable_they_need():
    """The DockerRunLauncher copies env_vars from the daemon; a name the daemon lacks fails each run."""
    svcs = services()
    launcher = dagster_yaml()["run_launcher"]["config"]
    daemon_env = environment(svcs["dagster-daemon"])
    missing = [v for v in launcher["env_vars"] if v not in daemon_env]
    assert not missing, f"the daemon cannot forward {missing} to run containers"
    instance_vars = set(env_references(dagster_yaml()))
    assert instance_vars, "deploy/dagster.yaml reads no credentials from the environment"
    assert instance_vars <= set(launcher["env_vars"]), "runs could not open the instance"
    for name in ("user-code", "dagster-webserver", "dagster-daemon"):
        env = environment(svcs[name])
        assert instance_vars <= set(env), f"{name} cannot open the instance: {sorted(instance_vars - set(env))}"
    # The launcher's network and volumes are the compose ones, by their fixed names.
    doc = compose()
    assert launcher["network"] in {n.get("name") for n in doc["networks"].values()}
    volume_names = {v.get("name") for v in doc["volumes"].values() if v}
    for mount in launcher["container_kwargs"]["volumes"]:
        assert mount.split(":")[0] in volume_names, f"{mount}: no compose volume by that name"
    storage_mount = next(m for m in launcher["container_kwargs"]["volumes"] if m.startswith("salespred-storage:"))
    assert storage_mount.split(":")[1] == environment(svcs["dagster-daemon"])["SALESPRED_STORAGE_DIR"]


def test_every_compose_variable_has_an_entry_in_env_example():
    referenced = {m.group("name") for m in VAR_REF.finditer(compose_text())}
    assert referenced, "compose references no variable at all"
    missing = referenced - env_example_names()
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_leaves_every_secret_empty():
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m and SECRET_NAME.search(m.group(1)):
            assert m.group(2).strip() == "", f".env.example holds a value for {m.group(1)}"


def test_no_secret_is_inline_in_compose():
    from salespred_tests.test_secret_scan import load_scanner

    text = compose_text()
    # Secrets are required (${V} or ${V:?...}); a default would ship a password with the repository.
    for m in VAR_REF.finditer(text):
        if SECRET_NAME.search(m.group("name")):
            assert m.group("op") in (None, ":?", "?"), f"${{{m.group('name')}}} has a default value"
    for svc_name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:\?[^}]*)?\}", value), \
                    f"{svc_name}.{key} is not a reference to .env"
            for password in re.findall(r"://[^/\s:@]*:([^@\s]+)@", value):
                assert password.startswith("${"), f"{svc_name}.{key} has a password inline in a URL"
        command = svc.get("command") or []
        if "--requirepass" in command:
            assert command[command.index("--requirepass") + 1].startswith("${")
    assert load_scanner().scan_text("docker-compose.yml", COMPOSE_FILE.read_text()) == []


def test_every_image_is_pinned():
    tags = {}
    for name, svc in services().items():
        image = interpolate(svc["image"], {})
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
        tags[name] = image.rsplit(":", 1)[1]
    for name, tag in tags.items():
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: tag {tag!r} is not a version"
    for match in re.finditer(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), flags=re.M):
        assert re.search(r":\d+\.\d+\.\d+", match.group(1)), f"base image {match.group(1)} is not pinned"


def test_databases_have_healthchecks_and_dependents_wait_for_them():
    svcs = services()
    checks = {name: " ".join(map(str, svcs[name]["healthcheck"]["test"])) for name in DATABASES}
    assert "mongosh" in checks["mongo"] and "/opt/salespred/mongo-rs/healthcheck.js" in checks["mongo"]
    assert "redis-cli" in checks["redis"] and "ping" in checks["redis"]
    assert "pg_isready" in checks["postgres"]
    for name in ("user-code", "dagster-webserver", "dagster-daemon", "seller-app", "sqlserver"):
        assert svcs[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, svc in svcs.items():
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition for each service"
        for dep, spec in depends.items():
            wanted = "service_completed_successfully" if dep == "sqlserver-init" else "service_healthy"
            assert spec.get("condition") == wanted, f"{name} starts before {dep} is ready"
    for name in ("user-code", "seller-app"):
        assert {"mongo", "redis"} <= set(svcs[name]["depends_on"])
    for name in ("dagster-webserver", "dagster-daemon"):
        assert {"postgres", "user-code"} <= set(svcs[name]["depends_on"])


def test_databases_keep_their_data_and_require_auth():
    svcs = services()
    for name in DATABASES:
        assert any(str(v).split(":")[0].endswith("-data") for v in svcs[name]["volumes"]), f"{name} has no volume"
    mongo_env = environment(svcs["mongo"])
    assert {"MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"} <= set(mongo_env)
    redis_cmd = svcs["redis"]["command"]
    assert "--requirepass" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    # Each init directory compose mounts exists and holds a script.
    for name in ("mongo", "postgres"):
        mount = next(v for v in svcs[name]["volumes"] if "docker-entrypoint-initdb.d" in v)
        source = REPO / mount.split(":")[0]
        assert source.is_dir() and any(source.iterdir()), f"{mount}: nothing to run"
    # The postgres entrypoint sources a non-executable .sh into its own shell; ours must run on its own.
    assert os.access(DEPLOY / "postgres" / "10-create-databases.sh", os.X_OK)
    # A replica set with authentication needs a key file: the entrypoint makes the one --keyFile names,
    # in a volume of its own (kept across restarts); nothing in the init directory but first-start scripts.
    mongo = svcs["mongo"]
    keyfile = mongo["command"][mongo["command"].index("--keyFile") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mongo["volumes"]}
    assert any(keyfile.startswith(target + "/") and source.endswith("-config") for target, source in mounts.items())
    scripts = mounts[str(Path(mongo["entrypoint"][-1]).parent)]
    assert (REPO / scripts / "entrypoint.sh").is_file() and (REPO / scripts / "healthcheck.js").is_file()


def test_mongo_entrypoint_makes_a_key_file_once_and_hands_over(tmp_path):
    """deploy/mongo-rs/entrypoint.sh outside its container: the image's entrypoint and chown are stand-ins."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in ("docker-entrypoint.sh", "chown"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n')
        (bin_dir / name).chmod(0o755)
    keyfile = tmp_path / "configdb" / "replica-set.key"
    keyfile.parent.mkdir()
    args = ["mongod", "--replSet", "rs0", "--keyFile", str(keyfile), "--bind_ip_all"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run() -> None:
        done = subprocess.run(["bash", str(DEPLOY / "mongo-rs" / "entrypoint.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr

    run()
    key = keyfile.read_text()
    assert 6 <= len(key) <= 1024 and re.fullmatch(r"[A-Za-z0-9+/=]+", key)  # what mongod accepts
    assert keyfile.stat().st_mode & 0o777 == 0o400
    run()  # a restart keeps the key
    assert keyfile.read_text() == key
    handed_over = f"docker-entrypoint.sh {' '.join(args)}"  # the same arguments, unchanged
    assert calls.read_text().splitlines() == [f"chown mongodb:mongodb {keyfile}", handed_over] * 2


def test_compose_urls_reach_the_compose_services():
    """The URLs the pipeline gets point at compose services on their ports, as users that exist."""
    import sqlalchemy as sa

    fake = {name: f"pw{i}" if SECRET_NAME.search(name) else "" for i, name in enumerate(sorted(env_example_names()))}
    env = {k: interpolate(v, fake) for k, v in environment(services()["user-code"]).items()}
    mongo = re.match(r"mongodb://(\w+):[^@]+@(\w[\w-]*):(\d+)/(\w+)\?authSource=(\w+)&replicaSet=(\w+)$",
                     env["SALESPRED_MONGO_URI"])
    assert mongo and mongo.group(2) == "mongo" and int(mongo.group(3)) == EXPECTED_PORTS["mongo"]
    init_js = (DEPLOY / "mongo" / "10-create-app-user.js").read_text()
    assert f'user: "{mongo.group(1)}"' in init_js and f'getSiblingDB("{mongo.group(4)}")' in init_js
    assert mongo.group(4) == mongo.group(5)
    # The replica set the URL names is the one the server runs and the healthcheck initiates, with the
    # member under the host name the URL uses (a client connects to the members the configuration lists).
    command = services()["mongo"]["command"]
    assert command[command.index("--replSet") + 1] == mongo.group(6)
    rs_js = (DEPLOY / "mongo-rs" / "healthcheck.js").read_text()
    assert f'_id: "{mongo.group(6)}"' in rs_js and f'host: "{mongo.group(2)}:{mongo.group(3)}"' in rs_js
    redis = re.match(r"redis://:[^@]+@(\w+):(\d+)/\d+$", env["SALESPRED_REDIS_URL"])
    assert redis and redis.group(1) == "redis" and int(redis.group(2)) == EXPECTED_PORTS["redis"]
    sql = sa.engine.make_url(env["SALESPRED_SQL_URL"])
    assert (sql.host, sql.port, sql.database, sql.username) == ("postgres", 5432, "salespred", "salespred")
    assert sql.password == fake["POSTGRES_SALESPRED_PASSWORD"]
    init_sh = (DEPLOY / "postgres" / "10-create-databases.sh").read_text()
    assert "CREATE DATABASE salespred OWNER salespred" in init_sh
    # An SQL URL set in .env replaces the PostgreSQL default (the SQL Server route).
    override = dict(fake, SALESPRED_SQL_URL="mssql+pyodbc://u:<password>@sqlserver:1433/salespred")
    assert interpolate(environment(services()["user-code"])["SALESPRED_SQL_URL"], override).startswith("mssql+pyodbc://")


# ---------------------------------------------------------------------------------------------
# deploy/dagster.yaml: Dagster's own loader and, where PostgreSQL runs, a real instance


def test_production_instance_config_passes_dagsters_validation(monkeypatch):
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import ConfigurableClassData

    config, custom_class = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert custom_class is None
    assert config["run_storage"]["class"] == "PostgresRunStorage"
    assert config["event_log_storage"]["class"] == "PostgresEventLogStorage"
    assert config["schedule_storage"]["class"] == "PostgresScheduleStorage"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    runs = config["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] > 0
    limited = {(limit["key"], limit.get("value")) for limit in runs["tag_concurrency_limits"]}
    assert ("salespred/workload", "database-heavy") in limited and ("dagster/backfill", None) in limited
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] > 0
    assert config["telemetry"]["enabled"] is False
    # Each pluggable class accepts its config block, as Dagster checks it before connecting.
    for name in env_references(config):
        monkeypatch.setenv(name, "unused")
    for section in ("run_storage", "event_log_storage", "schedule_storage", "run_coordinator",
                    "run_launcher", "compute_logs", "scheduler"):
        block = config[section]
        data = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block.get("config") or {}))
        klass = getattr(__import__(data.module_name, fromlist=[data.class_name]), data.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
        assert result.success, f"{section}: {result.errors}"


def test_production_instance_names_a_missing_credential(monkeypatch):
    import dagster as dg

    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "unused")
    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    with pytest.raises(dg.DagsterInvalidConfigError, match="DAGSTER_PG_PASSWORD"):
        dg.DagsterInstance.from_config(str(DEPLOY))


@pytest.fixture
def dagster_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL server, as the `dagster` database is in compose."""
    import sqlalchemy as sa

    url = sa.engine.make_url(postgres_url)
    name = f"dagster_t_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.integration
def test_production_instance_stores_runs_in_postgres(dagster_database: str, monkeypatch):
    import dagster as dg
    import sqlalchemy as sa
    from dagster_docker import DockerRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from salespred_assets.definitions import environment_definitions

    url = sa.engine.make_url(dagster_database)
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_USERNAME", url.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", url.database)
    instance = dg.DagsterInstance.from_config(str(DEPLOY))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_launcher, DockerRunLauncher)
        assert instance.run_launcher.networks == ["salespred"]
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == dagster_yaml()["concurrency"]["runs"]["max_concurrent_runs"]
        run = instance.create_run_for_job(job_def=environment_definitions().resolve_job_def("full_refresh"),
                                          tags={"salespred/workload": "database-heavy"})
        assert instance.get_run_by_id(run.run_id).tags["salespred/workload"] == "database-heavy"
    finally:
        instance.dispose()
    engine = sa.create_engine(dagster_database)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() == 1
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# workspaces and the code server


def test_workspaces_pass_dagsters_validation_and_point_at_the_code_server():
    from dagster._core.workspace.config_schema import ensure_workspace_config

    local = yaml.safe_load((REPO / "workspace.yaml").read_text())
    ensure_workspace_config(local, str(REPO / "workspace.yaml"))
    assert local["load_from"][0]["python_module"]["module_name"] == "salespred_assets.definitions"
    path = DEPLOY / "workspace.docker.yaml"
    docker = yaml.safe_load(path.read_text())
    ensure_workspace_config(docker, str(path))
    server = docker["load_from"][0]["grpc_server"]
    assert server["host"] in services()
    command = service_command(server["host"])
    assert int(command[command.index("-p") + 1]) == server["port"]
    assert server["port"] in container_ports(services()[server["host"]])
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert server["location_name"] == pyproject["tool"]["dagster"]["code_location_name"]


@pytest.mark.integration
def test_code_server_command_serves_the_asset_graph(tmp_path):
    """Run the user-code service's command as compose does (on a free local port)."""
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._serdes import deserialize_value

    port = free_port()
    command = service_command("user-code")
    command[command.index("-h") + 1] = "127.0.0.1"
    command[command.index("-p") + 1] = str(port)
    secrets = {name: "unused" for name in env_example_names() if SECRET_NAME.search(name)}
    env = {k: interpolate(v, secrets) for k, v in environment(services()["user-code"]).items()}
    env.update(SALESPRED_HOME=str(tmp_path / "home"), SALESPRED_STORAGE_DIR=str(tmp_path / "storage"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        env={**os.environ, **env, "DAGSTER_HOME": str(tmp_path / "dagster")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")

        def listening() -> bool:
            assert proc.poll() is None, f"the code server exited: {proc.stderr.read().decode()[-2000:]}"
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        assert wait_for(listening, 120, 0.5), "the code server did not start"
        assert client.health_check_query() == "SERVING"
        response = deserialize_value(client.list_repositories())
        assert [s.repository_name for s in response.repository_symbols] == ["__repository__"]
        # The image the DockerRunLauncher will start each run from.
        assert response.container_image == env["DAGSTER_CURRENT_IMAGE"] == "salespred:0.1.0"
        health = subprocess.run([str(Path(sys.executable).parent / "dagster"), "api", "grpc-health-check",
                                 "-p", str(port)], capture_output=True, check=False, timeout=60)
        assert health.returncode == 0, health.stderr.decode()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------------------------
# Dockerfile, packaging, Kubernetes values


def test_dockerfile_is_multi_stage_and_non_root():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert len(stages) >= 2 and "builder" in stages and "runtime" in stages
    assert re.search(r"pip install -c constraints\.txt \"\.\[\$\{EXTRAS\}\]\"", text)
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as root"
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in text
    for package in ("unixodbc", "odbc-mariadb"):
        assert re.search(rf"apt-get install[^\n]*\b{package}\b", text), f"{package} is not installed"
    assert "ARG INSTALL_MSODBCSQL18=0" in text and "msodbcsql18" in text
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, flags=re.M):
        if not source.startswith("/"):
            assert (REPO / source).exists(), f"COPY {source}: no such file"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored)


def test_deploy_extras_match_the_installed_dagster():
    """dagster-postgres/-docker/-k8s pin the exact dagster they were released with."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    pins = dict(req.split("==") for req in [*extras["deploy"], *extras.get("k8s", [])])
    assert {"dagster-postgres", "dagster-docker"} <= set(pins)
    dagster_version = importlib.metadata.version("dagster")
    assert f"dagster=={dagster_version}" in pyproject["project"]["dependencies"]
    constraints = (REPO / "constraints.txt").read_text().split()
    for dist, version in pins.items():
        assert f"{dist}=={version}" in constraints, f"constraints.txt does not pin {dist}=={version}"
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue  # the k8s extra is only in Kubernetes images
        assert installed == version
        requires = importlib.metadata.requires(dist) or []
        assert f"dagster=={dagster_version}" in requires, f"{dist} {version} wants {requires}"


def test_k8s_values_use_the_official_chart_safely():
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["image"]["tag"] not in ("", "latest", None)
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "salespred_assets.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    secrets = {s["name"] for s in values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]}
    assert secrets and secrets == {s["name"] for s in deployment["envSecrets"]}
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]
    assert "postgresqlPassword" not in values["postgresql"]
    dagster_version = importlib.metadata.version("dagster")
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert values[component]["image"]["tag"] == dagster_version
    from salespred_tests.test_secret_scan import load_scanner

    assert load_scanner().scan_text("deploy/k8s/values.yaml", (DEPLOY / "k8s" / "values.yaml").read_text()) == []


# ---------------------------------------------------------------------------------------------
# deploy/postgres: the init script on a throwaway PostgreSQL cluster


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    return Path(found).parent if found else (candidates[0].parent if candidates else None)


@pytest.fixture
def scratch_postgres(request) -> Iterator[dict[str, str]]:
    """A PostgreSQL cluster of its own (initdb), with password auth over TCP, like the container."""
    bindir = _postgres_bin()
    if bindir is None or shutil.which("psql") is None:
        pytest.skip("initdb/psql are not installed (Debian: postgresql)")
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("initdb refuses root and there is no postgres user to run it")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="salespred-pg-"))  # outside pytest's 0700 tree
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    if run_as:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256"], check=True, capture_output=True, timeout=120)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield {"POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres", "PGHOST": str(base), "PGPORT": str(port)}
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, check=False, timeout=60)


@pytest.mark.integration
def test_postgres_init_creates_two_isolated_users(scratch_postgres):
    import psycopg

    passwords = {"POSTGRES_SALESPRED_PASSWORD": "rep'ort\"; DROP ROLE x; --", "DAGSTER_PG_PASSWORD": "dag$ter:@/pw"}
    script = DEPLOY / "postgres" / "10-create-databases.sh"
    done = subprocess.run(["bash", str(script)], env={**os.environ, **scratch_postgres, **passwords},
                          capture_output=True, check=False, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    def connect(user: str, password: str, db: str) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=int(scratch_postgres["PGPORT"]), user=user,
                               password=password, dbname=db, connect_timeout=5, autocommit=True)

    for user, var in (("salespred", "POSTGRES_SALESPRED_PASSWORD"), ("dagster", "DAGSTER_PG_PASSWORD")):
        with connect(user, passwords[var], user) as conn:
            conn.execute("CREATE TABLE probe (x int)")  # owns its database and its public schema
        with pytest.raises(psycopg.OperationalError):
            connect(user, "wrong-password", user)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        connect("salespred", passwords["POSTGRES_SALESPRED_PASSWORD"], "dagster")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        connect("dagster", passwords["DAGSTER_PG_PASSWORD"], "salespred")
    # Without its passwords the script stops before touching the server.
    missing = {k: v for k, v in os.environ.items() if k not in passwords}
    refused = subprocess.run(["bash", str(script)], env={**missing, **scratch_postgres},
                             capture_output=True, check=False, text=True, timeout=60)
    assert refused.returncode != 0 and "POSTGRES_SALESPRED_PASSWORD must be set" in refused.stderr
