"""One asyncio connection to Redis that every request on an event loop shares, pipelined.

The seller app's cached lookup is one Redis command per request, thousands a second. redis-py's asyncio
client takes a pooled connection, packs, sends and reads for each command on its own; profiled under
that load, this client machinery was a third of the server's time (BENCHMARKS.md). Here commands
issued in the same turn of the event loop leave in one write, replies are parsed by hiredis as they
arrive and matched to their callers in order (Redis answers a connection's commands in order), and a
caller waits on a bare future. A command that meets a broken or stuck connection fails with
:class:`redis.ConnectionError` or :class:`redis.TimeoutError`, like redis-py, and the next one
reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import time
from typing import Any

import hiredis
import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

RECONNECT_AFTER_S = 1.0


def _bulk(arg: bytes | str) -> bytes:
    data = arg.encode() if isinstance(arg, str) else arg
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _pack(args: tuple[bytes | str, ...] | list[bytes | str]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=redis.ResponseError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.owner._waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step, start over
                self.owner._fail(redis.ConnectionError("Redis sent a reply that matches no command"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # its caller may have been cancelled
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._fail(redis.ConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))


class PipelinedRedis:
    """A shared, pipelined connection for one event loop (create it on that loop)."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.params = parse_url(url)
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._heads: dict[tuple[str, int, int], bytes] = {}
        self._refused: tuple[float, redis.ConnectionError] | None = None  # the last failed connect

    # ---- commands ----------------------------------------------------------------------------------
    async def execute(self, *args: bytes | str) -> Any:
        return await self._send(_pack(args))

    async def get(self, key: str) -> bytes | None:
        return await self.execute("GET", key)

    async def evalsha(self, script: str, keys: list[str], args: list[str]) -> Any:
        """Run a Lua script by its SHA1, loading it once when the server does not know it."""
        shape = (script, len(keys), len(args))
        head = self._heads.get(shape)
        if head is None:  # the command's fixed part, packed once
            sha = hashlib.sha1(script.encode()).hexdigest()
            head = self._heads[shape] = (b"*%d\r\n" % (3 + len(keys) + len(args))
                                         + b"".join(map(_bulk, ("EVALSHA", sha, str(len(keys))))))
        tail = b"".join(map(_bulk, keys)) + b"".join(map(_bulk, args))
        try:
            return await self._send(head + tail)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self.execute("SCRIPT", "LOAD", script)
            return await self._send(head + tail)

    async def _send(self, command: bytes) -> Any:
        if self._protocol is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._outgoing:
            loop.call_soon(self._flush)  # what else this turn sends goes in the same write
        self._outgoing.append(command)
        self._waiting.append((future, time.monotonic()))
        return await future

    def close(self) -> None:
        self._fail(redis.ConnectionError("closed"))

    # ---- connection ----------------------------------------------------------------------------------
    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if data and self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.write(data)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        # After a failed connect, callers fail at once for a second instead of each waiting for a timeout.
        if self._refused is not None and time.monotonic() - self._refused[0] < RECONNECT_AFTER_S:
            raise redis.ConnectionError(f"{self._refused[1]} (no new attempt for {RECONNECT_AFTER_S:g} s)")
        try:
            protocol = await self._open_now()
        except redis.ConnectionError as exc:
            self._refused = (time.monotonic(), exc)
            raise
        self._refused = None
        return protocol

    async def _open_now(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        p = self.params
        try:
            cls = p.get("connection_class")
            if cls is UnixDomainSocketConnection:
                connect = loop.create_unix_connection(lambda: _Protocol(self), p["path"])
            else:
                tls = ssl.create_default_context() if cls is SSLConnection else None
                connect = loop.create_connection(lambda: _Protocol(self), p.get("host", "localhost"),
                                                 p.get("port", 6379), ssl=tls)
            _, protocol = await asyncio.wait_for(connect, self.timeout_s)
        except (TimeoutError, OSError) as exc:
            raise redis.ConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}") from exc
        self._protocol = protocol
        self._watchdog = loop.call_later(self.timeout_s / 2, self._watch)
        hello = []
        if p.get("password"):
            hello.append(("AUTH", *([p["username"]] if p.get("username") else []), p["password"]))
        if p.get("db"):
            hello.append(("SELECT", str(p["db"])))
        transport = protocol.transport
        assert transport is not None  # connection_made has run: create_connection returned
        for command in hello:  # sent before any caller's command, so replies stay in order
            self._waiting.append((loop.create_future(), time.monotonic()))
            transport.write(_pack(command))
            try:
                await self._waiting[-1][0]
            except redis.RedisError as exc:
                refused = redis.ConnectionError(f"Redis refused the connection's {command[0]}: {exc}")
                self._fail(refused)
                raise refused from exc
        return protocol

    def _watch(self) -> None:
        """A reply late by more than the timeout means a stuck server or network: fail everything waiting."""
        if self._protocol is None:
            return
        if self._waiting and time.monotonic() - self._waiting[0][1] > self.timeout_s:
            self._fail(redis.TimeoutError(f"Redis did not answer within {self.timeout_s} s"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.timeout_s / 2, self._watch)

    def _fail(self, exc: redis.RedisError) -> None:
        protocol, self._protocol = self._protocol, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, collections.deque()
        self._outgoing = []
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
