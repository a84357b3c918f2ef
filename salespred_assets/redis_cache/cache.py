"""The prediction cache: generations of hash buckets, swapped in with one pointer write.

Keys (``ns`` is the namespace, default ``salespred``)::

    ns:pred:current           -> the live generation number
    ns:pred:gen               -> counter of generations
    ns:pred:meta:<gen>        -> hash: model_version, rows, created_at, upserts
    ns:pred:<gen>:<bucket>    -> hash: opportunity number -> JSON of its prediction (with expiry)

Each generation is spread over 64 hashes by CRC32 of the opportunity number, so a full refresh writes
a thousand entries per command instead of one (faster than plain pipelined SETs; see BENCHMARKS.md)
and no single key grows without bound. A full refresh writes a new generation, then moves ``current``
to it in one command: a lookup, one Lua call that reads the pointer and the entry, sees the old
generation or the new one, never a miss in between. The old generation then expires after a grace
period; nothing is ever flushed. New opportunities are written into the live generation, whose
buckets' expiry every write renews.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import redis

from salespred_assets.redis_cache.pipelined import PipelinedRedis

BUCKETS = 64
PAIRS_PER_COMMAND = 1_000
COMMANDS_PER_ROUND_TRIP = 20
OLD_GENERATION_GRACE_S = 600
ABANDONED_LOOKBACK = 100  # generations an interrupted publish may have left behind, looked at by the next one

# One round trip: read the pointer, then the entry in that generation's bucket.
_LOOKUP = """
local gen = redis.call('GET', KEYS[1])
if not gen then return nil end
return redis.call('HGET', ARGV[1] .. gen .. ':' .. ARGV[2], ARGV[3])
"""


# The same, plus one more key read in that round trip (the seller app's bearer token): {other, entry}.
_LOOKUP_WITH = """
local other = redis.call('GET', KEYS[2])
local gen = redis.call('GET', KEYS[1])
if not gen then return {other, false} end
return {other, redis.call('HGET', ARGV[1] .. gen .. ':' .. ARGV[2], ARGV[3])}
"""


# Write entries into the live generation in one round trip, atomically with reading which one is live (a
# publish swapping generations meanwhile cannot strand them in the old one); nil when none is live.
# ARGV: key prefix, expiry (s), then bucket, number, value for each entry.
_UPSERT = """
local gen = redis.call('GET', KEYS[1])
if not gen then return false end
local prefix = ARGV[1] .. gen .. ':'
local touched = {}
for i = 3, #ARGV, 3 do
  local key = prefix .. ARGV[i]
  redis.call('HSET', key, ARGV[i + 1], ARGV[i + 2])
  touched[key] = true
