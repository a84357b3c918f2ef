"""The Redis cache: namespaced keys, generations swapped in one command, never a miss, never a flush."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from salespred_assets.redis_cache.cache import PredictionCache, serialize

pytestmark = pytest.mark.integration


def _values(n: int, version: str, prob: float) -> tuple[list[str], list[str]]:
    frame = pd.DataFrame({
        "opportunity_id": [f"OP-{i:05d}" for i in range(n)],
        "probability": prob, "predicted_won": prob >= 0.5, "score": int(prob * 100), "grade": "B",
        "factors_for": '[{"feature": "tipos", "label": "tipos", "value": "TY-00", "effect": 0.1}]',
        "factors_against": "[]", "model_version": version, "scored_at": pd.Timestamp("2026-11-27T10:00:00Z"),
    })
    return serialize(frame, "opportunity_id")


def test_values_are_json_with_factors_as_lists(redis_resource):
    ids, values = _values(3, "v1", 0.7)
    # The seller first: the app reads it without parsing.
    assert serialize(pd.DataFrame({"opportunity_id": ["OP-1"], "probability": [0.5], "numero_vendedor": ["NV-3"]}),
                     "opportunity_id", seller_column="numero_vendedor")[1] == ['{"seller":"NV-3","probability":0.5}']
    cache = redis_resource.cache()
    cache.publish(ids, values, "v1")
    got = cache.get("OP-00001")
    assert got["factors_for"][0]["feature"] == "tipos" and got["factors_against"] == []
    assert got["model_version"] == "v1" and got["scored_at"] == "2026-11-27T10:00:00Z"
    assert cache.get("OP-99999") is None


def test_publish_swaps_generations_without_a_miss_and_expires_the_old_one(redis_resource):
    cache: PredictionCache = redis_resource.cache()
    ids, v1 = _values(20_000, "v1", 0.2)
    cache.publish(ids, v1, "v1")
    misses, versions, stop = [], set(), threading.Event()

    def reader() -> None:
        probe = redis_resource.cache()
        while not stop.is_set():
            for number in ("OP-00000", "OP-10000", "OP-19999"):
                got = probe.get(number)
                if got is None:
                    misses.append(number)
                else:
                    versions.add(got["model_version"])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        _, v2 = _values(20_000, "v2", 0.8)
        result = cache.publish(ids, v2, "v2")
    finally:
        stop.set()
        thread.join()
    assert misses == []
    assert versions <= {"v1", "v2"} and "v2" in {cache.get("OP-00000")["model_version"]}
    assert result["previous_keys_expiring"] == 20_000
    assert 0 < cache.generation_ttl(result["previous_generation"]) <= 600
    assert 600 < cache.generation_ttl(result["generation"]) <= redis_resource.ttl_s


def test_upsert_writes_into_the_live_generation_and_touches_nothing_else(redis_resource):
    cache = redis_resource.cache()
    ids, values = _values(100, "v1", 0.3)
    gen = cache.publish(ids, values, "v1")["generation"]
    # Someone else's key in the same Redis database is never touched (no FLUSHDB, namespaced keys).
    redis_resource.client.set("someone-else:key", "keep me")
    new_ids, new_values = ["OP-NEW01"], [values[0]]
    assert cache.upsert(new_ids, new_values, "v1")["generation"] == gen
    assert cache.get("OP-NEW01") is not None and cache.get("OP-00050") is not None
    assert redis_resource.client.get("someone-else:key") == b"keep me"
    assert cache.stats()["keys"] == 101
    mine = list(redis_resource.client.scan_iter(match=f"{redis_resource.namespace}:*"))
    assert len(mine) <= 64 + 3  # hash buckets + current pointer + generation counter + meta hash
    redis_resource.client.delete("someone-else:key")


def test_values_equal_the_frame_writers_json_for_any_text():
    import json

    import numpy as np

    frame = pd.DataFrame({
        "opportunity_id": ["OP-1", "OP-2", "OP-3"], "numero_vendedor": ["NV-1", 'N"V/\\2', "Vendeuse é"],
        "probability": [0.1234567, 1e-05, np.nan], "predicted_won": [False, True, False], "score": [12, 1, 50],
        "grade": ["D", "ü", None], "factors_for": ["[]", '[{"a": 1}]', "[]"], "factors_against": ["[]"] * 3,
        "model_version": ["v/1"] * 3, "scored_at": pd.to_datetime(["2026-11-27T10:00:00Z"] * 3),
    })
    ids, values = serialize(frame, "opportunity_id", seller_column="numero_vendedor")
    plain = frame.drop(columns=["opportunity_id", "numero_vendedor", "factors_for", "factors_against"])
    plain.insert(0, "seller", frame["numero_vendedor"])
    plain["probability"] = plain["probability"].round(6)
    plain["scored_at"] = plain["scored_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    expected = [json.loads(line) for line in plain.to_json(orient="records", lines=True).splitlines()]
    for got, want, ff in zip(values, expected, frame["factors_for"], strict=True):
        assert json.loads(got) == {**want, "factors_for": json.loads(ff), "factors_against": []}
        assert got.startswith('{"seller":')
    assert ids == ["OP-1", "OP-2", "OP-3"]


def test_upsert_chunks_and_starts_a_generation_when_none_is_live(redis_resource, monkeypatch):
    from salespred_assets.redis_cache import cache as cache_module

    cache = redis_resource.cache()
    ids, values = _values(5, "v1", 0.4)
    first = cache.upsert(ids, values, "v1")  # nothing live yet: a first generation
    assert first["generation"] == cache.current_generation() and cache.stats()["keys"] == 5
    monkeypatch.setattr(cache_module, "UPSERT_ENTRIES", 2)  # 3 script calls for 5 entries
    more_ids = [f"OP-M{i}" for i in range(5)]
    assert cache.upsert(more_ids, values, "v1") == {"generation": first["generation"], "written": 5}
    stats = cache.stats()
    assert stats["keys"] == 10 and stats["upserts"] == "5"
    bucket = cache.bucket_key(first["generation"], cache_module.bucket_of("OP-M4"))
    for key in (bucket, cache.meta_key(first["generation"])):  # each write renews the expiry
        assert 0 < redis_resource.client.ttl(key) <= redis_resource.ttl_s


def test_the_coverage_check_counts_every_entry_and_reads_a_sample_back(redis_resource):
    """The asset check, called directly: the entry count is exact for any size, the contents are read on a sample."""
    from salespred_assets.defs.serving import checks

    n = checks.SAMPLE + 2_000  # more than the sample: a lost entry must be found by the count, not by luck
    ids, values = _values(n, "v1", 0.7)
    scored = pd.DataFrame({"opportunity_id": ids, "model_version": "v1"})
    cache = redis_resource.cache()
    cache.publish(ids, values, "v1")
    ok = checks.prediction_cache_coverage(opportunity_predictions=scored, redis=redis_resource)
    assert ok.passed and ok.metadata["sampled"].value == checks.SAMPLE
    assert ok.metadata["live_entries"].value == n and ok.metadata["missing_in_sample"].value == 0

    # A capture made since adds an entry: still covered. One entry lost: the count falls short.
    cache.set_one("OP-99999", {"probability": 0.5, "model_version": "v1"})
    assert checks.prediction_cache_coverage(opportunity_predictions=scored, redis=redis_resource).passed
    cache.delete("OP-00017")
    cache.delete("OP-99999")
    lost = checks.prediction_cache_coverage(opportunity_predictions=scored, redis=redis_resource)
    assert not lost.passed and lost.metadata["live_entries"].value == n - 1

    # An entry lost by the publish itself stays found after a capture adds one: the count at the publish.
    cache.publish(ids[:-1], values[:-1], "v1")
    cache.set_one("OP-99999", {"probability": 0.5, "model_version": "v1"})
    short = checks.prediction_cache_coverage(opportunity_predictions=scored, redis=redis_resource)
    assert not short.passed and short.metadata["live_entries"].value == n
    assert short.metadata["entries_at_publish"].value == n - 1

    # Entries by another model version than the one scored: the generation says so, and the sample too.
    small = scored.iloc[:50]
    cache.publish(ids[:50], _values(50, "v2", 0.4)[1], "v2")
    wrong = checks.prediction_cache_coverage(opportunity_predictions=small, redis=redis_resource)
    assert not wrong.passed and wrong.metadata["model_versions"].value == "v2"
    assert wrong.metadata["generation_model_version"].value == "v2" and wrong.metadata["sampled"].value == 50
