"""Who the caller is and what they may see: logins, sessions, tokens, rate limits, roles.

- **Login** checks the password against the seller's argon2 hash in MongoDB (a missing user costs the
  same time as a wrong password, and both get the same answer).
- **Pages** use a signed, timestamped cookie (``itsdangerous``) holding the seller number and a session
  id; logging out records the session id as revoked in Redis until the cookie would have expired.
- **The API** uses opaque bearer tokens kept in Redis under their SHA-256: expiry is the key's TTL and
  revocation deletes the key. A leaked Redis dump therefore holds no usable token.
- **Failed logins** are counted per username and per client address in Redis (fixed window); past the
  limit every attempt, even with the right password, gets 429 until the window ends. When Redis is
  down the counts are kept in this process instead, so limiting degrades but never switches off.
- **Roles** come from the seller's title: managers, directors, heads, VPs and EVPs see their team (the
  sellers whose ``reports_to`` chain leads to them, or everyone when no seller has ``reports_to``);
  everyone else sees only their own opportunities.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_lib
from itsdangerous import BadSignature, URLSafeTimedSerializer

from salespred_assets import settings
from salespred_assets.core.jsonhead import first_string
from salespred_assets.core.memo import Expiring
from salespred_assets.core.passwords import verify_password
from salespred_assets.errors import SalespredError
from salespred_assets.mongo.resource import SELLERS, MongoResource
from salespred_assets.redis_cache.resource import RedisResource

log = logging.getLogger("salespred.app.auth")

MANAGER_TITLE = re.compile(
    r"\b(manager|director|directora|head|chief|vp|evp|svp|vice[\s-]?president|gerente|jefe|jefa)\b", re.IGNORECASE)
MIN_SECRET_LENGTH = 32
# argon2 verification holds 64 MiB for a moment; bound how many run at once in this process.
_VERIFY_SLOTS = threading.BoundedSemaphore(4)


# ---- secret key -------------------------------------------------------------------------------
def secret_key() -> str:
    """``SALESPRED_SECRET_KEY``; locally, one generated once into ``$SALESPRED_HOME/secret_key`` (0600)."""
    value = settings.get(settings.ENV_SECRET_KEY)
    how = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    if value:
        if len(value) < MIN_SECRET_LENGTH:
            raise SalespredError(f"{settings.ENV_SECRET_KEY} is too short ({len(value)} characters); it needs at "
                                 f"least {MIN_SECRET_LENGTH}: {how}")
        return value
    if settings.environment() == "production":
        raise SalespredError(f"{settings.ENV_SECRET_KEY} must be set when SALESPRED_ENV=production "
                             f"(it signs the seller app's sessions): {how}")
    return _local_secret(settings.home() / "secret_key")


def _local_secret(path: Path) -> str:
    if not path.exists():
        tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic: if another process won the race, keep its key
            log.warning("generated the seller app's secret key into %s (set %s to choose it)", path,
                        settings.ENV_SECRET_KEY)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise SalespredError(f"{path} holds no usable secret key; delete it to generate a new one")
    return value


# ---- sellers and roles ------------------------------------------------------------------------
@dataclass(frozen=True)
class Viewer:
    """The logged-in seller and the seller numbers whose opportunities they may see."""

    number: str
    username: str
    first_name: str
    last_name: str
    title: str
    role: str                 # "manager" or "seller"
    team: tuple[str, ...]     # seller numbers visible to this viewer (always includes their own)

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.username

    def visibility(self, seller_field: str | None) -> dict[str, Any]:
        """The MongoDB filter for what this viewer may read; values come from the sellers, never the request."""
        if not seller_field:
            return {"_id": {"$exists": False}}  # no seller field: nothing can be attributed, so nothing shown
        if len(self.team) == 1:
            return {seller_field: self.team[0]}
        return {seller_field: {"$in": list(self.team)}}

    def public(self) -> dict[str, Any]:
        return {"numero_vendedor": self.number, "username": self.username, "first_name": self.first_name,
                "last_name": self.last_name, "title": self.title, "role": self.role, "team": list(self.team)}


def role_of(title: str | None) -> str:
    return "manager" if title and MANAGER_TITLE.search(title) else "seller"


def team_of(number: str, title: str | None, sellers: list[dict[str, Any]]) -> tuple[str, ...]:
    """Seller numbers visible to ``number``: its own, plus its reports (transitively) for a manager."""
    if role_of(title) != "manager":
        return (number,)
    if not any(s.get("reports_to") for s in sellers):
        return tuple(sorted({number, *(str(s["numero_vendedor"]) for s in sellers)}))
    children: dict[str, list[str]] = {}
    for s in sellers:
        if s.get("reports_to"):
            children.setdefault(str(s["reports_to"]), []).append(str(s["numero_vendedor"]))
    seen = {number}
    todo = [number]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:  # a cycle in reports_to cannot loop forever
                seen.add(child)
                todo.append(child)
    return tuple(sorted(seen))


class Roster:
    """The sellers as read at one moment, and each viewer built from them (built once, then reused)."""

    def __init__(self, sellers: list[dict[str, Any]]) -> None:
        self.sellers = sellers
        self._viewers: dict[str, Viewer | None] = {}

    def viewer(self, number: str) -> Viewer | None:
        if number not in self._viewers:  # a race builds the same value twice, harmlessly
            me = next((s for s in self.sellers if str(s.get("numero_vendedor")) == number), None)
            title = str(me.get("title") or "") if me else ""
            self._viewers[number] = None if me is None else Viewer(
                number=number, username=str(me.get("username") or ""), first_name=str(me.get("first_name") or ""),
                last_name=str(me.get("last_name") or ""), title=title, role=role_of(title),
                team=team_of(number, title, self.sellers))
        return self._viewers[number]


# Sellers change rarely and every request needs them: read them at most every few seconds per process.
# While MongoDB is down, the last roster (up to an hour old) keeps sessions working, so a refused capture
# can still give the seller their form back.
_SELLERS_TTL_S = 5.0
_rosters: Expiring[Roster] = Expiring(ttl_s=_SELLERS_TTL_S, refresh_ahead=True, stale_s=3600.0)


def _reader(mongo: MongoResource) -> Callable[[], Roster]:
    def read() -> Roster:
        return Roster(list(mongo.db[SELLERS].find({}, {"_id": 0, "numero_vendedor": 1, "username": 1, "first_name": 1,
                                                       "last_name": 1, "title": 1, "reports_to": 1})))

    return read


def _roster(mongo: MongoResource) -> Roster:
    return _rosters.get(mongo.identity(), _reader(mongo))


def fresh_roster(mongo: MongoResource) -> Roster | None:
    """The sellers when they are in memory and fresh (no MongoDB read); None when they must be read first."""
    return _rosters.peek(mongo.identity(), _reader(mongo))


def load_viewer(mongo: MongoResource, number: str) -> Viewer | None:
    """The seller ``number`` with their team (at most 5 s old: a removed seller's session stops within that,
    except while MongoDB is down, when the last roster read, up to an hour old, stands in)."""
    return _roster(mongo).viewer(number)


def authenticate(mongo: MongoResource, username: str, password: str) -> str | None:
    """The seller number when the password matches the stored hash; None otherwise (same cost either way)."""
    doc = mongo.db[SELLERS].find_one({"username": username}, {"numero_vendedor": 1, "password_hash": 1})
    stored = doc.get("password_hash") if doc else None
    with _VERIFY_SLOTS:
        ok = verify_password(stored if isinstance(stored, str) else None, password)
    return str(doc["numero_vendedor"]) if ok and doc else None


# ---- failed-login limits ----------------------------------------------------------------------
class LoginLimiter:
    """Fixed-window counts of failed logins per username and per client address."""

    def __init__(self, redis: RedisResource, per_user: int = 5, per_client: int = 20, window_s: int = 900) -> None:
        self.redis = redis
        self.per_user = per_user
        self.per_client = per_client
        self.window_s = window_s
        self._local: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _keys(self, username: str, client: str) -> list[tuple[str, int]]:
        user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        addr = hashlib.sha256(client.encode()).hexdigest()[:32]
        ns = f"{self.redis.namespace}:app:failed"
        return [(f"{ns}:user:{user}", self.per_user), (f"{ns}:client:{addr}", self.per_client)]

    def retry_after(self, username: str, client: str) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        keys = self._keys(username, client)
        try:
            pipe = self.redis.client.pipeline(transaction=False)
            for key, _ in keys:
                pipe.get(key)
                pipe.ttl(key)
            values = pipe.execute()
            waits = [max(int(values[2 * i + 1]), 1) for i, (_, limit) in enumerate(keys)
                     if values[2 * i] is not None and int(values[2 * i]) >= limit]
        except redis_lib.RedisError as exc:
            log.warning("Redis unavailable for login limits, counting in this process: %s", exc)
            now = time.monotonic()
            waits = []
            with self._lock:
                for key, limit in keys:
                    count, expires = self._local.get(key, (0, 0.0))
                    if expires > now and count >= limit:
                        waits.append(max(int(expires - now), 1))
        return max(waits, default=0)

    def failed(self, username: str, client: str) -> None:
        keys = self._keys(username, client)
        try:
            pipe = self.redis.client.pipeline(transaction=True)
            for key, _ in keys:
                pipe.set(key, 0, ex=self.window_s, nx=True)  # the window starts at the first failure
                pipe.incr(key)                               # INCR keeps the key's expiry
            pipe.execute()
        except redis_lib.RedisError:
            now = time.monotonic()
            with self._lock:
                for key, _ in keys:
                    count, expires = self._local.get(key, (0, 0.0))
                    self._local[key] = (count + 1, expires) if expires > now else (1, now + self.window_s)

    def succeeded(self, username: str, client: str) -> None:
        key = self._keys(username, client)[0][0]
        with contextlib.suppress(redis_lib.RedisError):
            self.redis.client.delete(key)
        with self._lock:
            self._local.pop(key, None)


class LoginRefused(Exception):
    """Wrong username or password (``retry_after`` = 0), or too many failures (``retry_after`` > 0)."""

    def __init__(self, retry_after: int = 0) -> None:
        self.retry_after = retry_after
        super().__init__("too many failed logins" if retry_after else "wrong username or password")


def login(mongo: MongoResource, limiter: LoginLimiter, username: str, password: str, client: str) -> str:
    """The seller number for a correct login; raises :class:`LoginRefused` otherwise."""
    wait = limiter.retry_after(username, client)
    if wait:
        raise LoginRefused(wait)
    number = authenticate(mongo, username, password)
    if number is None:
        limiter.failed(username, client)
        raise LoginRefused(0)
    limiter.succeeded(username, client)
    return number


# ---- bearer tokens (API) ----------------------------------------------------------------------
class TokenStore:
    """Opaque tokens in Redis: ``<ns>:app:token:<sha256>`` -> the seller, expiring after ``ttl_s``."""

    def __init__(self, redis: RedisResource, ttl_s: int = 8 * 3600) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    def key(self, token: str) -> str:
        return f"{self.redis.namespace}:app:token:{hashlib.sha256(token.encode()).hexdigest()}"

    def issue(self, number: str) -> str:
        token = secrets.token_urlsafe(32)
        value = json.dumps({"sub": number, "issued_at": int(time.time())}, separators=(",", ":"))
        self.redis.client.set(self.key(token), value, ex=self.ttl_s)
        return token

    @staticmethod
    def well_formed(token: str) -> bool:
        return bool(token) and len(token) <= 256

    @staticmethod
    def subject(stored: bytes | str | None) -> str | None:
        """The seller number a stored token value names."""
        return first_string(stored, "sub") if stored else None

    def resolve(self, token: str) -> str | None:
        return self.subject(self.redis.client.get(self.key(token))) if self.well_formed(token) else None

    async def aresolve(self, token: str, client: Any) -> str | None:
        """:meth:`resolve` through an asyncio Redis client (no worker thread on the request's path)."""
        return self.subject(await client.get(self.key(token))) if self.well_formed(token) else None

    def revoke(self, token: str) -> bool:
        return bool(self.redis.client.delete(self.key(token)))


# ---- signed cookie sessions (pages) -----------------------------------------------------------
class Sessions:
    """Signed, timestamped cookies; revocation (logout) is a Redis key until the cookie would expire."""

    COOKIE = "salespred_session"

    def __init__(self, secret: str, redis: RedisResource, ttl_s: int = 12 * 3600) -> None:
        self.serializer = URLSafeTimedSerializer(secret, salt="salespred.session")
        self.secret = secret.encode()
        self.redis = redis
        self.ttl_s = ttl_s

    def issue(self, number: str) -> str:
        return self.serializer.dumps({"sub": number, "sid": secrets.token_urlsafe(16)})

    def read(self, cookie: str | None) -> dict[str, str] | None:
        """The session's ``sub`` and ``sid`` if the cookie is authentic, unexpired and not logged out."""
        if not cookie or len(cookie) > 1024:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=self.ttl_s)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sub"), str) or not isinstance(data.get("sid"), str):
            return None
        try:
            if self.redis.client.exists(self._revoked_key(data["sid"])):
                return None
        except redis_lib.RedisError as exc:
            # Documented trade-off: with Redis down, a logged-out cookie stays valid until it expires.
            log.warning("Redis unavailable, cannot check session revocation: %s", exc)
        return data

    def revoke(self, sid: str) -> None:
        try:
            self.redis.client.set(self._revoked_key(sid), "1", ex=self.ttl_s)
        except redis_lib.RedisError as exc:
            log.warning("Redis unavailable, session %s… only cleared in the browser: %s", sid[:4], exc)

    def _revoked_key(self, sid: str) -> str:
        return f"{self.redis.namespace}:app:revoked:{hashlib.sha256(sid.encode()).hexdigest()}"

    def csrf(self, sid: str) -> str:
        """The form token for a session (HMAC of its id): a cross-site form cannot know it."""
        return hmac.new(self.secret, f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()[:40]

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(sid), str(token))
