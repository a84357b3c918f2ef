"""What every request needs: the databases, the session and token machinery, the app's settings."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any

from salespred_assets.app.auth import LoginLimiter, Sessions, TokenStore
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.cache import AsyncLookup
from salespred_assets.redis_cache.resource import RedisResource

MAX_BODY_BYTES = 64 * 1024


@dataclass
class AppContext:
    mongo: MongoResource
    redis: RedisResource
    sessions: Sessions
    tokens: TokenStore
    limiter: LoginLimiter
    secure_cookies: bool = False
    _async_redis: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    def _for_loop(self) -> tuple[Any, AsyncLookup]:
        loop = asyncio.get_running_loop()
        pair = self._async_redis.get(loop)
        if pair is None:
            client = self.redis.async_client()
            pair = self._async_redis[loop] = (client, AsyncLookup(self.redis.pipelined(), self.redis.namespace))
        return pair

    def aredis(self) -> Any:
        """An asyncio Redis client for the running event loop (clients belong to one loop each)."""
        return self._for_loop()[0]

    def alookup(self) -> AsyncLookup:
        """The prediction cache's lookup for the running event loop, on a connection all its requests share."""
        return self._for_loop()[1]


class Unavailable(Exception):
    """A backing service failed; the request is answered 503 and nothing was written."""

    def __init__(self, service: str, detail: str) -> None:
        self.service = service
        self.detail = detail
        super().__init__(f"{service} is unavailable: {detail}")


class NotFound(Exception):
    """Unknown, or not visible to the caller: both look the same from outside (404, never 403)."""


class CaptureRefused(Exception):
    """Capture cannot work with the loaded data contract (409)."""
