"""`salespred bench`: each stage measured against its physical limit, ratios taken in the same run."""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

from salespred_assets import settings
from salespred_assets.bench.harness import StageResult, kept_stages, write_report
from salespred_assets.bench.stages import SCALES, STAGES, Servers
from salespred_assets.resources import database_resources


def servers_from_environment(home: Path) -> Servers:
    """Benchmark servers: SALESPRED_BENCH_* first, then the test servers' variables, then the embedded ones."""
    def pick(*names: str) -> str | None:
        for name in names:
            value = settings.get(name)
            if value:
                return value
        return None

    mongo, _, redis = database_resources()
    return Servers(
        mongo_uri=pick("SALESPRED_BENCH_MONGO_URI") or mongo.resolved_uri(),
        redis_url=pick("SALESPRED_BENCH_REDIS_URL", "SALESPRED_TEST_REDIS_URL") or redis.resolved_url(),
        postgres_url=pick("SALESPRED_BENCH_POSTGRES_URL", "SALESPRED_TEST_POSTGRES_URL"),
        mariadb_url=pick("SALESPRED_BENCH_MARIADB_URL", "SALESPRED_TEST_MARIADB_URL"),
        home=home,
    )


def run(scale_name: str = "full", out_dir: Path = Path("."), only: list[str] | None = None,
        progress=print) -> list[StageResult]:
    scale = SCALES[scale_name]
    started = dt.datetime.now(dt.UTC)
    names = only or list(STAGES)
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {list(STAGES)}")
    results: list[StageResult] = []
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix="salespred-bench-") as tmp:
        servers = servers_from_environment(Path(tmp))
        try:
            for name in STAGES:
                if name not in names:
                    continue
                progress(f"bench: {name} ...")
                t0 = time.perf_counter()
                try:
                    result = STAGES[name](servers, scale, state)
                except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the others still run
                    result = StageResult(name, name, skipped=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
                    progress(traceback.format_exc())
                result.seconds = time.perf_counter() - t0
                result.measured, result.commit = started.isoformat(timespec="seconds"), _commit()
                results.append(result)
                progress(f"bench: {name} done in {result.seconds:.0f} s")
        finally:
            for cleanup in state.get("cleanups", []):
                cleanup()
        kept = kept_stages(out_dir, scale.name, names, list(STAGES)) if only else []
        merged = sorted([*kept, *results], key=lambda r: list(STAGES).index(r.name) if r.name in STAGES else 99)
        write_report(merged, scale.name, out_dir, servers.describe(), started)
    return results


def _commit() -> str:
    """The short commit of the code measured, with '+' when the work tree has changes; '' outside git."""
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""
