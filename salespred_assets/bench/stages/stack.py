"""The stack stage: the production topology (`salespred stack up`) measured as an operator drives it.

- Captures through the app's HTTP API at a set rate (open loop), each followed until its row is in SQL (the
  daemon's new-opportunity sensor launches a batch run for what arrived): the highest rate of a ladder at
  which every capture of a two-minute window reached SQL within a minute, and what bounds it.
- A rescore of every opportunity: one ``rescore`` run through the queue, then the same opportunities fanned out
  as a backfill of batch partitions (`salespred batches plan`, launched through GraphQL), two runs at a time.

The analysis (:func:`capture_latencies`, :func:`capture_bound`, :func:`fanout_summary`) is plain Python over
timestamps, free of Dagster; the stage collects those timestamps from the app, SQL and the run storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import yaml

from salespred_assets.bench.harness import StageResult, percentile
from salespred_assets.bench.stages.app import capture_payload
from salespred_assets.bench.stages.common import Scale, Servers, scratch_database
from salespred_assets.bench.stages.pipeline import critical_path
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.scoring.batches import SETTLE_SECONDS
from salespred_assets.stack.client import BACKFILL_TAG, PARTITION_TAG, StackClient, wait_until

BOUND_S = 60.0              # every capture in SQL within a minute
POLL_S = 0.5                # how often SQL is asked for the captures not seen yet
FANOUT_TAG = "salespred/bench-fanout"
FANOUT_RUNS = 2             # runs of the fanned-out rescore at a time
SINGLE_RUN_SHARE = 0.6      # the goal: the fan-out in at most this share of the single run's time
GATE_AUC_FLOOR = "0.55"     # the promotion gate is not measured here (the full-refresh stage's model is)
NEVER = "0 0 29 2 *"        # the schedules' cron during the stage: no retrain or drift run in the windows
BATCH_JOB = "score_new_opportunities"
ACTIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
SELLER = "bench"


# ---- the analysis (plain Python) ----------------------------------------------------------------------------------
@dataclass
class Capture:
    """One capture: when it was sent and answered (epoch seconds), and when its SQL row was first seen."""

    number: str
    sent: float
    answered: float
    seen: float | None = None
    run: str | None = None      # the batch run that scored it


@dataclass
class Run:
    """A run as the run storage records it (epoch seconds), with its steps' (start, end)."""

    run_id: str
    created: float
    started: float | None
    ended: float | None
    status: str
    steps: dict[str, tuple[float, float]] = field(default_factory=dict)
    partition: str | None = None
    dequeued: float | None = None   # when the daemon took it off the queue to launch it (RUN_STARTING)

    @property
    def launch(self) -> float:
        """Dequeued to started: the run's process started and the code loaded, before its run begins."""
        return (self.started or 0.0) - (self.dequeued if self.dequeued is not None else self.created)

    @property
    def seconds(self) -> float:
        return (self.ended or 0.0) - (self.started or 0.0)

    @property
    def step_seconds(self) -> float:
        return sum(end - start for start, end in self.steps.values())


@dataclass
class Rung:
    """One rate of the ladder: the captures sent in its window and the batch runs that scored them."""

    rate: float
    window_s: float
    captures: list[Capture]
    runs: dict[str, Run]
    errors: list[str] = field(default_factory=list)
    gave_up: float = float("inf")   # when SQL was last asked: a capture never seen took longer than that

    @property
    def sent_rate(self) -> float:
        """Captures sent per second: n sends spaced 1 / rate apart span (n - 1) / rate seconds."""
        if not self.captures:
            return 0.0
        span = max(c.sent for c in self.captures) - min(c.sent for c in self.captures)
        return len(self.captures) / (span + 1 / self.rate)

    @property
    def latencies(self) -> list[float]:
        """Capture to SQL row, in seconds; for a capture never seen, until SQL was last asked (a lower bound)."""
        return capture_latencies(self.captures, self.gave_up)

    @property
    def late(self) -> int:
        return sum(x > BOUND_S for x in self.latencies)

    @property
    def passed(self) -> bool:
        return (not self.errors and bool(self.captures) and all(c.seen is not None for c in self.captures)
                and max(self.latencies) <= BOUND_S and self.sent_rate >= 0.95 * self.rate)

    def summary(self) -> str:
        lat = self.latencies
        return (f"{self.rate:g}/s {'passed' if self.passed else 'failed'} ({len(self.captures)} sent, "
                f"{len(self.errors)} failed, to SQL p50 {percentile(lat, 50):.1f} s, p99 {percentile(lat, 99):.1f} s, "
                f"max {max(lat, default=0.0):.1f} s, {self.late} later than {BOUND_S:.0f} s or never seen, "
                f"{len(self.runs)} batch runs)")


