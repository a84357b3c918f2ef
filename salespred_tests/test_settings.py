"""Configuration: helpers, and every SALESPRED_* variable declared once in settings (fast, no servers)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from salespred_assets import settings
from salespred_assets.defs.modeling.assets import TrainingConfig
from salespred_assets.registry import gate
from salespred_assets.settings import mask_url


# The passwords below are fakes, there to show that they are masked (hence `scan-secrets: allow`).
@pytest.mark.parametrize(("url", "masked"), [
    ("mongodb://app:s3cr3t@db.example.com:27017/sales?authSource=admin",
     "mongodb://app:***@db.example.com:27017/sales?authSource=admin"),
    ("mongodb+srv://app:p%40ss@cluster0.abcde.mongodb.net/?retryWrites=true",  # scan-secrets: allow
     "mongodb+srv://app:***@cluster0.abcde.mongodb.net/?retryWrites=true"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),  # scan-secrets: allow
    ("postgresql+psycopg://sales:pw@pg/salespred",  # scan-secrets: allow
     "postgresql+psycopg://sales:***@pg/salespred"),
    (("mssql+pyodbc://sa:Str0ng!@sql/db"  # scan-secrets: allow
      "?driver=ODBC+Driver+18+for+SQL+Server&TrustServerCertificate=yes"),
     "mssql+pyodbc://sa:***@sql/db?driver=ODBC+Driver+18+for+SQL+Server&TrustServerCertificate=yes"),
    ("mysql+pyodbc://root:@127.0.0.1:3306/test?driver=MariaDB+Unicode", "mysql+pyodbc://root:***@127.0.0.1:3306/test?driver=MariaDB+Unicode"),
    ("postgresql://pg/db?password=topsecret&sslmode=require", "postgresql://pg/db?password=***&sslmode=require"),
    ("sqlite:////tmp/x/salespred.db", "sqlite:////tmp/x/salespred.db"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_passwords_never_show(url, masked):
    assert mask_url(url) == masked
    for secret in ("s3cr3t", "p%40ss", "hunter2", ":pw@", "Str0ng!", "topsecret"):
        assert secret not in mask_url(url)


def test_usable_cores_follow_affinity_and_a_containers_cpu_quota(tmp_path):
    import os

    from salespred_assets.settings import usable_cores

    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "absent") == affinity  # no cgroup v2 file: the affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity  # no quota
    cpu_max.write_text("50000 100000\n")
    assert usable_cores(cpu_max) == 1  # half a CPU: one process
    cpu_max.write_text("150000 100000\n")
    assert usable_cores(cpu_max) == min(affinity, 2)  # 1.5 CPUs: two, if the affinity allows
    cpu_max.write_text("garbage\n")
    assert usable_cores(cpu_max) == affinity


# ---- every SALESPRED_* variable is declared once, in settings.VARIABLES --------------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "salespred_assets"
NAME = re.compile(r"\bSALESPRED_[A-Z0-9_]*")
_ENVIRON_READS = {("os", "getenv"), ("environ", "get"), ("os", "environ")}


def _named_variables() -> dict[str, set[str]]:
    """SALESPRED_* names in the package's files (code, templates, config) outside settings.py -> where."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".html", ".js", ".toml") \
                and path.name != "settings.py":
            for name in NAME.findall(path.read_text(encoding="utf-8")):
                found.setdefault(name, set()).add(str(path.relative_to(PACKAGE)))
    return found


def _environment_reads(tree: ast.AST) -> list[str]:
    """Variables a module reads from os.environ / os.getenv itself (a string, or a settings.ENV_* constant)."""
    reads = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            owner = node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if (owner_name, node.func.attr) in _ENVIRON_READS:
                target = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "environ" and isinstance(node.ctx, ast.Load):
            target = node.slice
        if isinstance(target, ast.Constant) and str(target.value).startswith("SALESPRED_"):
            reads.append(str(target.value))
        elif isinstance(target, ast.Attribute) and target.attr.startswith("ENV_"):
            reads.append(f"settings.{target.attr}")
    return reads


