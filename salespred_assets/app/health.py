"""Readiness (`/healthz`): the status for anyone, the details only for the operator.

An anonymous caller learns whether the app can serve: ``ok``, ``degraded`` (Redis is down) or
``unavailable`` (MongoDB is down: nothing works; HTTP 503). The details (each server's
address, version and round-trip time, and why one is down) go only to a request that carries the
operator's token (``SALESPRED_HEALTH_TOKEN``) in the ``X-Health-Token`` header; without a configured
token nobody gets them. Credentials never appear, even to the operator.
"""

from __future__ import annotations

import hmac
import time
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from salespred_assets import settings
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.resource import RedisResource

HEADER = "X-Health-Token"


def address(url: str) -> str:
    """The host(s) and port(s) of a server URL, without user, password, path or options."""
    netloc = urlsplit(url).netloc
    return netloc.rpartition("@")[2] or url.split(":", 1)[0]


def is_operator(presented: str | None) -> bool:
    token = settings.get(settings.ENV_HEALTH_TOKEN)
    return bool(token and presented and hmac.compare_digest(presented.encode(), token.encode()))


def _probe(name: str, url: str, ping: Any, version: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        ping()
        found: dict[str, Any] = {"status": "ok", "version": version()}
    except Exception as exc:  # noqa: BLE001 - a server that is down is reported, not raised
        # The class only: a driver's message can carry the URI, and the operator has the address below.
        found = {"status": "unavailable", "error": f"{type(exc).__name__} from {name}"}
    found["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    found["server"] = address(url)
    return found


def report(mongo: MongoResource, redis: RedisResource, operator: bool) -> tuple[dict[str, Any], int]:
    """(body, HTTP status) of the readiness check."""
    services = {
        "mongo": _probe("MongoDB", mongo.resolved_uri(), mongo.ping,
                        lambda: mongo.client.server_info().get("version") if operator else None),
        "redis": _probe("Redis", redis.resolved_url(), redis.ping,
                        lambda: redis.client.info("server").get("redis_version") if operator else None),
    }
    if services["mongo"]["status"] != "ok":
        status, code = "unavailable", 503
    elif services["redis"]["status"] != "ok":
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    if not operator:
        return {"status": status}, code
    return {"status": status, "version": metadata.version("salespred"), "services": services}, code