def capture_latencies(captures: list[Capture], gave_up: float = float("inf")) -> list[float]:
    """Seconds from each capture's sending to its row in SQL (a capture never seen: until ``gave_up``)."""
    return [(c.seen if c.seen is not None else gave_up) - c.sent for c in captures]


PARTS = ("the app's answer", "waiting for the sensor's tick", "in the run queue",
         "the launch (process start, imports)", "the batch run")


def capture_parts(rung: Rung) -> dict[str, list[float]]:
    """Each capture's path to SQL cut at the app's answer and its batch run's creation and start."""
    parts: dict[str, list[float]] = {p: [] for p in PARTS}
    for c in rung.captures:
        run = rung.runs.get(c.run or "")
        if run is None or run.started is None or c.seen is None:
            continue
        dequeued = run.dequeued if run.dequeued is not None else run.created
        for name, value in zip(PARTS, (c.answered - c.sent, run.created - c.answered, dequeued - run.created,
                                       run.started - dequeued, c.seen - run.started), strict=True):
            parts[name].append(value)
    return parts


def capture_bound(rungs: list[Rung]) -> str:
    """What limits the sustained rate, from the ladder's measurements: the app when it could not take the rate
    (errors, or fewer captures sent than asked), else the part of the slowest captures' path that took longest."""
    failed = next((r for r in rungs if not r.passed), None)
    rung = failed or (rungs[-1] if rungs else None)
    if rung is None:
        return "nothing measured"
    where = f"at {rung.rate:g} captures/s" + ("" if failed else " (the highest rate tried, which passed)")
    if rung.errors:
        return f"the app workers: {where}, {len(rung.errors)} of the captures sent failed"
    if rung.sent_rate < 0.95 * rung.rate:
        return f"the load generator (this process): {where}, it sent only {rung.sent_rate:.1f} captures/s"
    # The slowest tenth of the captures seen (what the one-minute bound is about), cut into their parts.
    seen = [c for c in rung.captures if c.seen is not None]
    if not seen:
        return f"no capture reached SQL {where}"
    cut = percentile(capture_latencies(seen), 90)
    slow = Rung(rung.rate, rung.window_s, [c for c in seen if (c.seen or 0.0) - c.sent >= cut], rung.runs)
    parts = {p: statistics.median(v) if v else 0.0 for p, v in capture_parts(slow).items()}
    largest = max(parts, key=lambda p: parts[p])
    return (f"{largest}: {where}, the slowest tenth of captures spent (medians) "
            + ", ".join(f"{p} {v:.1f} s" for p, v in parts.items()))


@dataclass
class Fanout:
    """What the fanned-out rescore's runs say about its time."""

    wall: float                 # launch to the last run's end
    busy: float                 # the runs' seconds, added up
    concurrency: float          # runs in progress on average, first start to last end
    to_first_start: float       # launch to the first run's start (the backfill daemon, the queue, the launch)
    launch: float               # median per run: dequeued to started (process start, imports)
    fixed: float                # median per run: its seconds outside its steps (resources, executor, events)
    step: float                 # median per run: its steps' seconds
    run: float                  # median per run
    runs: int

    @property
    def floor(self) -> float:
        """The wall the runs' own seconds allow at ``FANOUT_RUNS`` at a time."""
        return self.busy / FANOUT_RUNS


