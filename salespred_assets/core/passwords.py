"""Seller passwords: argon2id hashes only; the plain text is never stored."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

# A real hash, verified against when the user does not exist, so that a wrong username costs the
# same time as a wrong password (no user enumeration through timing).
_DUMMY_HASH = _hasher.hash("salespred-timing-equaliser")


def hash_password(plain: str) -> str:
    if not plain:
        raise ValueError("a password cannot be empty")
    return _hasher.hash(plain)


def verify_password(stored_hash: str | None, plain: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, plain) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def is_hash(value: object) -> bool:
    return isinstance(value, str) and value.startswith("$argon2")