end
for key in pairs(touched) do redis.call('EXPIRE', key, ARGV[2]) end
local meta = ARGV[1] .. 'meta:' .. gen
redis.call('HINCRBY', meta, 'upserts', (#ARGV - 2) / 3)
redis.call('EXPIRE', meta, ARGV[2])
return gen
"""
UPSERT_ENTRIES = 2_000  # per script call: each call holds Redis for about a millisecond


def bucket_of(number: str) -> str:
    return f"{zlib.crc32(number.encode()) % BUCKETS:02d}"


VALUE_COLUMNS = ["outcome", "prediction_basis", "probability", "predicted_won", "score", "grade", "factors_for",
                 "factors_against", "model_version", "scored_at", "reasons"]
# The long factor lists last, and the reasons (grouped by concept, core/reasons.py) at the very end: the app
# cuts them off the entry it answers with and writes them as sentences.
_ENTRY_ORDER = sorted(VALUE_COLUMNS, key=lambda c: (c == "reasons", c.startswith("factors_")))
JSON_COLUMNS = frozenset({"factors_for", "factors_against", "reasons"})  # already JSON text, spliced in


def cache_frame(predictions: pd.DataFrame, seller_column: str | None = None) -> pd.DataFrame:
    """What the cache keeps of a predictions frame: the number, the values and, with ``seller_column``, the
    owning seller, so that the app can tell who may see an entry without asking MongoDB."""
    out = predictions[["opportunity_id", *(c for c in VALUE_COLUMNS if c in predictions.columns)]].copy()
    if seller_column:
        out["seller"] = predictions[seller_column].astype(str)
    return out


def serialize(frame: pd.DataFrame, id_column: str, seller_column: str | None = None) -> tuple[list[str], list[str]]:
    """(ids, JSON values) for a predictions frame; the factor columns, already JSON, are spliced in.

    With ``seller_column`` the value carries the owning seller as ``seller``, first, so that the app
    can check who may see a cached prediction without asking MongoDB or parsing the whole entry.
    Each column is encoded once for all rows (text through its distinct values), then every row is one
    string format: as cheap for one row as a frame's own JSON writer is for a million.
    """
    names = ["seller"] if seller_column and seller_column in frame.columns else []
    columns = [_json_column(frame[seller_column])] if names else []
    for name in _ENTRY_ORDER:
        if name in frame.columns:
            names.append(name)
            column = frame[name]
            if name == "probability":
                column = column.round(6)
            columns.append(column.astype(str).tolist() if name in JSON_COLUMNS else _json_column(column))
    template = "{" + ",".join(f'"{name}":%s' for name in names) + "}"
    return frame[id_column].astype(str).tolist(), [template % row for row in zip(*columns, strict=True)]


def _json_column(column: pd.Series) -> list[str]:
    """Each value of a column as JSON text (datetimes as UTC ISO 8601 seconds, missing values as null)."""
    if pd.api.types.is_bool_dtype(column):
        return np.where(column.to_numpy(dtype=bool), "true", "false").tolist()
    if pd.api.types.is_integer_dtype(column) and not column.hasnans:
        return list(map(str, column.tolist()))
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy(dtype="float64")
        return [repr(v) if math.isfinite(v) else "null" for v in values.tolist()]
    if pd.api.types.is_datetime64_any_dtype(column):
        column = pd.to_datetime(column, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    codes, distinct = pd.factorize(column)  # few distinct values (grades, versions, sellers): encode each once
    encoded = np.array([json.dumps(_plain(v), ensure_ascii=False) for v in distinct] + ["null"], dtype=object)
    return encoded[codes].tolist()


def _str(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


class AsyncLookup:
    """The cache's lookup on a shared pipelined connection (the seller app's hot path): same keys, one round trip."""

    def __init__(self, connection: PipelinedRedis, namespace: str = "salespred") -> None:
        self.ns = namespace
        self.connection = connection

    async def get_raw_with(self, key: str, number: str) -> tuple[bytes | None, bytes | None]:
        """(value of ``key``, cached entry of ``number``) in one round trip."""
        other, entry = await self.connection.evalsha(_LOOKUP_WITH, keys=[f"{self.ns}:pred:current", key],
                                                     args=[f"{self.ns}:pred:", bucket_of(number), number])
        return other or None, entry or None


class PredictionCache:
    def __init__(self, client: redis.Redis, namespace: str = "salespred", ttl_s: int = 14 * 24 * 3600) -> None:
        self.r = client
        self.ns = namespace
        self.ttl_s = ttl_s
        self._lookup = client.register_script(_LOOKUP)
        self._upsert = client.register_script(_UPSERT)

    # keys
    @property
    def current_key(self) -> str:
        return f"{self.ns}:pred:current"

    def bucket_key(self, gen: int | str, bucket: str) -> str:
        return f"{self.ns}:pred:{gen}:{bucket}"

    def bucket_keys(self, gen: int | str) -> list[str]:
        return [self.bucket_key(gen, f"{b:02d}") for b in range(BUCKETS)]

    def meta_key(self, gen: int | str) -> str:
        return f"{self.ns}:pred:meta:{gen}"

    def current_generation(self) -> int | None:
        value = self.r.get(self.current_key)
        return int(value) if value is not None else None

    def _write(self, gen: int, ids: list[str], values: list[str]) -> None:
        by_bucket: dict[str, dict[str, str]] = defaultdict(dict)
        for number, value in zip(ids, values, strict=True):
            by_bucket[bucket_of(number)][number] = value
        pipe = self.r.pipeline(transaction=False)
        queued = 0
        for bucket, entries in by_bucket.items():
            key = self.bucket_key(gen, bucket)
            items = list(entries.items())
            for start in range(0, len(items), PAIRS_PER_COMMAND):
                pipe.hset(key, mapping=dict(items[start:start + PAIRS_PER_COMMAND]))
                queued += 1
                if queued % COMMANDS_PER_ROUND_TRIP == 0:
                    pipe.execute()
            pipe.expire(key, self.ttl_s)
        pipe.execute()

    def publish(self, ids: list[str], values: list[str], model_version: str) -> dict[str, Any]:
        """Write a whole new generation and make it live in one command; the old one expires later."""
        gen = int(self.r.incr(f"{self.ns}:pred:gen"))
        self._write(gen, ids, values)
        pipe = self.r.pipeline(transaction=False)
        for key in self.bucket_keys(gen):
            pipe.hlen(key)
        # Counted back before the swap, while nothing else writes into it: what the coverage check compares.
        entries = int(sum(pipe.execute()))
        self.r.hset(self.meta_key(gen), mapping={"model_version": model_version, "rows": len(ids),
                                                 "entries_at_publish": entries,
                                                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.r.expire(self.meta_key(gen), self.ttl_s)
        old = self.r.getset(self.current_key, gen)  # the swap
        expiring = 0
        if old is not None and int(old) != gen:
            expiring = self.expire_generation(int(old), OLD_GENERATION_GRACE_S)
        # Generations numbered between the previous live one and this one were never swapped in: their run
        # was killed or failed mid-write. Let them expire like an old generation instead of after ttl_s.
        first = int(old) + 1 if old is not None and int(old) < gen else gen - ABANDONED_LOOKBACK
        for abandoned in range(max(first, gen - ABANDONED_LOOKBACK, 1), gen):
            self.expire_generation(abandoned, OLD_GENERATION_GRACE_S)
        return {"generation": gen, "written": len(ids), "previous_generation": int(old) if old else None,
                "previous_keys_expiring": expiring}

    def upsert(self, ids: list[str], values: list[str], model_version: str) -> dict[str, Any]:
        """Write into the live generation (new or changed opportunities); starts one if none is live."""
        if not ids:
            return {"generation": self.current_generation(), "written": 0}
        for start in range(0, len(ids), UPSERT_ENTRIES):
            args: list[str | int] = [f"{self.ns}:pred:", self.ttl_s]
            chunk = slice(start, start + UPSERT_ENTRIES)
            for number, value in zip(ids[chunk], values[chunk], strict=True):
                args += (bucket_of(number), number, value)
            gen = self._upsert(keys=[self.current_key], args=args)
            if gen is None:
                return self.publish(ids, values, model_version)
        return {"generation": int(gen), "written": len(ids)}

    def expire_generation(self, gen: int, seconds: int) -> int:
        """Let a generation expire after ``seconds``; returns how many entries it held."""
        pipe = self.r.pipeline(transaction=False)
        for key in self.bucket_keys(gen):
            pipe.hlen(key)
            pipe.expire(key, seconds)
        pipe.expire(self.meta_key(gen), seconds)
        replies = pipe.execute()
        return int(sum(replies[0:-1:2]))

    def generation_ttl(self, gen: int) -> int:
        """Seconds before generation ``gen`` expires (-2: gone, -1: no expiry)."""
        return min(int(self.r.ttl(k)) for k in self.bucket_keys(gen))

    def get(self, number: str) -> dict[str, Any] | None:
        raw = self.get_raw(number)
        return json.loads(raw) if raw else None

    def get_raw(self, number: str) -> bytes | None:
        return self._lookup(keys=[self.current_key], args=[f"{self.ns}:pred:", bucket_of(number), number])

    def get_many(self, numbers: list[str], gen: int | None = None) -> list[bytes | None]:
        """Raw values of ``numbers`` in generation ``gen`` (default: the live one), pipelined."""
        gen = self.current_generation() if gen is None else gen
        if gen is None:
            return [None] * len(numbers)
        out: list[bytes | None] = []
        for start in range(0, len(numbers), 10_000):
            pipe = self.r.pipeline(transaction=False)
            for number in numbers[start:start + 10_000]:
                pipe.hget(self.bucket_key(gen, bucket_of(number)), number)
            out.extend(pipe.execute())
        return out

    def delete(self, number: str) -> None:
        """Drop one entry from the live generation (it is scored again on its next lookup)."""
        gen = self.current_generation()
        if gen is not None:
            self.r.hdel(self.bucket_key(gen, bucket_of(number)), number)

    def set_one(self, number: str, value: dict[str, Any]) -> None:
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self.upsert([number], [encoded], str(value.get("model_version", "")))

    def live_ids(self) -> Iterable[str]:
        gen = self.current_generation()
        if gen is None:
            return []
        return (_str(field) for key in self.bucket_keys(gen) for field in self.r.hkeys(key))

    def stats(self) -> dict[str, Any]:
        gen = self.current_generation()
        if gen is None:
            return {"generation": None, "keys": 0}
        meta = {_str(k): _str(v) for k, v in self.r.hgetall(self.meta_key(gen)).items()}
        pipe = self.r.pipeline(transaction=False)
        for key in self.bucket_keys(gen):
            pipe.hlen(key)
        return {"generation": gen, "keys": int(sum(pipe.execute())), **meta}
