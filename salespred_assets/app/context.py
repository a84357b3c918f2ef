"""What every request needs: the databases, the session and token machinery, the app's settings."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from salespred_assets.app.auth import LoginLimiter, Sessions, TokenStore
from salespred_assets.mongo.resource import MongoResource
from salespred_assets.redis_cache.cache import AsyncLookup
from salespred_assets.redis_cache.pipelined import PipelinedRedis
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

    def _for_loop(self) -> AsyncLookup:
        loop = asyncio.get_running_loop()
        lookup = self._async_redis.get(loop)
        if lookup is None:
            lookup = self._async_redis[loop] = AsyncLookup(self.redis.pipelined(), self.redis.namespace)
        return lookup

    def aredis(self) -> PipelinedRedis:
        """The asyncio Redis connection of the running event loop, which all its requests share (pipelined)."""
        return self._for_loop().connection

    def alookup(self) -> AsyncLookup:
        """The prediction cache's lookup on :meth:`aredis`."""
        return self._for_loop()


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


class ChangeRefused(Exception):
    """A change the opportunity cannot take as it stands (409); ``key`` names the page's message."""

    def __init__(self, key: str, detail: str, **params: str) -> None:
        self.key = key
        self.detail = detail
        self.params = params
        super().__init__(detail)
