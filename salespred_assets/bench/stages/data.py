"""Data stages: seeding MongoDB, extracting from it, writing SQL and writing the Redis cache, each against the
plainest use of the same database."""

from __future__ import annotations

import csv
import functools
import io
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from salespred_assets.bench.harness import StageResult, repeat, timed
from salespred_assets.bench.stages.common import (
    Scale,
    Servers,
    prediction_frame,
    scratch_database,
    seed_collection,
)
from salespred_assets.core.schema import DEFAULT_SCHEMA
from salespred_assets.mongo.resource import OPPORTUNITIES
from salespred_assets.redis_cache.cache import (
    BUCKETS,
    PredictionCache,
    bucket_of,
    serialize,
)
from salespred_assets.redis_cache.resource import RedisResource
from salespred_assets.sql import tables, writer


def stage_seed(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("seed", "Seeding MongoDB (`salespred seed --synthetic`)")
    small_s, small_rss = seed_collection(servers, "bench_small", scale.small_docs)
    big_s, big_rss = seed_collection(servers, "bench_big", scale.big_docs)
    r.figure(f"{scale.small_docs:,} documents: wall", "s", [small_s])
    r.figure(f"{scale.big_docs:,} documents: wall", "s", [big_s])
    r.figure(f"{scale.big_docs:,} documents: throughput", "docs/s", [scale.big_docs / big_s])
    r.figure(f"peak memory, {scale.small_docs:,} documents", "MB", [small_rss])
    r.figure(f"peak memory, {scale.big_docs:,} documents", "MB", [big_rss])
    r.goal(f"memory stays flat: peak at {scale.big_docs:,} / peak at {scale.small_docs:,}", big_rss / small_rss, 1.25,
           "at_most", "×")
    r.notes.append("Documents are generated and inserted in batches of 5,000 (insert_many, unordered); the "
                   "generator yields chunks of 10,000, so memory does not grow with N. Throughput is bounded by the "
                   "server's insert rate (SecantusDB is a Python server; mongod is several times faster).")
    state["seeded"] = True
    return r


def stage_extract(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("extract", "MongoDB extract into a typed frame")
    import bson

    mongo = servers.mongo("bench_big")
    coll = mongo.db[OPPORTUNITIES]
    n = coll.estimated_document_count()

    def raw() -> None:
        for _ in coll.find_raw_batches({}, batch_size=20_000):
            pass

    def raw_decoded() -> None:
        for chunk in coll.find_raw_batches({}, batch_size=20_000):
            bson.decode_all(chunk)

    def ours() -> None:
        frame = mongo.read_opportunities(DEFAULT_SCHEMA).frame
        assert len(frame) == n

    raw_s, dec_s, ours_s = [], [], []
    for _ in range(scale.repeats):  # interleaved, so that drift affects all three alike
        raw_s.append(timed(raw)[0])
        dec_s.append(timed(raw_decoded)[0])
        ours_s.append(timed(ours)[0])
    r.figure("documents", "", [n])
    r.figure("raw find_raw_batches (bytes only)", "docs/s", [n / s for s in raw_s])
    r.figure("raw find_raw_batches + bson.decode_all", "docs/s", [n / s for s in dec_s])
    r.figure("salespred read_opportunities (typed, validated frame)", "docs/s", [n / s for s in ours_s])
    ratio = [a / b for a, b in zip(raw_s, ours_s, strict=True)]
    r.figure("ratio ours / raw", "×", ratio)
    r.goal("extract ≥ 0.8 × raw find_raw_batches", float(np.median(ratio)), 0.8, "at_least", "×")
    r.notes.append("Ours reads raw BSON batches on a reader thread while the main thread turns the previous "
                   "batch into columns and validates it. pymongoarrow decodes each batch straight into Arrow "
                   "arrays in C (no Python dicts; compare the `raw + bson.decode_all` line); the rows it cannot "
                   "vouch for (a null where a value was expected, a boolean in a number field) are decoded again "
                   "one document at a time, so every quarantine reason survives. What is left is the server: "
                   "SecantusDB is a Python process sharing the two cores with the reader.")
    return r


def stage_sql(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("sql", "SQL load of the prediction table")
    frame = prediction_frame(scale.frame_rows)
    rows = len(frame)
    r.figure("rows", "", [rows])
    dialects: list[tuple[str, Callable[[], Any]]] = [("SQLite", lambda: _sqlite_url(servers))]
    if servers.postgres_url:
        dialects.insert(0, ("PostgreSQL", functools.partial(scratch_database, servers.postgres_url, "bench_sql")))
    else:
        r.notes.append("PostgreSQL: skipped (set SALESPRED_BENCH_POSTGRES_URL or SALESPRED_TEST_POSTGRES_URL).")
    if servers.mariadb_url:
        dialects.append(("MariaDB (pyodbc)", functools.partial(scratch_database, servers.mariadb_url, "bench_sql")))
    else:
        r.notes.append("MariaDB: skipped (set SALESPRED_BENCH_MARIADB_URL or SALESPRED_TEST_MARIADB_URL).")
    for label, make in dialects:
        with make() as url:
            engine = sa.create_engine(url)
            table = tables.fact_opportunity(sa.MetaData())
            # partial binds this dialect's engine and table now (a closure would read the loop's variables).
            ours = repeat(functools.partial(writer.write, engine, table, frame, mode="replace"), scale.repeats)
            to_sql = repeat(functools.partial(frame.to_sql, "bench_to_sql", engine, if_exists="replace", index=False),
                            scale.repeats)
            r.figure(f"{label}: salespred write (replace, one transaction)", "rows/s", [rows / s for s in ours])
            r.figure(f"{label}: pandas to_sql, default settings (the original's method)", "rows/s",
                     [rows / s for s in to_sql])
            r.figure(f"{label}: ours / to_sql", "×", [b / a for a, b in zip(ours, to_sql, strict=True)])
            if label == "PostgreSQL":
                bare = repeat(functools.partial(_bare_copy, engine, frame), scale.repeats)
                r.figure("PostgreSQL: bare COPY of the same frame", "rows/s", [rows / s for s in bare])
                ratio = [b / a for a, b in zip(ours, bare, strict=True)]
                r.figure("PostgreSQL: ours / bare COPY", "×", ratio)
                r.goal("PostgreSQL load ≥ 0.7 × bare COPY", float(np.median(ratio)), 0.7, "at_least", "×")
                ahead = [b / a for a, b in zip(ours, to_sql, strict=True)]
                r.goal("PostgreSQL load ahead of pandas to_sql", float(np.median(ahead)), 1.0, "at_least", "×")
            engine.dispose()
    r.notes.append("Ours deletes the old rows and loads the new ones in one transaction (readers keep seeing the "
                   "previous table until commit). PostgreSQL loads with COPY from CSV text; SQLite and MariaDB "
                   "with batched executemany of bound parameters (fast_executemany breaks the MariaDB ODBC driver "
                   "on text columns).")
    return r


@contextmanager
def _sqlite_url(servers: Servers) -> Iterator[str]:
    path = servers.home / f"bench-{uuid.uuid4().hex[:6]}.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _bare_copy(engine: sa.engine.Engine, frame: pd.DataFrame) -> None:
    """The floor: the same frame to CSV (pandas' defaults) and COPY into an empty table of the same shape
    (keys and indexes included), with nothing else: no transaction around old rows, no checks."""
    table = tables.fact_opportunity(sa.MetaData())
    cols = [c.name for c in table.columns]
    frame = frame[cols]
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bench_copy"))
        conn.execute(sa.text(f"CREATE TABLE bench_copy (LIKE {tables.FACT_OPPORTUNITY} INCLUDING ALL)"))
        buf = io.StringIO()
        frame.to_csv(buf, index=False, header=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        raw = conn.connection.driver_connection
        assert raw is not None  # an open connection has its driver's connection
        with raw.cursor() as cur, cur.copy(f"COPY bench_copy ({', '.join(cols)}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buf.getvalue())


def stage_redis(servers: Servers, scale: Scale, state: dict[str, Any]) -> StageResult:
    r = StageResult("redis", "Redis cache load")
    frame = prediction_frame(scale.frame_rows)
    ser_s, (ids, values) = timed(lambda: serialize(frame, "opportunity_id", seller_column="numero_vendedor"))
    n = len(ids)
    client = RedisResource(url=servers.redis_url).client
    ns = f"bench{uuid.uuid4().hex[:6]}"
    cache = PredictionCache(client, namespace=ns)

    def raw_set() -> None:
        for start in range(0, n, 10_000):
            pipe = client.pipeline(transaction=False)
            for key, value in zip(ids[start:start + 10_000], values[start:start + 10_000], strict=True):
                pipe.set(f"{ns}:raw:{key}", value)
            pipe.execute()

    def raw_hset() -> None:
        pipe = client.pipeline(transaction=False)
        by_bucket: dict[str, dict[str, str]] = {}
        for key, value in zip(ids, values, strict=True):
            by_bucket.setdefault(bucket_of(key), {})[key] = value
        for bucket, entries in by_bucket.items():
            items = list(entries.items())
            for start in range(0, len(items), 1000):
                pipe.hset(f"{ns}:rawh:{bucket}", mapping=dict(items[start:start + 1000]))
        pipe.execute()

    ours_s, set_s, hset_s = [], [], []
    try:
        for _ in range(scale.repeats):
            set_s.append(timed(raw_set)[0])
            hset_s.append(timed(raw_hset)[0])
            ours_s.append(timed(lambda: cache.publish(ids, values, "bench"))[0])
    finally:
        for pattern in (f"{ns}:*",):
            keys = list(client.scan_iter(match=pattern, count=10_000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start:start + 5000])
    r.figure("entries", "", [n])
    r.figure("serialising the frame to JSON values", "rows/s", [n / ser_s])
    r.figure("raw pipelined SET (10,000 per round trip)", "keys/s", [n / s for s in set_s])
    r.figure("raw pipelined HSET in 64 buckets (the cache's own layout, nothing else)", "keys/s",
             [n / s for s in hset_s])
    r.figure("salespred publish (new generation, swap, expire the old one)", "keys/s", [n / s for s in ours_s])
    ratio = [a / b for a, b in zip(set_s, ours_s, strict=True)]
    r.figure("ours / raw SET", "×", ratio)
    r.figure("ours / raw bucketed HSET", "×", [a / b for a, b in zip(hset_s, ours_s, strict=True)])
    r.goal("cache load ≥ 0.8 × raw pipelined SET", float(np.median(ratio)), 0.8, "at_least", "×")
    r.notes.append(f"Entries live in {BUCKETS} hashes per generation, a thousand per HSET, so a refresh sends "
                   "about a thousandth of the commands plain SETs would; the floor for this layout is the raw "
                   "bucketed HSET figure.")
    return r
