"""Retried captures create one opportunity: the API's ``Idempotency-Key`` and the capture form's one-time token.

A key is kept in MongoDB (collection ``idempotency_keys``), per seller: its ``_id`` is the seller and the
key, so one seller's key never answers another seller's request. The first request to insert the key
(state ``pending``) wins and captures; MongoDB's unique ``_id`` makes that safe under concurrent retries.
The others wait up to :data:`WAIT_S` for the winner's result and answer with it (same status, same
body); past that they get 409 "in progress". The same key with a different body (canonical JSON, SHA-256)
is refused (422). Only a completed capture is kept: when the capture fails (503, 409), the key is
released, so a retry tries again. A key is kept :data:`KEEP_S` (24 hours): a TTL index removes it, and
an older key is treated as absent even before the TTL monitor runs, so correctness does not depend on it.
A pending key whose winner died (the process was killed) is taken over after :data:`LEASE_S`.

MongoDB, not Redis: captures work with Redis down, and so must their retries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

log = logging.getLogger("salespred.app")
COLLECTION = "idempotency_keys"
KEEP_S = 24 * 3600
WAIT_S = 10.0     # how long a concurrent retry waits for the first request's result
LEASE_S = 60.0    # a pending key older than this was abandoned by its winner
POLL_S = 0.05
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # visible ASCII, as HTTP header values allow
HEADER = "Idempotency-Key"
HEADER_DESCRIPTION = (
    "Optional; a key you choose (1-255 visible ASCII characters, e.g. a UUID), one per capture you mean to "
    "make. Retrying with the same key and the same body (compared as canonical JSON) returns the same "
    "opportunity with the same status and body (header `Idempotent-Replayed: true`) and creates nothing; the "
    "same key with a different body gets 422. A retry that arrives while the first request is still running "
    f"waits for it (up to {WAIT_S:g} s), then gets 409. Keys are per seller and kept for 24 hours. Only a "
    "completed capture (201) is kept: after an error (e.g. 503) a retry with the same key captures again.")


class KeyReused(Exception):
    """The key was used with a different body (422)."""


class InProgress(Exception):
    """The first request with this key is still running (409)."""


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool
    lang: str | None = None  # the language the body's texts were written in (a replay keeps the first's)


def fingerprint(payload: Any) -> str:
    """SHA-256 of the canonical JSON of a parsed body (keys sorted, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def ensure_indexes(db: Database) -> None:
    db[COLLECTION].create_index("created_at", expireAfterSeconds=KEEP_S, name="expire_after_24h")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def run_once(db: Database, seller: str, key: str, digest: str,
             work: Callable[[], tuple[int, dict[str, Any]]], lang: str | None = None) -> Outcome:
    """Run ``work`` (returning status and body, its texts in ``lang``) once for ``(seller, key)``, or return its
    stored outcome."""
    coll = db[COLLECTION]
    ident = f"{seller}\x1f{key}"
    deadline = time.monotonic() + WAIT_S
    while True:
        now = _now()
        try:
            coll.insert_one({"_id": ident, "seller": seller, "fingerprint": digest, "state": "pending",
                             "created_at": now, "lease_until": now + dt.timedelta(seconds=LEASE_S)})
            break  # ours: capture
        except DuplicateKeyError:
            pass
        doc = coll.find_one({"_id": ident})
        if doc is None:
            continue  # released or expired meanwhile: try again
        if _aware(doc["created_at"]) < now - dt.timedelta(seconds=KEEP_S):
            coll.delete_one({"_id": ident, "created_at": doc["created_at"]})  # expired; the TTL monitor is late
            continue
        if doc["fingerprint"] != digest:
            raise KeyReused()
        if doc["state"] == "done":
            return Outcome(doc["status"], doc["body"], True, doc.get("lang"))
        if _aware(doc["lease_until"]) < now and coll.find_one_and_update(
                {"_id": ident, "state": "pending", "lease_until": doc["lease_until"]},
                {"$set": {"lease_until": now + dt.timedelta(seconds=LEASE_S)}}) is not None:
            break  # its first request died: ours now
        if time.monotonic() >= deadline:
            raise InProgress()
        time.sleep(POLL_S)
    try:
        status, body = work()
    except BaseException:
        # Let a retry try again; if MongoDB is down, a retry takes the key over once its lease ends.
        with contextlib.suppress(PyMongoError):
            coll.delete_one({"_id": ident, "state": "pending"})
        raise
    try:
        coll.update_one({"_id": ident}, {"$set": {"state": "done", "status": status, "body": body,
                                                  "lang": lang, "done_at": _now()}, "$unset": {"lease_until": ""}})
    except PyMongoError as exc:  # the capture is stored: answer it; retries get 409 until the lease ends
        log.warning("captured for key %s… but could not store its result: %s", key[:8], str(exc).splitlines()[0][:200])
    return Outcome(status, body, False, lang)


# ---- the capture form's one-time token ---------------------------------------------------------------------
def form_token(secret: bytes, sid: str) -> str:
    """A token issued with each capture form, signed for the session: ``nonce.signature``."""
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_sign(secret, sid, nonce)}"


def form_key(secret: bytes, sid: str, token: str | None) -> str | None:
    """The idempotency key a form token stands for, or None when it was not issued to this session."""
    if not token or len(token) > 128 or "." not in token:
        return None
    nonce, _, signature = token.partition(".")
    if not hmac.compare_digest(_sign(secret, sid, nonce), signature):
        return None
    return f"form:{nonce}"


def _sign(secret: bytes, sid: str, nonce: str) -> str:
    return hmac.new(secret, f"submission:{sid}:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]

