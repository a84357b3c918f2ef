"""The stack's processes: one per docker-compose service, started, watched and stopped from a state file.

Each process runs in a session of its own (``start_new_session``): it outlives the command that started it,
``down`` signals its whole process group (the app's workers, the code server's), and Dagster honours SIGTERM
(a job started without job control ignores SIGINT, and Dagster copies that onto SIGTERM). Each run is a session
of its own too (:mod:`.workers`): ``down`` stops the ones in progress after the daemon, ``restart`` none.
The state file records what ``up`` started, so ``up`` twice reuses what runs and ``down`` stops only that;
it keeps the ports across ``down`` so that clients find the same addresses again.

The processes get the caller's environment (``SALESPRED_*`` storage URLs included: that is the hook for
object storage), plus ``DAGSTER_HOME``, the ``DAGSTER_PG_*`` address, and the database URLs: the configured
ones, else the embedded services' (started here, and stopped by ``down`` only if ``up`` started them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salespred_assets import settings
from salespred_assets.embedded import services as embedded
from salespred_assets.errors import SalespredError
from salespred_assets.stack import config

START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class Service:
    name: str            # as `salespred stack status` shows it
    compose: str         # the docker-compose service it stands for
    preferred_port: int  # compose's port

    def command(self, port: int, workspace: Path) -> list[str]:
        if self.name == "code-server":
            # Runs are launched with this environment's Python (`<python> -m dagster api execute_run`), not
            # whichever `dagster` the PATH finds: the venv's bin need not be on it.
            return [_tool("dagster"), "api", "grpc", "-m", "salespred_assets.definitions", "-h", "127.0.0.1",
                    "-p", str(port), "--use-python-environment-entry-point"]
        if self.name == "webserver":
            return [_tool("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]
        if self.name == "daemon":
            return [_tool("dagster-daemon"), "run", "-w", str(workspace)]
        return [_tool("salespred"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]


CODE_SERVER = Service("code-server", "user-code", 4000)
WEBSERVER = Service("webserver", "dagster-webserver", 3000)
DAEMON = Service("daemon", "dagster-daemon", 0)  # no port: it only talks to the instance and the code server
APP = Service("app", "seller-app", 8000)
SERVICES = (CODE_SERVER, WEBSERVER, DAEMON, APP)  # start order; `down` stops in reverse
BY_NAME = {s.name: s for s in SERVICES}


def _tool(name: str) -> str:
    """The console script of this Python's environment (the venv's, even when it is not on PATH)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SalespredError(f"`{name}` is not installed in this environment: pip install 'salespred[deploy]'")
    return found


# ---- paths and state ------------------------------------------------------------------------------------------
def stack_dir() -> Path:
    path = settings.home() / "stack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def dagster_home() -> Path:
    return stack_dir() / "dagster_home"


def runs_dir() -> Path:
    """Each run's output and its worker's record (the run launcher's ``log_dir``, :mod:`.workers`)."""
    return settings.home() / "logs" / "runs"


def log_path(name: str) -> Path:
    path = settings.home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{name}.log"


def _state_path() -> Path:
    return stack_dir() / "state.json"


def read_state() -> dict[str, Any]:
    try:
        return json.loads(_state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(state: dict[str, Any]) -> None:
    tmp = _state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_path())


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with open(stack_dir() / "state.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- processes --------------------------------------------------------------------------------------------------
def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None once it has exited, even unreaped): tells our process from a
    later one that reuses its number."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def alive(entry: dict[str, Any]) -> bool:
    started = start_time(int(entry["pid"]))
    return started is not None and started == entry.get("start_time")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


MARKER_VARIABLE = "_SALESPRED_STACK_PROCESS"  # internal: not a setting, so not SALESPRED_*