def fanout_summary(launched: float, runs: list[Run]) -> Fanout:
    done = [r for r in runs if r.started is not None and r.ended is not None]
    if not done:
        raise ValueError("no run of the fan-out started and ended")
    first, last = min(r.started or 0.0 for r in done), max(r.ended or 0.0 for r in done)
    busy = sum(r.seconds for r in done)
    return Fanout(wall=last - launched, busy=busy, concurrency=busy / max(last - first, 1e-9),
                  to_first_start=first - launched, launch=statistics.median(r.launch for r in done),
                  fixed=statistics.median(r.seconds - r.step_seconds for r in done),
                  step=statistics.median(r.step_seconds for r in done),
                  run=statistics.median(r.seconds for r in done), runs=len(done))


def fanout_bound(f: Fanout, single: float) -> str:
    """The serial part that bounds the fan-out, in seconds of its wall: each run's fixed cost, the time the runs
    were not two at a time (queue, launch, the backfill daemon), and the runs' steps themselves."""
    parts = {
        "each run's fixed cost outside its steps (resources, the executor, the run's events), two at a time":
            f.fixed * f.runs / FANOUT_RUNS,
        "the runs' steps (read, score, SQL upsert, history, cache), two at a time": f.step * f.runs / FANOUT_RUNS,
        f"fewer than {FANOUT_RUNS} runs in progress (the backfill daemon, the queue, and each launch, "
        f"{f.launch:.1f} s at the median: its process started and the code imported before the run starts)":
            max(f.wall - f.floor, 0.0),
    }
    largest = max(parts, key=lambda k: parts[k])
    text = "; ".join(f"{k} {v:.0f} s" for k, v in parts.items())
    return (f"the fan-out's {f.wall:.0f} s against the single run's {single:.0f} s (the goal allows "
            f"{SINGLE_RUN_SHARE * single:.0f} s): {text}. The largest is {largest}.")


# ---- the stack ----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class BenchStack(StackClient):
    """The benchmark's stack, with its SQL database and MongoDB database, and its seller's password."""

    sql_url: str
    mongo: MongoResource
    password: str = field(default_factory=lambda: uuid.uuid4().hex)


@contextlib.contextmanager
def bench_stack(servers: Servers, scale: Scale) -> Iterator[BenchStack]:
    """`salespred stack up` on the benchmark's servers (the instance and SQL in databases of their own on the
    PostgreSQL server, a MongoDB database and a Redis db of its own), stopped with `stack down` and dropped."""
    from salespred_assets.embedded.services import free_port

    assert servers.postgres_url
    home = servers.home / "stack-home"
    database = "bench_stack"
    mongo = servers.mongo(database)
    mongo.client.drop_database(database)
    redis_url = servers.redis_url_for(database)
    with scratch_database(servers.postgres_url, "bench_stack_sql") as sql_url, \
            scratch_database(servers.postgres_url, "bench_stack_dagster") as dagster_url:
        dagster_pg_url = sa.engine.make_url(dagster_url).set(drivername="postgresql") \
            .render_as_string(hide_password=False)
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        env.update({
            "SALESPRED_HOME": str(home), "SALESPRED_MONGO_URI": servers.mongo_uri_for(database),
            "SALESPRED_REDIS_URL": redis_url, "SALESPRED_SQL_URL": sql_url, "SALESPRED_DAGSTER_PG_URL": dagster_pg_url,
            "SALESPRED_AUTOMATION": "on", "SALESPRED_SENSOR_INTERVAL": str(scale.stack_sensor_s),
            "SALESPRED_SECRET_KEY": uuid.uuid4().hex * 2, "SALESPRED_SEARCH": scale.search,
            "SALESPRED_GATE_AUC_FLOOR": GATE_AUC_FLOOR, "SALESPRED_RETRAIN_CRON": NEVER, "SALESPRED_DRIFT_CRON": NEVER})
        stack = BenchStack(home=home, env=env, ui_port=free_port(), app_port=free_port(), code_port=free_port(),
                           dagster_pg_url=dagster_pg_url, sql_url=sql_url, mongo=mongo)
        try:
            stack.cli("stack", "up", "--ui-port", str(stack.ui_port), "--app-port", str(stack.app_port),
                      "--code-port", str(stack.code_port), timeout=900)
            stack.read_ports()
            _limit_fanout(stack)
            yield stack
        finally:
            stack.cli("stack", "down", "--timeout", "15", check=False)
            mongo.client.drop_database(database)
            import redis

            client = redis.Redis.from_url(redis_url)
            for keys in _chunks(list(client.scan_iter(match="salespred:*", count=10_000)), 5000):
                client.delete(*keys)
            client.close()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _limit_fanout(stack: BenchStack) -> None:
    """Two runs at a time for the benchmark's own backfill: one more tag limit in the stack's generated instance
    (deploy/dagster.yaml's limits stay as they are), read by the daemon's run queue once it restarts."""
    path = stack.dagster_home / "dagster.yaml"
    text = path.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    config = yaml.safe_load(text)
    config["concurrency"]["runs"]["tag_concurrency_limits"].append({"key": FANOUT_TAG, "limit": FANOUT_RUNS})
    path.write_text(header + f"# salespred bench: {FANOUT_TAG} limited to {FANOUT_RUNS} runs at a time.\n"
                    + yaml.safe_dump(config, sort_keys=False))
    stack.cli("stack", "restart", "daemon", timeout=600)


