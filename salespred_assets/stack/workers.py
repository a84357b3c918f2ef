"""Run workers: the process each run of the stack executes in, as a container is in docker-compose.

:class:`~salespred_assets.stack.launcher.ProcessRunLauncher` starts one per run (``dagster api execute_run``)
in a session of its own, so that no other process group's end takes it along: not the code server's
(``stack restart code-server``), nor the daemon's that started it. Each worker has a record, ``<run_id>.json``
beside its log ``<run_id>.log`` in the runs directory: what ``stack down`` reads to stop the workers still in
progress, and where the worker's exit status is written once its parent has reaped it. Nothing here knows
Dagster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salespred_assets.stack import processes


def boot_id() -> str:
    """This boot of this machine (Linux): a worker recorded under another one is gone (a reboot) or elsewhere."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def marker(run_id: str) -> str:
    """The value of ``processes.MARKER_VARIABLE`` a run's worker and its step processes carry."""
    return f"run {run_id}"


@dataclass(frozen=True)
class Worker:
    """A run worker as its run's tags name it: the process number, and what tells it from a later process
    that reuses the number (the kernel's start time and the machine's boot) and from other groups (the
    run's marker in the environment of its processes)."""

    pid: int
    start_time: str | None
    host: str
    boot: str = ""
    run_id: str = ""

    def entry(self) -> dict[str, Any]:
        """As :mod:`.processes` names a process group (a worker leads its own)."""
        return {"pid": self.pid, "pgid": self.pid, "start_time": self.start_time,
                **({"marker": marker(self.run_id)} if self.run_id else {})}

    def here(self) -> bool:
        """Started during this boot of this machine (the host name may change meanwhile; the boot does not)."""
        return self.boot == boot_id() if self.boot else self.host == socket.gethostname()

    def alive(self) -> bool:
        """Running on this machine (an exited worker its parent has not reaped yet counts as gone)."""
        return self.here() and processes.alive(self.entry())


def record_path(directory: Path, run_id: str) -> Path:
    return directory / f"{run_id}.json"


def log_path(directory: Path, run_id: str) -> Path:
    return directory / f"{run_id}.log"


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def read_record(directory: Path, run_id: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(record_path(directory, run_id).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def spawn(command: Sequence[str], run_id: str, directory: Path, env: dict[str, str], label: str = "run") -> Worker:
    """Start ``command`` as the run's worker, in a session of its own, its output appended to the run's log;
    write its record, and reap it in a thread once it exits (its parent lives on: without ``wait`` it would
    stay a zombie until the parent ends)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = log_path(directory, run_id)
    with open(log, "ab") as fh:
        fh.write(f"\n---- {label} {run_id} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        fh.flush()
        proc = subprocess.Popen(list(command), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**env, processes.MARKER_VARIABLE: marker(run_id)}, start_new_session=True)
    worker = Worker(pid=proc.pid, start_time=processes.start_time(proc.pid), host=socket.gethostname(),
                    boot=boot_id(), run_id=run_id)
    record = {"run_id": run_id, **worker.entry(), "host": worker.host, "boot": worker.boot, "log": str(log),
              "started_at": time.time(), "returncode": None}
    _write(record_path(directory, run_id), record)
    threading.Thread(target=_reap, args=(proc, directory, run_id), name=f"reap-run-worker-{proc.pid}",
                     daemon=True).start()
    return worker


def _reap(proc: subprocess.Popen[bytes], directory: Path, run_id: str) -> None:
    # Wait for the exit without reaping: the unreaped leader keeps its number, so its group cannot be anyone
    # else's yet. Then end what the worker leaves behind (its forkserver and step processes outlive a killed
    # worker; a container takes them along), and reap.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    returncode = proc.wait()
    record = read_record(directory, run_id)
    if record is not None and record.get("pid") == proc.pid:  # a resumed run's newer worker keeps its own
        record["returncode"] = returncode
        _write(record_path(directory, run_id), record)


def exit_status(directory: Path, run_id: str, worker: Worker) -> int | None:
    """The worker's exit status, once the process that started it has reaped it (None: not known)."""
    record = read_record(directory, run_id)
    if record is None or record.get("pid") != worker.pid or record.get("start_time") != worker.start_time:
        return None
    code = record.get("returncode")
    return int(code) if code is not None else None


def describe_exit(returncode: int | None) -> str:
    """A process's end as a sentence's predicate: ``exited with code 1``, ``was terminated by signal 9
    (SIGKILL)``."""
    if returncode is None:
        return "has exited (its exit status is unknown)"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    return f"was terminated by signal {-returncode} ({name})"


def log_tail(directory: Path, run_id: str, lines: int = 20) -> str | None:
    try:
        text = log_path(directory, run_id).read_text(errors="replace")
    except FileNotFoundError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def stop(worker: Worker, timeout_s: float) -> bool:
    """SIGTERM to the worker (which interrupts its steps in order), SIGKILL to its whole process group after
    ``timeout_s``: ``docker stop``. False when there was nothing of it left to stop."""
    return worker.here() and processes.stop_groups([worker.entry()], timeout_s, leader_only=True) > 0


def stop_all(directory: Path, timeout_s: float) -> int:
    """Stop every worker in progress that has a record in ``directory`` (``stack down``), and drop the
    records; return how many were stopped. A record whose process is gone, or whose number another process
    has taken since, stops nothing."""
    paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    entries = []
    for path in paths:
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            record = json.loads(path.read_text())
            worker = Worker(pid=int(record["pid"]), start_time=record.get("start_time"), host=record.get("host", ""),
                            boot=record.get("boot", ""), run_id=str(record.get("run_id") or ""))
            # Not only those still running: a killed worker's step processes may be left (its group, marked).
            if worker.here():
                entries.append(worker.entry())
    stopped = processes.stop_groups(entries, timeout_s, leader_only=True) if entries else 0
    for path in paths:
        path.unlink(missing_ok=True)
    return stopped
