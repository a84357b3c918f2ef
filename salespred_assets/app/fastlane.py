"""The seller app's fast lane: the two requests that come by the thousand, answered straight from ASGI.

Liveness probes and cached prediction lookups are most of the app's traffic. Through FastAPI each paid
for routing, dependency injection, request objects and middleware several times over what the lookup
itself costs (profiled in BENCHMARKS.md). The lane answers only the case it can answer completely:
``GET /livez``, and ``GET /api/opportunities/{number}/prediction`` with a live bearer token whose
seller may see a cached entry. Everything else, including every error (no or revoked token, a cache
miss, someone else's opportunity, Redis down), goes on to the full app, which gives the answer and
the status. A lane answer is the full app's answer: the same JSON and the same headers (tests compare them).
"""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import parse_qs

import redis as redis_lib
from starlette.types import Scope, Send

from salespred_assets import i18n
from salespred_assets.app import auth, reasons
from salespred_assets.app.context import AppContext
from salespred_assets.app.opportunities import NUMBER
from salespred_assets.core.jsonhead import first_string

LIVE = {"status": "ok"}
_LIVE_BODY = json.dumps(LIVE, separators=(",", ":")).encode()
_PREFIX, _SUFFIX = "/api/opportunities/", "/prediction"


_REASONS = b',"reasons":'


def cached_body(number: str, raw: bytes, lang: str = i18n.DEFAULT, name: reasons.Namer = reasons.code_itself) -> bytes:
    """A cached lookup's response: the entry as stored (validated when written), not re-encoded, but for its
    stored reasons (the entry's last key), which are cut off and written as sentences in ``lang``.
    ``number`` has matched ``NUMBER``, whose characters need no JSON escaping."""
    # Inside a JSON string every quote is escaped, so ',"reasons":' is only ever the entry's own key.
    cut = raw.find(_REASONS)
    head, stored = (raw[:cut], raw[cut + len(_REASONS):-1]) if cut >= 0 else (raw.rstrip()[:-1], None)
    return (b'{"numero_opportunidad":"' + number.encode() + b'","source":"cache","prediction":' + head + b","
            + _sentences(stored, lang, name) + b"}}")


@functools.lru_cache(maxsize=4096)  # the same opportunities are looked up again and again
def _sentences(stored: bytes | None, lang: str, name: reasons.Namer) -> bytes:
    """The reasons' JSON members ``"reasons_for":[...],"reasons_against":[...]``, without braces."""
    said = reasons.render(stored.decode() if stored else None, lang, name)
    return json.dumps(said, ensure_ascii=False, separators=(",", ":")).encode()[1:-1]


def lang_of(scope: Scope) -> str:
    """The request's language, as the full app's API negotiates it (``?lang=``, then ``Accept-Language``)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("lang", [None])[-1]
    accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept-language"), None)
    return i18n.negotiate(query, accept)


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class FastLane:
    def __init__(self, ctx: AppContext, headers: list[tuple[bytes, bytes]]) -> None:
        self.ctx = ctx
        self.headers = headers
        self.answered = 0  # requests the lane answered (the rest went on to the full app)

    async def answer(self, scope: Scope, send: Send) -> bool:
        """Answer the request and return True, or return False having sent nothing."""
        if scope["method"] != "GET":
            return False
        path: str = scope["path"]
        if path == "/livez":
            await self._send(send, _LIVE_BODY)
            return True
        if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
            return False
        number = path[len(_PREFIX):-len(_SUFFIX)]
        raw = await self._cached(number, _bearer(scope["headers"]))
        if raw is None:
            return False
        name = reasons.namer(self.ctx, held_only=True)
        if name is None:
            return False  # the full app reads the catalogs off the event loop
        lang = lang_of(scope)
        await self._send(send, cached_body(number, raw, lang, name),
                         [(b"content-language", lang.encode()), (b"vary", b"Accept-Language")])
        return True

    async def _cached(self, number: str, token: str | None) -> bytes | None:
        ctx = self.ctx
        if token is None or not NUMBER.match(number) or not ctx.tokens.well_formed(token):
            return None
        roster = auth.fresh_roster(ctx.mongo)
        if roster is None:
            return None  # the full app reads the sellers off the event loop
        try:
            stored, raw = await ctx.alookup().get_raw_with(ctx.tokens.key(token), number)
        except redis_lib.RedisError:
            return None
        subject = ctx.tokens.subject(stored)
        viewer = roster.viewer(subject) if subject and raw is not None else None
        # The seller is written first in a cached entry: cheap to read.
        if viewer is None or raw is None or first_string(raw, "seller") not in viewer.team:
            return None
        if _REASONS not in raw:
            return None  # cached before reasons existed: the full app scores it again, with them
        return raw

    async def _send(self, send: Send, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers: list[Any] = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"),
                              *(extra or []), *self.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.answered += 1
