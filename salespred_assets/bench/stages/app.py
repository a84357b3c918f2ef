"""The seller app stage: cached lookups and captures under load (wrk), with a py-spy profile of the server."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from salespred_assets.bench.harness import StageResult, percentile
from salespred_assets.bench.stages.common import (
    SALESPRED,
    Scale,
    Servers,
    env_for,
)
from salespred_assets.core.schema import CODE_SETS
from salespred_assets.mongo.resource import OPPORTUNITIES, MongoResource
from salespred_assets.settings import usable_cores


@contextmanager
def app_server(servers: Servers, database: str, home: Path, workers: int | None = None,
               sql_url: str = "sqlite://") -> Iterator[tuple[str, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = env_for(servers, database, sql_url, "fast", home)
    env["SALESPRED_SECRET_KEY"] = uuid.uuid4().hex * 2
    extra = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([*SALESPRED, "serve", "--port", str(port), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield base, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _bench_seller(mongo: MongoResource) -> tuple[str, str]:
    from salespred_assets.operations import loading

    password = uuid.uuid4().hex
    loading.write_sellers(mongo, [{"numero_vendedor": "NV-0", "username": "bench", "password": password,
                                   "first_name": "Bench", "last_name": "Manager", "title": "Sales Manager"}])
    return "bench", password


def _token(base: str, user: str, password: str, url: str) -> str:
    """Log in, and check that ``url`` is a cached lookup before loading it."""
    import httpx

    token = httpx.post(f"{base}/api/auth/token", json={"username": user, "password": password}).json()["access_token"]
    got = httpx.get(f"{base}{url}", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200 and got.json()["source"] == "cache", got.text
    _wrk(f"{base}{url}", 3, token)  # warm-up, not measured: every worker is up and has read the sellers
    return token


def stage_app(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("app", "Seller app: cached lookups and capture-to-prediction")
    import httpx

    if "sql_small" not in state:
        r.skipped = "needs the full-refresh stage (a trained model and the cache)"
        return r
    if not shutil.which("wrk"):
        r.skipped = "needs wrk (apt-get install wrk; `make bench` installs it)"
        return r
    mongo = servers.mongo("bench_small")
    user, password = _bench_seller(mongo)
    first = mongo.db[OPPORTUNITIES].find_one({"numero_vendedor": "NV-0"}, sort=[("_id", 1)])
    assert first is not None, "the full-refresh stage loaded NV-0's opportunities"
    number = first["numero_opportunidad"]
    workers = usable_cores()
    url = f"/api/opportunities/{number}/prediction"
    with app_server(servers, "bench_small", servers.home / "app", workers=1) as (base, _):
        token = _token(base, user, password, url)
        single = [(_wrk(f"{base}{url}", scale.lookup_seconds, token), _wrk(f"{base}/livez", scale.lookup_seconds, None))
                  for _ in range(scale.repeats)]
    with app_server(servers, "bench_small", servers.home / "app") as (base, pid):
        token = _token(base, user, password, url)
        lookup, health = [], []
        for _ in range(scale.repeats):
            health.append(_wrk(f"{base}/livez", scale.lookup_seconds, None))
            lookup.append(_wrk(f"{base}{url}", scale.lookup_seconds, token))
        r.figure(f"cached lookup, 32 connections, {workers} worker processes: throughput", "req/s",
                 [x["rps"] for x in lookup])
        r.figure("cached lookup: p50", "ms", [x["p50"] for x in lookup])
        r.figure("cached lookup: p99", "ms", [x["p99"] for x in lookup])
        r.figure("health endpoint (/livez), 32 connections: throughput", "req/s", [x["rps"] for x in health])
        r.figure("health endpoint: p50", "ms", [x["p50"] for x in health])
        ratio = [a["rps"] / b["rps"] for a, b in zip(lookup, health, strict=True)]
        r.figure("lookup / health throughput", "×", ratio)
        r.figure("one worker process: cached lookup throughput", "req/s", [x["rps"] for x, _ in single])
        r.figure("one worker process: cached lookup p50", "ms", [x["p50"] for x, _ in single])
        r.figure("one worker process: lookup / health throughput", "×", [x["rps"] / y["rps"] for x, y in single])
        r.goal("cached lookup p50 ≤ 2 ms (32 clients)", float(np.median([x["p50"] for x in lookup])), 2,
               "at_most", "ms")
        r.goal("cached lookup p99 ≤ 10 ms (32 clients)", float(np.median([x["p99"] for x in lookup])), 10,
               "at_most", "ms")
        r.goal("lookup ≥ 0.5 × health throughput", float(np.median(ratio)), 0.5, "at_least", "×")
        health_rps = float(np.median([x["rps"] for x in health]))
        r.notes.append(
            f"Little's law: with 32 requests always in flight, latency = 32 / throughput, so a 2 ms p50 needs "
            f"about {32 / 0.002:,.0f} req/s. The trivial health endpoint, which asks no database, reaches "
            f"{health_rps:,.0f} req/s here, so the server alone costs about {32_000 / health_rps:.1f} ms at "
            "that concurrency. A lookup does what the health check does plus one Redis round trip, so its "
            "physical limit is about half the health endpoint's throughput: two network exchanges (client "
            "and Redis) instead of one, on the same cores.")

        shares = _profile(pid, f"{base}/api/opportunities/{number}/prediction", token, scale.lookup_seconds)
        if shares:
            r.notes.append("Where the server's event loop spends its time under the cached-lookup load (py-spy, "
                           "share of samples by the package of the running function): "
                           + ", ".join(f"{name} {share:.0%}" for name, share in shares) + ".")

        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
        largest, small = _clients_by_size(mongo)
        rng = random.Random(7)
        latencies: dict[str, list[float]] = {"largest": [], "small": []}
        for i in range(2 * (scale.captures + 10)):  # the two kinds interleaved, so that drift hits both alike
            kind = "largest" if i % 2 == 0 else "small"
            payload = capture_payload(rng, rng.choice(largest if kind == "largest" else small))
            started = time.perf_counter()
            resp = client.post("/api/opportunities", json=payload)
            elapsed = (time.perf_counter() - started) * 1000
            assert resp.status_code == 201 and resp.json().get("prediction"), resp.text[:500]
            if i >= 20:  # the first few warm the process up
                latencies[kind].append(elapsed)
        client.close()
        p99 = {kind: percentile(values, 99) for kind, values in latencies.items()}
        for kind, label in (("largest", f"the {len(largest)} largest clients"), ("small", "small clients")):
            r.figure(f"capture-to-prediction (validate, insert, score, cache), sequential, {label}: p50", "ms",
                     [percentile(latencies[kind], 50)])
            r.figure(f"capture-to-prediction, {label}: p99", "ms", [p99[kind]])
        r.figure("capture p99: largest clients / small clients", "×", [p99["largest"] / p99["small"]])
        sizes = _client_sizes(mongo)
        r.notes.append(f"Captures alternate between the {len(largest)} largest clients ({sizes[largest[-1]]:,} to "
                       f"{sizes[largest[0]]:,} opportunities each) and clients with at most {SMALL_CLIENT} "
                       "opportunities, in the same run. A capture (`app/opportunities.capture`) is the counter's "
                       "$inc, the insert, the client's facts (one `client_facts` document: each of its "
                       "opportunities' creation day, unit, amount, close day and stage, packed in a string; "
                       "updated in the same write path), the model pointer, one validation of the new document, "
                       "the one-row score above, and, besides the bearer token's check, one Redis round trip: a Lua "
                       "call writes the entry into the live generation it reads in the same call. Before the "
                       "facts, each capture read the client's whole documents, and a large client's capture "
                       "cost several times a small one's.")
        r.goal("capture-to-prediction p99 ≤ 50 ms (largest clients)", p99["largest"], 50, "at_most", "ms")
        r.goal("capture-to-prediction p99 ≤ 50 ms (small clients)", p99["small"], 50, "at_most", "ms")
        r.goal("capture p99 for the largest clients ≤ 1.5 × small clients'", p99["largest"] / p99["small"], 1.5,
               "at_most", "×")
    calls = scale.single_rows  # 1,000 at full scale
    scoring = _scoring_path(mongo, calls)
    r.figure(f"the app's scoring path (`online.predict_document`), {calls:,} calls over all clients: p50",
             "ms", [percentile(scoring, 50)])
    r.figure("the app's scoring path: p99", "ms", [percentile(scoring, 99)])
    r.goal("the app's scoring path p99 ≤ 25 ms", percentile(scoring, 99), 25, "at_most", "ms")
    r.notes.append(f"The scoring path is what the app runs when the cache has no entry: `online.predict_document` "
                   f"on a stored opportunity (its client's facts, the current model, the one-row score with "
                   f"explanations), in this process, for {calls:,} stored opportunities of clients drawn at "
                   "random in proportion to their opportunities (so the largest clients come up as often as "
                   "their share of the collection), an open one of the client's where it has one.")
    r.notes.append("`salespred serve` as deployed: one uvicorn worker process per core; wrk (C) generates the "
                   "load on the same cores, and Redis runs there too. Both endpoints are answered by the app's "
                   "fast lane (`app/fastlane.py`), straight from ASGI, without FastAPI's routing, dependency "
                   "injection and middleware, which cost several times the lookup itself; anything the lane "
                   "cannot answer from the cache goes on to the full app. A cached lookup is one Redis round "
                   "trip (a Lua call reads the bearer token, the cache pointer and the entry together) on a "
                   "connection that all of a worker's requests share, pipelined: the commands of one turn of "
                   "the event loop leave in one write, and hiredis parses the replies. No MongoDB read: the "
                   "sellers and their teams are held in memory and refreshed ahead of expiry, the entry "
                   "names its seller first so that the check reads no more of it, and the entry is returned "
                   "as stored. Access logs are off by default (`--access-log` turns them on): a log line per "
                   "request cost more than answering it. The heap left by the imports is frozen out of the "
                   "garbage collector (before that, a full collection stalled every request in flight and the "
                   "p99 was about 190 ms).")
    return r


_PACKAGES = (("salespred_assets/", "salespred"), ("uvicorn/", "uvicorn (HTTP)"),
             ("starlette/", "Starlette/FastAPI (routing, middleware)"),
             ("fastapi/", "Starlette/FastAPI (routing, middleware)"), ("redis/", "redis-py (client)"),
             ("asyncio/", "event loop"), ("uvloop", "event loop"))


def _profile(pid: int, url: str, token: str, seconds: int) -> list[tuple[str, float]]:
    """Sample the server with py-spy while wrk loads ``url``; shares of the event loop's samples by package."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return []
    out = Path(tempfile.gettempdir()) / f"salespred-bench-profile-{pid}.txt"
    load = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{seconds + 2}s", "-H", f"Authorization: Bearer {token}", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        done = subprocess.run([spy, "record", "-p", str(pid), "--subprocesses", "-d", str(seconds), "-r", "200",
                               "-f", "raw", "-o", str(out), "--nonblocking"], capture_output=True, timeout=seconds + 60,
                              check=False)
    finally:
        load.wait(seconds + 30)
    if done.returncode != 0 or not out.exists():
        return []  # e.g. no ptrace permission: the figures above stand without it
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "asyncio" not in stack or not count.isdigit():
            continue  # only the event loop's thread
        leaf = stack.rsplit(";", 1)[-1]
        name = next((label for marker, label in _PACKAGES if marker in leaf), "other")
        counts[name] = counts.get(name, 0) + int(count)
    out.unlink(missing_ok=True)
    total = sum(counts.values()) or 1
    return sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1])