def test_every_variable_the_package_names_is_declared_in_settings():
    undeclared = {name: sorted(where) for name, where in _named_variables().items()
                  if name not in settings.VARIABLES
                  and not (name.endswith("_") and any(v.startswith(name) for v in settings.VARIABLES))}
    assert undeclared == {}, f"declare these in salespred_assets/settings.py VARIABLES: {undeclared}"
    constants = {v for k, v in vars(settings).items() if k.startswith("ENV_") and isinstance(v, str)}
    assert constants <= set(settings.VARIABLES), f"ENV_ constants not declared: {constants - set(settings.VARIABLES)}"


def test_no_module_but_settings_reads_a_variable_from_the_environment():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "settings.py":
            reads = _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
            if reads:
                offenders[str(path.relative_to(PACKAGE))] = reads
    assert offenders == {}, f"read these through salespred_assets.settings (get/value) instead: {offenders}"


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """The scanners above find an os.environ read and an os.getenv read, and get() refuses an undeclared name."""
    source = ("import os\nfrom salespred_assets import settings\n"
              "a = os.environ.get('SALESPRED_X')\nb = os.getenv(settings.ENV_SQL)\nc = os.environ['SALESPRED_Y']\n")
    assert _environment_reads(ast.parse(source)) == ["SALESPRED_X", "settings.ENV_SQL", "SALESPRED_Y"]
    with pytest.raises(KeyError, match="SALESPRED_NOT_DECLARED is not declared"):
        settings.get("SALESPRED_NOT_DECLARED")
    monkeypatch.delenv(settings.ENV_SENSOR_INTERVAL, raising=False)
    assert settings.positive_number(settings.ENV_SENSOR_INTERVAL) == float(
        settings.VARIABLES[settings.ENV_SENSOR_INTERVAL].default)


def test_the_declared_defaults_are_the_ones_the_code_uses(monkeypatch):
    for name in settings.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings, "_loaded", True)  # no .env file either
    assert float(settings.VARIABLES[settings.ENV_GATE_AUC_FLOOR].default) == gate.AUC_FLOOR
    assert settings.environment() == settings.VARIABLES[settings.ENV_ENV].default
    assert settings.automation_enabled() is (settings.VARIABLES[settings.ENV_AUTOMATION].default == "on")
    assert TrainingConfig().search == settings.VARIABLES[settings.ENV_SEARCH].default


def test_the_documented_table_is_the_declaration():
    page = settings.DOCS_PAGE.read_text(encoding="utf-8")
    assert settings.documented_table(page) == settings.markdown_table(), \
        "docs/operations.md's table of variables is stale: run `python -m salespred_assets.settings`"
    assert all(f"`{name}`" in settings.markdown_table() for name in settings.VARIABLES)


def test_the_definitions_the_cli_and_the_app_build_their_resources_one_way(monkeypatch, tmp_path):
    """resources.database_resources decides "configured or embedded" for all three (no server is contacted)."""
    from salespred_assets.app.main import create_app
    from salespred_assets.cli.common import databases
    from salespred_assets.errors import SalespredError
    from salespred_assets.resources import build_resources

    urls = {settings.ENV_MONGO: "mongodb://db.invalid:27017/sales", settings.ENV_SQL: f"sqlite:///{tmp_path / 'r.db'}",
            settings.ENV_REDIS: "redis://cache.invalid:6379/0"}
    for name, url in urls.items():
        monkeypatch.setenv(name, url)
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path))
    defined = build_resources()
    # The definitions carry the variables' names (Dagster resolves them, and keeps the values out of its config).
    assert (defined["mongo"].uri, defined["sql"].url, defined["redis"].url) == tuple(urls)
    mongo, sql, redis = databases()
    assert (mongo.uri, sql.url, redis.url) == tuple(urls.values())
    ctx = create_app(secret="x" * 64).state.ctx  # scan-secrets: allow (a placeholder)
    assert (ctx.mongo.uri, ctx.redis.url) == (urls[settings.ENV_MONGO], urls[settings.ENV_REDIS])
    assert (ctx.mongo.timeout_ms, ctx.redis.timeout_s) == (3000, 2.0)  # the app answers sooner than a job
    assert (mongo.timeout_ms, redis.timeout_s) == (defined["mongo"].timeout_ms, defined["redis"].timeout_s)

    monkeypatch.delenv(settings.ENV_REDIS)
    assert databases()[2].url == ""  # unset and local: the embedded service
    monkeypatch.setenv(settings.ENV_ENV, "production")
    with pytest.raises(SalespredError, match=f"{settings.ENV_REDIS} must be set when SALESPRED_ENV=production"):
        databases()