# ---- the run storage ----------------------------------------------------------------------------------------------
def _runs(stack: BenchStack, **filters: Any) -> list[Run]:
    import dagster as dg

    with stack.instance() as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(**filters))
        out = []
        for rec in records:
            run = rec.dagster_run
            steps = {s.step_key: (s.start_time, s.end_time) for s in instance.get_run_step_stats(run.run_id)
                     if s.start_time and s.end_time}
            created = rec.create_timestamp  # the run storage's is naive UTC
            created = created if created.tzinfo else created.replace(tzinfo=dt.UTC)
            # The daemon dequeues a run and asks the launcher to start it: RUN_STARTING marks that moment.
            starting = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_STARTING)
            out.append(Run(run.run_id, created.timestamp(), rec.start_time, rec.end_time,
                           run.status.value, steps, run.tags.get(PARTITION_TAG),
                           starting[0].timestamp if starting else None))
        return out


def _wait_quiet(stack: BenchStack, timeout: float) -> None:
    """Until no run is queued or in progress (so that one measurement never overlaps the next)."""
    import dagster as dg

    statuses = [dg.DagsterRunStatus(s) for s in ACTIVE]

    def quiet() -> bool:
        with stack.instance() as instance:
            return not instance.get_runs(filters=dg.RunsFilter(statuses=statuses), limit=1)

    if not wait_until(quiet, timeout, interval=1.0):
        raise TimeoutError(f"runs still in progress after {timeout:.0f} s\n{stack.log_tails()}")


def _run_and_wait(stack: BenchStack, job: str, timeout: float) -> tuple[float, Run]:
    submitted = time.time()
    run_id = stack.submit(job)
    status = stack.wait_run(run_id, timeout=timeout)
    if status != "SUCCESS":
        raise RuntimeError(f"the {job} run {run_id} ended {status}\n{stack.log_tails()}")
    [run] = _runs(stack, run_ids=[run_id])
    return submitted, run


# ---- captures -----------------------------------------------------------------------------------------------------
async def _send(base: str, token: str, rate: float, seconds: float, clients: list[str],
                captures: list[Capture], errors: list[str], rng: random.Random) -> None:
    """Open loop: the i-th capture leaves at i / rate seconds, whether or not earlier ones were answered."""
    import httpx

    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120,
                                 limits=httpx.Limits(max_connections=256)) as client:
        async def one(payload: dict[str, Any]) -> None:
            sent = time.time()
            try:
                resp = await client.post("/api/opportunities", json=payload)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            if resp.status_code != 201:
                errors.append(f"{resp.status_code}: {resp.text[:200]}")
                return
            captures.append(Capture(resp.json()["numero_opportunidad"], sent, time.time()))

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(max(1, int(rate * seconds))):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(capture_payload(rng, rng.choice(clients)))))
        await asyncio.gather(*tasks)