def _wrk(url: str, seconds: int, token: str | None) -> dict[str, float]:
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    # check=False: a failed wrk prints no latency lines, and the caller sees the figures missing.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    result: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            result["p50" if parts[0] == "50%" else "p99"] = _ms(parts[1])
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        if "Non-2xx" in line:
            raise RuntimeError(f"wrk saw errors against {url}: {line}")
    return result


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


LARGEST_CLIENTS = 50
SMALL_CLIENT = 5           # opportunities at most, for a "small" client


def _client_sizes(mongo: MongoResource) -> dict[str, int]:
    rows = mongo.db[OPPORTUNITIES].aggregate([{"$group": {"_id": "$cliente", "n": {"$sum": 1}}}])
    return {str(row["_id"]): int(row["n"]) for row in rows}


def _clients_by_size(mongo: MongoResource) -> tuple[list[str], list[str]]:
    """(the largest clients, largest first; the clients with at most SMALL_CLIENT opportunities)."""
    sizes = _client_sizes(mongo)
    ranked = sorted(sizes, key=lambda c: (-sizes[c], c))
    return ranked[:LARGEST_CLIENTS], [c for c in ranked if sizes[c] <= SMALL_CLIENT] or ranked[-LARGEST_CLIENTS:]


def _scoring_path(mongo: MongoResource, calls: int) -> list[float]:
    """Milliseconds of ``online.predict_document`` for ``calls`` stored opportunities, one per random client."""
    from salespred_assets.scoring import online

    sizes = _client_sizes(mongo)
    rng = random.Random(11)
    # Clients drawn as opportunities are: a large client as often as its share of them.
    picked = rng.choices(list(sizes), weights=list(sizes.values()), k=calls + 20)
    coll = mongo.db[OPPORTUNITIES]
    docs = []
    for client in picked:
        doc = (coll.find_one({"cliente": client, "etapas": {"$nin": ["Won", "Lost"]}})
               or coll.find_one({"cliente": client}))
        assert doc is not None
        docs.append(doc)
    latencies = []
    for i, doc in enumerate(docs):
        started = time.perf_counter()
        online.predict_document(mongo, None, doc)
        if i >= 20:  # the first load the model
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def capture_payload(rng: random.Random, client: str) -> dict[str, Any]:
    import datetime as dt

    acv = round(rng.uniform(1_000, 500_000), 2)
    return {
        "cliente": client,
        "unidad_negocio": rng.choice(CODE_SETS["unidad_negocio"]), "tipos": rng.choice(CODE_SETS["tipos"]),
        "regiones": rng.choice(CODE_SETS["regiones"]), "territorios": rng.choice(CODE_SETS["territorios"]),
        "industrias": rng.choice(CODE_SETS["industrias"]), "lead_source": rng.choice(CODE_SETS["lead_source"]),
        "acv": acv, "tcv": round(acv * rng.choice([1, 2, 3]), 2), "margen_ganancia": round(rng.uniform(0.05, 0.3), 2),
        "fecha_cierre_oportunidad": (dt.date.today() + dt.timedelta(days=rng.randint(1, 300))).isoformat(),
    }
