"""The prediction cache: generations of keys, swapped in with one pointer write.

Keys (``ns`` is the namespace, default ``salespred``)::

    ns:pred:current          -> the live generation number
    ns:pred:gen              -> counter of generations
    ns:pred:meta:<gen>       -> hash: model_version, rows, created_at
    ns:pred:<gen>:<number>   -> JSON of one opportunity's prediction (with expiry)

A full refresh writes a new generation, then moves ``current`` to it in one command: a lookup sees the
old generation or the new one, never a miss in between. The old generation then expires after a grace
period; nothing is ever flushed. New opportunities are written into the live generation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd
import redis

PIPELINE_BATCH = 10_000
OLD_GENERATION_GRACE_S = 600

# One round trip: read the pointer, then the key in that generation.
_LOOKUP = """
local gen = redis.call('GET', KEYS[1])
if not gen then return nil end
return redis.call('GET', ARGV[1] .. gen .. ':' .. ARGV[2])
"""

VALUE_COLUMNS = ["probability", "predicted_won", "score", "grade", "factors_for", "factors_against",
                 "model_version", "scored_at"]


def serialize(frame: pd.DataFrame, id_column: str) -> tuple[list[str], list[str]]:
    """(ids, JSON values) for a predictions frame; the factor columns, already JSON, are spliced in."""
    plain = [c for c in VALUE_COLUMNS if c in frame.columns and not c.startswith("factors_")]
    data = frame[plain].copy()
    if "scored_at" in data:
        data["scored_at"] = pd.to_datetime(data["scored_at"], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    data["probability"] = data["probability"].round(6)
    lines = data.to_json(orient="records", lines=True, force_ascii=False).splitlines()
    if "factors_for" in frame.columns:
        lines = [f'{line[:-1]},"factors_for":{ff},"factors_against":{fa}}}'
                 for line, ff, fa in zip(lines, frame["factors_for"], frame["factors_against"])]
    return frame[id_column].astype(str).tolist(), lines


class PredictionCache:
    def __init__(self, client: redis.Redis, namespace: str = "salespred", ttl_s: int = 14 * 24 * 3600) -> None:
        self.r = client
        self.ns = namespace
        self.ttl_s = ttl_s
        self._lookup = client.register_script(_LOOKUP)

    # keys
    @property
    def current_key(self) -> str:
        return f"{self.ns}:pred:current"

    def prefix(self, gen: int | str) -> str:
        return f"{self.ns}:pred:{gen}:"

    def meta_key(self, gen: int | str) -> str:
        return f"{self.ns}:pred:meta:{gen}"

    def current_generation(self) -> int | None:
        value = self.r.get(self.current_key)
        return int(value) if value is not None else None

    def _write(self, gen: int, ids: list[str], values: list[str]) -> None:
        prefix = self.prefix(gen)
        for start in range(0, len(ids), PIPELINE_BATCH):
            pipe = self.r.pipeline(transaction=False)
            for key, value in zip(ids[start:start + PIPELINE_BATCH], values[start:start + PIPELINE_BATCH]):
                pipe.set(prefix + key, value, ex=self.ttl_s)
            pipe.execute()

    def publish(self, ids: list[str], values: list[str], model_version: str) -> dict[str, Any]:
        """Write a whole new generation and make it live in one command; the old one expires later."""
        gen = int(self.r.incr(f"{self.ns}:pred:gen"))
        self._write(gen, ids, values)
        self.r.hset(self.meta_key(gen), mapping={"model_version": model_version, "rows": len(ids),
                                                 "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        old = self.r.getset(self.current_key, gen)  # the swap
        expired = 0
        if old is not None and int(old) != gen:
            expired = self.expire_generation(int(old), OLD_GENERATION_GRACE_S)
        self.r.expire(self.meta_key(gen), self.ttl_s)
        return {"generation": gen, "written": len(ids), "previous_generation": int(old) if old else None,
                "previous_keys_expiring": expired}

    def upsert(self, ids: list[str], values: list[str], model_version: str) -> dict[str, Any]:
        """Write into the live generation (new or changed opportunities); starts one if none is live."""
        gen = self.current_generation()
        if gen is None:
            return self.publish(ids, values, model_version)
        self._write(gen, ids, values)
        self.r.hincrby(self.meta_key(gen), "upserts", len(ids))
        return {"generation": gen, "written": len(ids)}

    def expire_generation(self, gen: int, seconds: int) -> int:
        n = 0
        pipe = self.r.pipeline(transaction=False)
        for key in self.r.scan_iter(match=self.prefix(gen) + "*", count=10_000):
            pipe.expire(key, seconds)
            n += 1
            if n % PIPELINE_BATCH == 0:
                pipe.execute()
        pipe.execute()
        self.r.expire(self.meta_key(gen), seconds)
        return n

    def get(self, number: str) -> dict[str, Any] | None:
        raw = self._lookup(keys=[self.current_key], args=[f"{self.ns}:pred:", number])
        return json.loads(raw) if raw else None

    def get_raw(self, number: str) -> bytes | None:
        return self._lookup(keys=[self.current_key], args=[f"{self.ns}:pred:", number])

    def get_many(self, numbers: list[str], gen: int | None = None) -> list[bytes | None]:
        """Raw values of ``numbers`` in generation ``gen`` (default: the live one), pipelined."""
        gen = self.current_generation() if gen is None else gen
        if gen is None:
            return [None] * len(numbers)
        prefix = self.prefix(gen)
        out: list[bytes | None] = []
        for start in range(0, len(numbers), PIPELINE_BATCH):
            pipe = self.r.pipeline(transaction=False)
            for number in numbers[start:start + PIPELINE_BATCH]:
                pipe.get(prefix + number)
            out.extend(pipe.execute())
        return out

    def set_one(self, number: str, value: dict[str, Any]) -> None:
        gen = self.current_generation()
        if gen is None:
            gen = int(self.r.incr(f"{self.ns}:pred:gen"))
            self.r.set(self.current_key, gen, nx=True)
            gen = self.current_generation() or gen
        self.r.set(self.prefix(gen) + number, json.dumps(value, ensure_ascii=False, separators=(",", ":")),
                   ex=self.ttl_s)

    def live_ids(self) -> Iterable[str]:
        gen = self.current_generation()
        if gen is None:
            return []
        prefix = self.prefix(gen)
        return (k.decode()[len(prefix):] for k in self.r.scan_iter(match=prefix + "*", count=10_000))

    def stats(self) -> dict[str, Any]:
        gen = self.current_generation()
        if gen is None:
            return {"generation": None, "keys": 0}
        meta = {k.decode(): v.decode() for k, v in self.r.hgetall(self.meta_key(gen)).items()}
        keys = sum(1 for _ in self.live_ids())
        return {"generation": gen, "keys": keys, **meta}
