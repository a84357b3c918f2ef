"""What every benchmark stage shares: the scales, the servers, the reference data, and running one `salespred`
command in a fresh process with its peak memory measured."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import sqlalchemy as sa

from salespred_assets import settings
from salespred_assets.core import synthetic
from salespred_assets.core.documents import records_frame, validate
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.settings import mask_url

SHARED_DATA = Path(settings.get(settings.ENV_SHARED_DATA)
                   or Path(__file__).resolve().parents[3].parent / "shared" / "data")
REFERENCE_CSV = SHARED_DATA / "opportunities_seed.csv"
SALESPRED = [sys.executable, "-m", "salespred_assets.cli"]
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass(frozen=True)
class Scale:
    name: str
    big_docs: int        # the large collection (a million at full scale)
    small_docs: int      # the baseline of the incremental comparison
    frame_rows: int      # rows of the SQL and Redis loads
    repeats: int
    lookup_seconds: int
    captures: int
    single_rows: int
    new_docs: int        # one incremental batch
    search: str          # training preset of the pipeline runs
    # The stack stage: the fanned-out rescore's partitions, the captures' window and ladder of rates (captures/s),
    # and the new-opportunity sensor's interval (the deployed default unless a smoke run needs seconds).
    stack_batches: int = 20
    capture_seconds: int = 120
    capture_rates: tuple[float, ...] = (5, 10, 20, 40, 80)
    stack_sensor_s: int = 30


SCALES = {
    "smoke": Scale("smoke", 2_000, 1_000, 1_000, 1, 1, 10, 20, 50, "fast",
                   stack_batches=4, capture_seconds=5, capture_rates=(1, 2), stack_sensor_s=5),
    # A tenth of full: a quick look at ratios while working on a stage (`--scale medium`).
    "medium": Scale("medium", 100_000, 10_000, 50_000, 3, 5, 100, 300, 1_000, "full"),
    "full": Scale("full", 1_000_000, 100_000, 200_000, 3, 10, 300, 1_000, 1_000, "full"),
}


@dataclass
class Servers:
    mongo_uri: str
    redis_url: str
    postgres_url: str | None
    mariadb_url: str | None
    home: Path

    def describe(self) -> dict[str, str]:
        return {"MongoDB": mask_url(self.mongo_uri), "Redis": mask_url(self.redis_url),
                "PostgreSQL": mask_url(self.postgres_url) if self.postgres_url else "not configured",
                "MariaDB": mask_url(self.mariadb_url) if self.mariadb_url else "not configured"}

    def mongo(self, database: str) -> MongoResource:
        return MongoResource(uri=self.mongo_uri, database=database, timeout_ms=20_000)

    def redis_url_for(self, database: str) -> str:
        """A Redis database of its own per benchmark collection, so that two pipelines' caches never meet."""
        index = {"bench_small": 1, "bench_big": 2, "bench_stack": 4}.get(database, 3)
        parts = urlsplit(self.redis_url)
        return urlunsplit((parts.scheme, parts.netloc, f"/{index}", parts.query, parts.fragment))

    def mongo_uri_for(self, database: str) -> str:
        parts = urlsplit(self.mongo_uri)
        return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def measured_run(args: list[str], env: dict[str, str], timeout: int = 7200,
                 profile: Path | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, output) of one `salespred` command in a fresh process.

    The child is reaped with wait4, whose rusage gives the peak RSS of the largest process in its tree (Linux
    reports the maximum over the child and the descendants it waited for). Step processes are children of a
    forkserver that nobody waits for, so this process adopts the tree's orphans while the command runs and
    reaps them too: their peaks count. ``profile``: py-spy samples the command and its descendants (25 per
    second, without pausing them) into that file, in its raw format (one collapsed stack and its count per line).
    """
    before = _children()
    adopting = _set_subreaper(True)
    started = time.perf_counter()
    proc = subprocess.Popen([*SALESPRED, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    spy = _spy(proc.pid, profile) if profile else None
    chunks: list[bytes] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    usage = None
    while True:
        try:
            data = proc.stdout.read()
            if data:
                chunks.append(data)
        except BlockingIOError:
            pass
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            if spy is not None:
                spy.kill()
                spy.wait()
            _set_subreaper(False)
            raise TimeoutError(f"`salespred {' '.join(args)}` ran past {timeout} s")
        time.sleep(0.2)
    rest = proc.stdout.read()
    if rest:
        chunks.append(rest)
    if spy is not None:  # it ends with the command; never counted among the command's processes
        before.add(spy.pid)
        try:
            spy.wait(120)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    orphans_peak = _reap_orphans(before - {proc.pid}) if adopting else 0
    _set_subreaper(False)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"`salespred {' '.join(args)}` failed ({proc.returncode}):\n{out[-3000:]}")
    return time.perf_counter() - started, max(usage.ru_maxrss, orphans_peak) / 1024, out


def _spy(pid: int, out: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    # --idle: a step waiting on its database (a thread blocked in the driver) is sampled too, so shares are of
    # wall time, not of CPU time only; --threads: its main thread's samples can be told from its helpers'.
    return subprocess.Popen([spy, "record", "-p", str(pid), "--subprocesses", "--idle", "--threads", "-r", "25",
                             "-f", "raw", "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _set_subreaper(on: bool) -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux prctl), or no longer."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children() -> set[int]:
    found: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _reap_orphans(before: set[int], timeout_s: float = 120) -> int:
    """Reap the descendants adopted while a command ran; the largest peak RSS among them (KB)."""
    peak = 0
    deadline = time.monotonic() + timeout_s
    while (adopted := _children() - before) and time.monotonic() < deadline:
        for pid in adopted:
            try:
                done, _, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                peak = max(peak, usage.ru_maxrss)
        time.sleep(0.05)
    return peak


def env_for(servers: Servers, database: str, sql_url: str, search: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({settings.ENV_MONGO: servers.mongo_uri_for(database),
                settings.ENV_REDIS: servers.redis_url_for(database), settings.ENV_SQL: sql_url,
                settings.ENV_SEARCH: search, settings.ENV_HOME: str(home),
                "DAGSTER_HOME": str(home / "dagster")})
    return env


@contextmanager
def scratch_database(url: str, prefix: str) -> Iterator[str]:
    """A database created for the stage and dropped after it, on a PostgreSQL or MariaDB server."""
    base = sa.engine.make_url(url)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        from salespred_assets.sql.resource import make_engine

        make_engine.cache_clear()
        with admin.connect() as conn:
            force = " WITH (FORCE)" if base.get_backend_name() == "postgresql" else ""
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def prediction_frame(rows: int, seed: int = 5) -> pd.DataFrame:
    """A frame shaped like the scored opportunities (inputs and prediction columns)."""
    docs = [d for chunk in synthetic.generate(rows, seed=seed) for d in chunk]
    frame = validate(records_frame(docs, DEFAULT_SCHEMA), DEFAULT_SCHEMA).frame.drop(columns=["_id"], errors="ignore")
    rng = np.random.default_rng(seed)
    p = rng.random(rows)
    frame.insert(0, "opportunity_id", frame["numero_opportunidad"])
    frame["outcome"] = np.where(frame["etapas"] == "Won", "won", np.where(frame["etapas"] == "Lost", "lost", "open"))
    closed = (frame["outcome"] != "open").to_numpy()  # closed rows carry their outcome, not a prediction
    frame["probability"] = np.where(closed, np.nan, p)
    frame["predicted_won"] = np.where(closed, frame["outcome"] == "won", p >= 0.5)
    frame["score"] = pd.array(np.where(closed, pd.NA, np.clip(np.rint(p * 100), 1, 99).astype(int)), dtype="Int64")
    grade = np.where(p >= 0.75, "A", np.where(p >= 0.5, "B", np.where(p >= 0.25, "C", "D"))).astype(object)
    frame["grade"] = pd.array(np.where(closed, np.array(None, dtype=object), grade), dtype="str")
    frame["factors_for"] = np.where(closed, "[]",
                                    '[{"feature":"tipos","label":"tipos","value":"TY-00","effect":0.1203}]')
    frame["factors_against"] = np.where(closed, "[]",
                                        '[{"feature":"regiones","label":"regiones","value":"RE-00","effect":-0.0531}]')
    frame["prediction_basis"] = np.where(closed, "outcome", "model")
    frame["model_version"] = "20261127-000000-bench0"
    frame["scored_at"] = pd.Timestamp("2026-11-27T10:00:00Z")
    return frame


def seed_collection(servers: Servers, database: str, n: int) -> tuple[float, float]:
    """Drop and seed ``database`` with ``n`` synthetic opportunities in a fresh process; (seconds, peak MB)."""
    mongo = servers.mongo(database)
    mongo.client.drop_database(database)
    env = env_for(servers, database, "sqlite://", "fast", servers.home)
    seconds, rss, _ = measured_run(["seed", "--synthetic", str(n), "--batch-size", "5000"], env)
    return seconds, rss