class _SqlWatch:
    """A thread that asks SQL every ``POLL_S`` for the captures whose row it has not seen yet."""

    def __init__(self, sql_url: str, captures: list[Capture]) -> None:
        self.engine = sa.create_engine(sql_url)
        self.captures = captures
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.failed: BaseException | None = None

    def _loop(self) -> None:
        # The fact table's key is the opportunity number (the schema's id field).
        query = sa.text("SELECT numero_opportunidad FROM fact_opportunity WHERE numero_opportunidad IN :n") \
            .bindparams(sa.bindparam("n", expanding=True))
        try:
            while not self.stop.is_set():
                self.poll(query)
                self.stop.wait(POLL_S)
        except BaseException as exc:  # noqa: BLE001 - handed to the stage when the window closes
            self.failed = exc

    def poll(self, query: Any) -> None:
        waiting = {c.number: c for c in list(self.captures) if c.seen is None}
        if not waiting:
            return
        with self.engine.connect() as conn:
            found = {row[0] for chunk in _chunks(list(waiting), 1000)
                     for row in conn.execute(query, {"n": chunk})}
        now = time.time()
        for number in found:
            waiting[number].seen = now

    def __enter__(self) -> _SqlWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self.engine.dispose()
        if self.failed is not None:
            raise RuntimeError(f"looking for the captures in SQL failed: {self.failed!r}") from self.failed


def _rung(stack: BenchStack, token: str, rate: float, seconds: float, clients: list[str], seed: int) -> Rung:
    from bson import ObjectId

    from salespred_assets.mongo.resource import OPPORTUNITIES
    from salespred_assets.scoring import batches

    captures: list[Capture] = []
    errors: list[str] = []
    began = time.time()
    with _SqlWatch(stack.sql_url, captures):
        asyncio.run(_send(stack.app_url, token, rate, seconds, clients, captures, errors, random.Random(seed)))
        # Every capture's row within the bound, or the bound passed for the last one (with a little to spare).
        deadline = max((c.answered for c in captures), default=time.time()) + BOUND_S + 10
        while time.time() < deadline and any(c.seen is None for c in captures):
            time.sleep(POLL_S)
    gave_up = time.time()
    _wait_quiet(stack, timeout=900)
    runs = {r.run_id: r for r in _runs(stack, job_name=BATCH_JOB) if r.created >= began - 1}
    # Which run scored each capture: its _id inside the run's batch range.
    mongo = stack.mongo
    ids: dict[str, ObjectId] = {}
    for chunk in _chunks([c.number for c in captures], 100):
        for doc in mongo.db[OPPORTUNITIES].find({"numero_opportunidad": {"$in": chunk}},
                                                {"_id": 1, "numero_opportunidad": 1}):
            ids[doc["numero_opportunidad"]] = doc["_id"]
    ranges = []
    for run in runs.values():
        bounds = batches.parse_range(run.partition) if run.partition else None
        if bounds:
            ranges.append((bounds[0], bounds[1], run.run_id))
    for c in captures:
        oid = ids.get(c.number)
        c.run = next((rid for lo, hi, rid in ranges if oid is not None and lo < oid <= hi), None)
    captures.sort(key=lambda c: c.sent)
    return Rung(rate, seconds, captures, runs, errors, gave_up)


def _clients(stack: BenchStack) -> list[str]:
    from salespred_assets.mongo.resource import OPPORTUNITIES

    docs = stack.mongo.db[OPPORTUNITIES].find({}, {"cliente": 1, "_id": 0}).limit(2000)
    return sorted({d["cliente"] for d in docs}) or ["CL-1"]