def _marked(pid: str, marker: str) -> bool:
    """Whether process ``pid`` was started with ``MARKER_VARIABLE=marker`` (inherited by its children)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARKER_VARIABLE}={marker}".encode() in environ


def _ours(entry: dict[str, Any]) -> bool:
    """The recorded group is still the one started: its leader is alive, or a member of it started no earlier
    than the leader did (a process it spawned) and carries the group's marker in its environment, when the
    entry has one. The number alone may name someone else's group: after a reboot, or once the group has
    ended and a later process has taken the number."""
    if alive(entry):
        return True
    pgid, since, marker = int(entry["pgid"]), entry.get("start_time"), entry.get("marker")
    if since is None:
        return False
    return any(started >= int(since) and (marker is None or _marked(str(pid), str(marker)))
               for pid, started in group_members(pgid))


def group_members(pgid: int) -> list[tuple[int, int]]:
    """(pid, kernel start time) of the live (not zombie) processes of group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append((int(stat.parent.name), int(fields[19])))
    return found


def _stop_group(entry: dict[str, Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after ``timeout_s``; nothing when the group is no
    longer the one started (see :func:`_ours`)."""
    stop_groups([entry], timeout_s)


def stop_groups(entries: list[dict[str, Any]], timeout_s: float = STOP_TIMEOUT_S, leader_only: bool = False) -> int:
    """:func:`_stop_group` for several groups at once (all signalled, then waited for together); return how
    many were still ours to stop. ``leader_only``: SIGTERM to the leader alone, which stops its own children
    in order (a run worker and its step processes: SIGTERM to the group would kill Python's forkserver under
    the running steps first), as tini forwards ``docker stop`` to a container's main process."""
    ours = [e for e in entries if _ours(e)]
    for entry in ours:
        with contextlib.suppress(ProcessLookupError):
            if not leader_only:
                os.killpg(int(entry["pgid"]), signal.SIGTERM)
            elif alive(entry):
                os.kill(int(entry["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(e) or _group_exists(int(e["pgid"])) for e in ours):
        time.sleep(0.2)
    for entry in ours:
        if not _ours(entry):  # ended meanwhile: its number may already be someone else's
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(entry["pgid"]), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_group_exists(int(e["pgid"])) for e in ours):
        time.sleep(0.1)
    return len(ours)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members that are zombies only (their parent has not reaped them) count as gone.
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path(name).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])


# ---- health -----------------------------------------------------------------------------------------------------
def health(service: Service, entry: dict[str, Any], env: dict[str, str] | None = None) -> str | None:
    """None when the service answers, else why not."""
    if not alive(entry):
        return "not running"
    port = int(entry.get("port") or 0)
    if service is CODE_SERVER:
        if not _listening(port):
            return f"not listening on port {port} yet"
        return _command_ok([_tool("dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)], env)
    if service is DAEMON:
        return _command_ok([_tool("dagster-daemon"), "liveness-check"], env)
    path = "/server_info" if service is WEBSERVER else "/healthz"
    return _http_ok(f"http://127.0.0.1:{port}{path}")


def _http_ok(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}"
    return None if response.status_code == 200 else f"{url} answered {response.status_code}"


def _command_ok(cmd: list[str], env: dict[str, str] | None) -> str | None:
    try:
        done = subprocess.run(cmd, env=env or _instance_env(), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return f"`{Path(cmd[0]).name} {' '.join(cmd[1:])}` timed out"
    if done.returncode == 0:
        return None
    last = (done.stdout + done.stderr).strip().splitlines()
    return f"{Path(cmd[0]).name} {cmd[1]}: {last[-1][:200] if last else f'exit {done.returncode}'}"


# ---- environment ------------------------------------------------------------------------------------------------
def _instance_env() -> dict[str, str]:
    """The environment for Dagster's CLI tools against the stack's instance (health checks, operators)."""
    target = config.postgres_target(settings.get(settings.ENV_DAGSTER_PG_URL))
    return {**os.environ, "DAGSTER_HOME": str(dagster_home()), **target.env()}


def ensure_database(target: config.PostgresTarget) -> bool:
    """Create the instance's own database if missing; True when it was created."""
    import psycopg
    from psycopg import sql

    try:
        conn = psycopg.connect(host=target.host, port=target.port, user=target.username,
                               password=target.password or None, dbname="postgres", autocommit=True,
                               connect_timeout=5)
    except psycopg.Error as exc:
        raise SalespredError(
            f"the Dagster instance's PostgreSQL at {target.masked()} does not answer: {str(exc).strip()[:200]} "
            f"(start PostgreSQL, or set {settings.ENV_DAGSTER_PG_URL} to a server you can reach)") from exc
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
        return True


def _service_env(state: dict[str, Any], progress: Callable[[str], None]) -> dict[str, str]:
    """What every process of the stack gets: the caller's environment, the instance, the databases."""
    env = _instance_env()
    env[settings.ENV_HOME] = str(settings.home())  # absolute: every process shares the same home
    # Each process runs in the stack's own directory: a relative storage path would name another folder there.
    for var in (settings.ENV_STORAGE_DIR, settings.ENV_STORAGE_URL):
        raw = settings.get(var)
        if raw and "://" not in raw:
            env[var] = str(Path(raw).expanduser().resolve())
    started = set(state.get("embedded_started", []))
    for var, name in ((settings.ENV_MONGO, "mongo"), (settings.ENV_REDIS, "redis")):
        if settings.get(var):
            continue
        if settings.environment() == "production":
            raise SalespredError(f"{var} must be set when SALESPRED_ENV=production")
        was_running = embedded.running(name)
        env[var] = embedded.ensure(name)
        if not was_running:
            started.add(name)
            progress(f"{embedded.EMBEDDED[name].label}: started for the stack at {env[var]}")
    if not settings.get(settings.ENV_SQL):
        env[settings.ENV_SQL] = embedded.sqlite_url()
    env.setdefault(settings.ENV_AUTOMATION, "on")
    state["embedded_started"] = sorted(started)
    return env


# ---- up, status, down -------------------------------------------------------------------------------------------
def _choose_port(service: Service, state: dict[str, Any], requested: int | None,
                 progress: Callable[[str], None]) -> int:
    if not service.preferred_port:
        return 0
    wanted = int(requested or state.get("ports", {}).get(service.name) or service.preferred_port)
    if embedded.port_free(wanted):
        return wanted
    port = embedded.free_port()
    progress(f"{service.name}: port {wanted} is taken by another process; using {port}")
    return port


def _start(service: Service, port: int, workspace: Path, env: dict[str, str]) -> dict[str, Any]:
    log = log_path(service.name)
    with open(log, "ab") as fh:
        fh.write(f"\n---- salespred stack up: {service.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        fh.flush()
        marker = f"{service.name}@{stack_dir()}"  # tells its group from a later one that takes the number
        proc = subprocess.Popen(service.command(port, workspace), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**env, MARKER_VARIABLE: marker}, cwd=str(stack_dir()),
                                start_new_session=True)
    return {"pid": proc.pid, "pgid": proc.pid, "port": port, "start_time": start_time(proc.pid), "marker": marker,
            "log": str(log), "started_at": time.time()}


def _wait_healthy(service: Service, entry: dict[str, Any], env: dict[str, str],
                  progress: Callable[[str], None]) -> None:
    started = time.monotonic()
    reason: str | None = "not checked"
    next_note = started + 15
    while time.monotonic() - started < START_TIMEOUT_S:
        reason = health(service, entry, env)
        if reason is None:
            progress(f"{service.name}: healthy after {time.monotonic() - started:.1f} s")
            return
        if not alive(entry):
            break
        if time.monotonic() >= next_note:
            progress(f"{service.name}: waiting ({reason})")
            next_note = time.monotonic() + 15
        time.sleep(1.0)
    raise SalespredError(
        f"{service.name} ({service.compose} in docker-compose) did not become healthy: {reason}.\n"
        f"Last lines of {log_path(service.name)}:\n{log_tail(service.name)}\n"
        f"Fix the cause, then run `salespred stack up` again (running services are reused), or "
        f"`salespred stack down` to stop what was started.")


def up(ports: dict[str, int | None] | None = None,
       progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Start every service that is not running already, wait until each answers; return the state."""
    ports = ports or {}
    with _lock():
        state = read_state()
        target = config.postgres_target(settings.get(settings.ENV_DAGSTER_PG_URL))
        if ensure_database(target):
            progress(f"instance database: created {target.masked()}")
        env = _service_env(state, progress)
        services: dict[str, Any] = state.setdefault("services", {})
        running = {name: e for name, e in services.items() if alive(e)}
        code_port = (running["code-server"]["port"] if "code-server" in running
                     else _choose_port(CODE_SERVER, state, ports.get("code-server"), progress))
        instance_path, workspace = config.write_files(dagster_home(), stack_dir() / "compute_logs", target.port,
                                                      code_port, runs_dir())
        state.update(instance=str(instance_path), workspace=str(workspace), postgres=target.masked(),
                     dagster_home=str(dagster_home()))
        for service in SERVICES:
            entry = running.get(service.name)
            if entry is not None:
                progress(f"{service.name}: already running (pid {entry['pid']}), reused")
            else:
                port = code_port if service is CODE_SERVER else _choose_port(service, state,
                                                                           ports.get(service.name), progress)
                entry = _start(service, port, workspace, env)
                services[service.name] = entry
                state.setdefault("ports", {})[service.name] = port
                _write_state(state)
                where = f" on port {port}" if port else ""
                progress(f"{service.name}: started pid {entry['pid']}{where} (log {entry['log']})")
            if service is CODE_SERVER:  # the webserver and the daemon load the code location from it
                _wait_healthy(service, entry, env, progress)
        for service in SERVICES[1:]:
            _wait_healthy(service, services[service.name], env, progress)
        _write_state(state)
        return state


def restart(name: str, timeout_s: float = STOP_TIMEOUT_S,
            progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Stop one service's process group and start it again on the same port (``docker compose restart``).

    No service's group holds a run (each is a session of its own, see :mod:`.launcher`): the runs in progress
    go on, as the run containers do when compose restarts a service."""
    service = BY_NAME.get(name)
    if service is None:
        raise SalespredError(f"no stack service {name!r}: one of {', '.join(BY_NAME)}")
    with _lock():
        state = read_state()
        entry = state.get("services", {}).get(name)
        if entry is None or "workspace" not in state:
            raise SalespredError(f"{name} was not started by `salespred stack up`: start the stack first")
        env = _service_env(state, progress)
        _stop_group(entry, timeout_s)
        progress(f"{name}: stopped pid {entry['pid']}")
        entry = _start(service, int(entry.get("port") or 0), Path(state["workspace"]), env)
        state["services"][name] = entry
        _write_state(state)
        progress(f"{name}: started pid {entry['pid']}")
    _wait_healthy(service, entry, env, progress)
    return entry


def status() -> list[dict[str, Any]]:
    """One row per service: its compose name, pid, port and health (None: healthy)."""
    state = read_state()
    rows = []
    for service in SERVICES:
        entry = state.get("services", {}).get(service.name)
        if entry is None:
            rows.append({"service": service.name, "compose": service.compose, "pid": None, "port": None,
                         "health": "not started"})
            continue
        rows.append({"service": service.name, "compose": service.compose, "pid": entry["pid"],
                     "port": entry.get("port") or None, "health": health(service, entry)})
    return rows


def down(timeout_s: float = STOP_TIMEOUT_S) -> list[tuple[str, bool]]:
    """Stop what ``up`` started, in reverse order (the embedded services too, if ``up`` started them), and the
    runs in progress once the daemon, which launches them, is stopped."""
    from salespred_assets.stack import workers  # it imports this module

    with _lock():
        state = read_state()
        services = state.get("services", {})
        result = []
        for service in reversed(SERVICES):
            entry = services.pop(service.name, None)
            running = entry is not None and alive(entry)
            if entry is not None:
                _stop_group(entry, timeout_s)  # also what is left of its group when the leader is gone
            result.append((service.name, running))
            _write_state(state)
            if service is DAEMON:  # each run is a session of its own: no service's group holds it
                result.append(("runs in progress", workers.stop_all(runs_dir(), timeout_s) > 0))
        for name in state.pop("embedded_started", []):
            result.append((embedded.EMBEDDED[name].label, embedded.stop(name)))
        _write_state(state)
        return result