# ---- the stage ----------------------------------------------------------------------------------------------------
def stage_stack(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    docs = scale.big_docs
    r = StageResult("stack", f"The stack (`salespred stack up`): captures to SQL, and a rescore of {docs:,} "
                             "fanned out")
    if not servers.postgres_url:
        r.skipped = "needs PostgreSQL (SALESPRED_BENCH_POSTGRES_URL): the stack's Dagster instance lives there"
        return r
    try:
        import dagster_graphql  # noqa: F401
        import dagster_postgres  # noqa: F401
    except ImportError as exc:
        r.skipped = f"needs the deploy extra (pip install 'salespred[deploy]'): {exc}"
        return r
    with bench_stack(servers, scale) as stack:
        sellers = stack.home / "sellers.csv"
        sellers.write_text("numero_vendedor,username,password,first_name,last_name,title\n"
                           f"NV-0,{SELLER},{stack.password},Bench,Manager,Sales Manager\n")
        # As an operator would: the data, then a full refresh through the queue (it trains and promotes the model).
        stack.cli("seed", "--synthetic", str(docs), "--sellers", str(sellers), "--batch-size", "5000", timeout=7200)
        _, refresh = _run_and_wait(stack, "full_refresh", timeout=4 * 3600)
        r.figure("full refresh through the queue (trains the model the rest scores with)", "min",
                 [refresh.seconds / 60])
        _wait_quiet(stack, timeout=600)
        single_submitted, single = _run_and_wait(stack, "rescore", timeout=4 * 3600)
        single_wall = (single.ended or 0.0) - single_submitted
        _wait_quiet(stack, timeout=600)
        _measure_fanout(r, stack, scale, single, single_wall)
        _wait_quiet(stack, timeout=1800)
        _measure_captures(r, stack, scale)
    return r


def _measure_fanout(r: StageResult, stack: BenchStack, scale: Scale, single: Run, single_wall: float) -> None:
    docs = scale.big_docs
    rows = -(-docs // scale.stack_batches)
    keys = stack.plan(rows)
    launched = time.time()
    backfill = stack.launch_backfill(BATCH_JOB, keys, tags={FANOUT_TAG: "rescore"})

    def settled() -> list[Run] | None:
        runs = _runs(stack, tags={BACKFILL_TAG: backfill})
        return runs if len(runs) >= len(keys) and all(x.status not in ACTIVE for x in runs) else None

    runs = wait_until(settled, timeout=4 * 3600, interval=2.0)
    if runs is None:
        raise TimeoutError(f"backfill {backfill} not done after 4 h\n{stack.log_tails()}")
    failed = [x.run_id for x in runs if x.status != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs of the fan-out failed: {failed[:3]}\n{stack.log_tails()}")
    f = fanout_summary(launched, runs)
    last = launched + f.wall
    beside = [x for x in _runs(stack) if x.run_id not in {y.run_id for y in runs}
              and x.started is not None and x.started < last and (x.ended or last) > launched]
    ratio = f.wall / single_wall
    r.figure(f"single run: `rescore` of {docs:,}, submitted to its end", "s", [single_wall])
    r.figure("single run: from its start to its end", "s", [single.seconds])
    r.figure(f"fanned out: {f.runs} batch runs of {rows:,}, {FANOUT_RUNS} at a time, launched to the last end",
             "s", [f.wall])
    r.figure("fanned out / single run", "×", [ratio])
    r.figure("fan-out: runs in progress on average", "", [f.concurrency])
    r.figure("fan-out: launch to the first run's start", "s", [f.to_first_start])
    r.figure("fan-out: each run's launch (dequeued to started: process start, imports), median", "s", [f.launch])
    r.figure("fan-out: one run, median", "s", [f.run])
    r.figure("fan-out: its steps, median", "s", [f.step])
    r.figure("fan-out: its fixed cost (outside its steps), median", "s", [f.fixed])
    r.goal(f"fanned-out rescore ≤ {SINGLE_RUN_SHARE} × the single run ({FANOUT_RUNS} runs at a time, "
           f"{os.cpu_count()} cores)", ratio, SINGLE_RUN_SHARE, "at_most", "×")
    total = sum(end - start for start, end in single.steps.values()) or 1.0
    top = sorted(single.steps.items(), key=lambda kv: -(kv[1][1] - kv[1][0]))[:5]
    path = critical_path(single.steps)
    on_path = sum(single.steps[k][1] - single.steps[k][0] for k in path)
    r.notes.append(
        "The single run: `rescore` submitted through GraphQL, through the queue, the daemon's launch and "
        "Dagster's multiprocess executor. Its largest steps: "
        + ", ".join(f"{k} {e - s:.1f} s ({(e - s) / total:.0%} of the steps' time)" for k, (s, e) in top)
        + f"; the {len(path)} steps it waited on one after the other (its asset checks among them) took "
        f"{on_path:.0f} s of its {single.seconds:.0f} s.")
    r.notes.append(
        f"The fan-out: `salespred batches plan --rows {rows}` ({len(keys)} partitions of opportunity_batches), "
        f"then a backfill of `{BATCH_JOB}` over them launched through GraphQL with the tag `{FANOUT_TAG}`, which "
        f"the stage gives a limit of {FANOUT_RUNS} runs in the stack's generated instance (one more "
        "`tag_concurrency_limits` entry, the daemon restarted to read it); deploy/dagster.yaml's limits "
        "(dagster/backfill 6, 8 runs in all) stay as they are. Each run reads its _id range, scores it, upserts "
        "its fact_opportunity rows, appends history and writes its keys into the live cache generation."
        + (f" Runs beside it: {', '.join(sorted({x.run_id[:8] for x in beside}))} (e.g. the dashboard's refresh "
           "after batches)." if beside else ""))
    verdict = "Met" if ratio <= SINGLE_RUN_SHARE else "Short of the goal"
    r.notes.append(f"{verdict}: " + fanout_bound(f, single_wall))


def _failed(rungs: list[Rung]) -> Rung | None:
    return next((x for x in rungs if not x.passed), None)


def _measure_captures(r: StageResult, stack: BenchStack, scale: Scale) -> None:
    import httpx

    token = httpx.post(f"{stack.app_url}/api/auth/token", json={"username": SELLER, "password": stack.password},
                       timeout=60).json()["access_token"]
    clients = _clients(stack)
    rungs: list[Rung] = []
    for i, rate in enumerate(scale.capture_rates):
        rung = _rung(stack, token, float(rate), scale.capture_seconds, clients, seed=100 + i)
        rungs.append(rung)
        if not rung.passed:
            break
    passed = [x for x in rungs if x.passed]
    best = passed[-1] if passed else None
    r.figure("captures per second sustained, every one in SQL within a minute", "captures/s",
             [best.rate if best else 0.0])
    for label, shown in (("at the sustained rate", best), ("at the first rate that failed", _failed(rungs))):
        if shown is None:
            continue
        lat = shown.latencies
        r.figure(f"{label} ({shown.rate:g}/s): capture to SQL row p50", "s", [percentile(lat, 50)])
        r.figure(f"{label} ({shown.rate:g}/s): capture to SQL row p99", "s", [percentile(lat, 99)])
        r.figure(f"{label} ({shown.rate:g}/s): slowest capture to SQL row", "s", [max(lat)])
        r.figure(f"{label} ({shown.rate:g}/s): batch runs", "", [len(shown.runs)])
    slowest = max((best or rungs[0]).latencies)
    r.goal(f"at the sustained rate, the slowest capture reaches SQL within {BOUND_S:.0f} s", slowest, BOUND_S,
           "at_most", "s")
    how = (f"a ladder of rates ({', '.join(f'{x:g}' for x in scale.capture_rates)} captures/s), each for "
           f"{scale.capture_seconds} s, stopped at the first rate where a capture failed, fewer than 95% of the "
           f"rate were sent, or a row reached SQL after {BOUND_S:.0f} s")
    tried = [x.summary() for x in rungs]
    r.notes.append(
        f"Captures: the seller app's API (`salespred serve`, 2 workers) at a set rate, open loop (each capture leaves "
        f"on time whether or not earlier ones were answered), for {scale.capture_seconds} s per rate; each "
        f"capture's row looked up in fact_opportunity every {POLL_S} s until it appears, the time counted from "
        f"its sending. The rate was found with {how}: {'; '.join(tried)}. The sustained rate is "
        + (f"the highest that passed ({best.rate:g}/s)" if best else "none (no rate passed)")
        + f". The sensor ticks every {scale.stack_sensor_s} s (SALESPRED_SENSOR_INTERVAL) and waits "
        f"{SETTLE_SECONDS} s for inserts in flight; each batch is a `{BATCH_JOB}` run through the queue, and "
        "the `dashboard_after_batches` sensor, on the same interval, follows batches with a `refresh_dashboard` "
        "run on the same cores."
        + (f" Failed posts, first ones: {'; '.join(rungs[-1].errors[:3])}." if rungs[-1].errors else ""))
    r.notes.append("What bounds it: " + capture_bound(rungs) + ".")

